"""Several instances, seen from one: who is there (:class:`InstanceInfo`) and each one's plugins.

Every service instance hosts its own plugins and keeps their states in its own local store (SQLite in its run
directory). A :class:`ClusterView` shows all instances: over Redis (:class:`plugin_health.store.redis.RedisCluster`)
every instance publishes its heartbeat and a copy of its states there; with any other store there is one instance,
this one (:class:`LocalCluster`). How the pieces fit: docs/architecture.md, "Several instances".
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from plugin_health.lifecycle import TransitionRecord
from plugin_health.store.base import PluginSnapshot, StateStore

#: Seconds after its last heartbeat that an instance counts as gone.
GONE_AFTER = 3.0
#: Store meta key of this instance's heartbeat (an :class:`InstanceInfo`).
BEAT_KEY = "host"
#: What an instance id may be: it names the instance in URLs (``?instance=``) and in Redis keys.
INSTANCE_ID = re.compile(r"[A-Za-z0-9_.:-]{1,100}")
#: The ``?instance=`` value of an operator action that acts on every live instance.
ALL = "all"


@dataclass(frozen=True, slots=True)
class InstanceInfo:
    """One instance's heartbeat: which process hosts its plugins, since when, and when it last beat (Unix time)."""

    id: str
    pid: int
    started: float
    beat: float
    #: It said goodbye (a clean stop): gone at once, not after GONE_AFTER.
    stopped: bool = False

    def age(self, now: float) -> float:
        """Seconds since its last heartbeat."""
        return max(0.0, now - self.beat)

    def gone(self, now: float, after: float = GONE_AFTER) -> bool:
        """Stopped, or silent for longer than ``after`` seconds."""
        return self.stopped or self.age(now) > after

    def to_json(self) -> str:
        """Compact JSON (how the stores keep it)."""
        return json.dumps({"id": self.id, "pid": self.pid, "started": self.started, "beat": self.beat,
                           "stopped": self.stopped}, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> InstanceInfo | None:
        """The inverse of ``to_json``; None for anything else (a heartbeat an older version wrote, or garbage)."""
        try:
            data = json.loads(text)
            return cls(str(data["id"]), int(data["pid"]), float(data["started"]), float(data["beat"]),
                       bool(data.get("stopped", False)))
        except (ValueError, KeyError, TypeError):
            return None


def read_instance(store: StateStore) -> InstanceInfo | None:
    """The heartbeat this instance's core keeps in its local store, or None (no core yet, or one that stopped)."""
    global _last_beat
    text = store.get_meta(BEAT_KEY)
    if not text:
        return None
    last = _last_beat
    if last is not None and last[0] == text:
        return last[1]  # the same beat as last time: not parsed again (probes read it each time)
    info = InstanceInfo.from_json(text)
    _last_beat = (text, info)
    return info


#: The last heartbeat text ``read_instance`` parsed, and what it said (an ``InstanceInfo`` is never changed).
_last_beat: tuple[str, InstanceInfo | None] | None = None


class ClusterView(Protocol):
    """Every instance and its plugins, as one instance sees them (the cluster routes, ``plugins list --cluster``)."""

    #: This instance's id.
    instance: str

    def instances(self) -> list[InstanceInfo]:
        """Every instance known (gone ones until their retention ends), ordered by id."""
        ...

    def grid(self) -> dict[str, list[PluginSnapshot]]:
        """Each known instance's plugins (ordered by name), by instance id."""
        ...

    def history_of(self, instance: str, name: str) -> list[TransitionRecord]:
        """A plugin's transitions on one instance, oldest first ([] for an unknown instance or plugin)."""
        ...

    def degraded(self) -> str | None:
        """None while the view is live; else why it shows the last known states."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...


class LocalCluster:
    """The cluster of a store no other instance shares (memory, SQLite): this instance alone."""

    def __init__(self, instance: str, store: StateStore,
                 here: Callable[[], InstanceInfo | None] = lambda: None) -> None:
        self.instance = instance
        self.store = store
        self._here = here

    def instances(self) -> list[InstanceInfo]:
        """This instance: its core's heartbeat, or ``here()`` for a core that does not beat (in this process)."""
        info = read_instance(self.store) or self._here()
        return [] if info is None else [InstanceInfo(self.instance, info.pid, info.started, info.beat, info.stopped)]

    def grid(self) -> dict[str, list[PluginSnapshot]]:
        """This instance's plugins."""
        return {self.instance: self.store.snapshots()}

    def history_of(self, instance: str, name: str) -> list[TransitionRecord]:
        """This instance's history of ``name``."""
        return self.store.history(name) if instance == self.instance else []

    def degraded(self) -> str | None:
        """As degraded as the local store."""
        return self.store.degraded()

    def close(self) -> None:
        """The store is closed by its owner."""
