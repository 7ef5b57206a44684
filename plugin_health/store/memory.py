"""An in-process store: for a single process (tests, the embedded dev server)."""

from __future__ import annotations

import heapq
import itertools
import threading
from collections import Counter, deque
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager, nullcontext

from plugin_health.lifecycle import TransitionRecord
from plugin_health.store.base import PluginSnapshot, record_to_json


class MemoryStore:
    """Keeps everything in this process; nothing is shared with other processes."""

    def __init__(self, history_limit: int = 100) -> None:
        self._history_limit = history_limit
        self._lock = threading.Lock()
        self._snapshots: dict[str, PluginSnapshot] = {}
        self._history: dict[str, deque[TransitionRecord]] = {}
        #: The sequence number of each kept record, beside it (the same length as its plugin's history).
        self._seqs: dict[str, deque[int]] = {}
        self._seq = 0
        #: How many kept records went from each state to each other one, kept as records come and go.
        self._moves: Counter[tuple[str | None, str]] = Counter()
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
        self.put_many((snapshot,), () if record is None else (record,))

    def put_many(self, snapshots: Iterable[PluginSnapshot], records: Iterable[TransitionRecord] = ()) -> None:
        """Publish several snapshots, and the transitions that led there (in order), at once."""
        with self._lock:
            for snapshot in snapshots:
                self._snapshots[snapshot.name] = snapshot
            for record in records:
                self._record(record)
            self._version += 1

    def _record(self, record: TransitionRecord) -> None:
        """Keep one transition (the caller holds ``_lock``)."""
        self._seq += 1
        history = self._history.setdefault(record.plugin, deque(maxlen=self._history_limit))
        if len(history) == history.maxlen:  # the oldest is about to go, and its count with it
            self._moves[_move(history[0])] -= 1
        history.append(record)
        self._moves[_move(record)] += 1
        self._seqs.setdefault(record.plugin, deque(maxlen=self._history_limit)).append(self._seq)

    def degraded(self) -> str | None:
        """Always None: this store is as available as the process itself."""
        return None

    def version(self) -> int:
        """Grows with every change."""
        return self._version

    def look(self) -> AbstractContextManager[None]:
        """Nothing to pin: ``version()`` and ``get_meta()`` read attributes of this process."""
        return _NO_PIN

    def snapshots(self) -> list[PluginSnapshot]:
        """Every plugin, by name."""
        with self._lock:
            return [self._snapshots[name] for name in sorted(self._snapshots)]

    def parse_ahead(self, pause: Callable[[], None], step: int) -> int:
        """Nothing to parse: the snapshots are kept as objects."""
        return 0

    def critical_snapshots(self) -> list[PluginSnapshot]:
        """Every critical plugin, by name."""
        return [snapshot for snapshot in self.snapshots() if snapshot.critical]

    def snapshot(self, name: str) -> PluginSnapshot | None:
        """One plugin, or None."""
        return self._snapshots.get(name)

    def history(self, name: str) -> list[TransitionRecord]:
        """Oldest first."""
        with self._lock:
            return list(self._history.get(name, ()))

    def last_seq(self) -> int:
        """The sequence number of the newest transition recorded (0: none)."""
        return self._seq

    def records_since(self, seq: int, limit: int | None = None) -> list[tuple[int, str, str]]:
        """The kept transitions recorded after ``seq``, oldest first, at most ``limit``: (seq, plugin, JSON)."""
        with self._lock:
            # Each plugin's records are in order already: merge the tails newer than ``seq``.
            tails = [[(n, name, record) for n, record in zip(self._seqs[name], history, strict=True) if n > seq]
                     for name, history in self._history.items() if self._seqs[name] and self._seqs[name][-1] > seq]
        merged = itertools.islice(heapq.merge(*tails, key=lambda entry: entry[0]), limit)
        return [(n, name, record_to_json(record)) for n, name, record in merged]

    def transition_counts(self) -> dict[tuple[str | None, str], int]:
        """How many kept transitions went from each state to each other one (None: a first state)."""
        with self._lock:
            return {move: count for move, count in self._moves.items() if count > 0}

    def replace_history(self, name: str, records: Iterable[TransitionRecord]) -> None:
        """Make ``records`` the history of ``name`` (a mirror of what another store holds; not recorded here, so
        never among ``records_since``)."""
        with self._lock:
            self._moves.subtract(_move(r) for r in self._history.get(name, ()))
            self._history[name] = deque(records, maxlen=self._history_limit)
            self._moves.update(_move(r) for r in self._history[name])
            self._seqs[name] = deque((0 for _ in self._history[name]), maxlen=self._history_limit)

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


def _move(record: TransitionRecord) -> tuple[str | None, str]:
    """A record's (from, to), by name (None: a first state)."""
    return None if record.source is None else record.source.value, record.dest.value


#: ``MemoryStore.look()``'s block (``nullcontext`` can be entered again, and by several threads at once).
_NO_PIN: AbstractContextManager[None] = nullcontext()
