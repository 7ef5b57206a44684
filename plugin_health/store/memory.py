"""An in-process store: for a single process (tests, the embedded dev server)."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterable

from plugin_health.lifecycle import TransitionRecord
from plugin_health.store.base import PluginSnapshot


class MemoryStore:
    """Keeps everything in this process; nothing is shared with other processes."""

    def __init__(self, history_limit: int = 100) -> None:
        self._history_limit = history_limit
        self._lock = threading.Lock()
        self._snapshots: dict[str, PluginSnapshot] = {}
        self._history: dict[str, deque[TransitionRecord]] = {}
        self._meta: dict[str, str] = {}
        self._version = 0

    def begin(self, names: Iterable[str]) -> None:
        """Forget the snapshots of plugins not in ``names``."""
        keep = set(names)
        with self._lock:
            for name in [n for n in self._snapshots if n not in keep]:
                del self._snapshots[name]
            self._version += 1

    def put(self, snapshot: PluginSnapshot, record: TransitionRecord | None = None) -> None:
        """Publish a snapshot (and its transition)."""
        with self._lock:
            self._snapshots[snapshot.name] = snapshot
            if record is not None:
                history = self._history.setdefault(record.plugin, deque(maxlen=self._history_limit))
                history.append(record)
            self._version += 1

    def put_many(self, snapshots: Iterable[PluginSnapshot]) -> None:
        """Publish several snapshots at once."""
        with self._lock:
            for snapshot in snapshots:
                self._snapshots[snapshot.name] = snapshot
            self._version += 1

    def degraded(self) -> str | None:
        """Always None: this store is as available as the process itself."""
        return None

    def version(self) -> int:
        """Grows with every change."""
        return self._version

    def snapshots(self) -> list[PluginSnapshot]:
        """Every plugin, by name."""
        with self._lock:
            return [self._snapshots[name] for name in sorted(self._snapshots)]

    def snapshot(self, name: str) -> PluginSnapshot | None:
        """One plugin, or None."""
        return self._snapshots.get(name)

    def history(self, name: str) -> list[TransitionRecord]:
        """Oldest first."""
        with self._lock:
            return list(self._history.get(name, ()))

    def replace_history(self, name: str, records: Iterable[TransitionRecord]) -> None:
        """Make ``records`` the history of ``name`` (a mirror of what another store holds)."""
        with self._lock:
            self._history[name] = deque(records, maxlen=self._history_limit)

    def everything(self) -> tuple[list[PluginSnapshot], dict[str, list[TransitionRecord]], dict[str, str]]:
        """Every snapshot, every plugin's history and every meta value (to seed another store with)."""
        with self._lock:
            return (list(self._snapshots.values()), {name: list(h) for name, h in self._history.items()},
                    dict(self._meta))

    def set_meta(self, key: str, value: str) -> None:
        """Keep a value (``version`` does not change)."""
        with self._lock:
            self._meta[key] = value

    def get_meta(self, key: str) -> str | None:
        """A kept value."""
        return self._meta.get(key)

    def close(self) -> None:
        """Nothing to release."""
