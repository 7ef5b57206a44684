"""What the store keeps: each plugin's current snapshot, its bounded history, and the service's liveness."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from typing import Any, Protocol

from plugin_health.compact_json import compact_encoder
from plugin_health.frozen import slot_maker
from plugin_health.lifecycle import PluginLifecycleState, TransitionRecord


@dataclass(frozen=True, slots=True)
class PluginSnapshot:
    """One plugin as every worker sees it: lifecycle state, declaration and supervision counters."""

    name: str
    state: PluginLifecycleState
    since: datetime
    version: str | None = None
    reason: str | None = None
    error_type: str | None = None
    error: str | None = None
    requires: tuple[str, ...] = ()
    critical: bool = False
    isolation: str | None = None
    tools: tuple[str, ...] = ()
    consecutive_failures: int = 0
    restarts: int = 0
    last_check: datetime | None = None
    #: Its last health check did not fail (``pass`` or ``warn``); None before the first one.
    last_check_ok: bool | None = None
    allowed: tuple[str, ...] = field(default=())
    #: When a RUNNING plugin's news turn stale if no newer snapshot replaced this one (UTC): its last completed
    #: health check (or entering RUNNING) plus the health interval, its timeout and a grace. None: never.
    stale_after: datetime | None = None
    #: Declared ``singleton = True``: it runs on one instance of the cluster at a time.
    singleton: bool = False
    #: For a singleton: the instance that holds its lease, as last seen (None: nobody, or not known).
    owner: str | None = None
    #: A singleton on standby here (UNAVAILABLE ``standby: ...`` in this instance's lifecycle), shown as its owner
    #: last published it (state, checks) once known: it runs there, so this instance's readiness and aggregate
    #: status do not count it.
    standby: bool = False
    #: What its last health check said: ``pass``, ``warn`` or ``fail`` (a check that raised, timed out or returned
    #: something that means nothing: ``fail``); None before the first one.
    check_status: str | None = None
    #: The value that check observed, and its unit (``HealthResult``); None when it reported none.
    observed_value: str | int | float | bool | None = None
    observed_unit: str | None = None
    #: That check's output (a failed call: its error message), bounded; may carry secrets, as ``error`` may.
    check_output: str | None = None

    @classmethod
    def made(
        cls, *, name: str, state: PluginLifecycleState, since: datetime, version: str | None, reason: str | None,
        error_type: str | None, error: str | None, requires: tuple[str, ...], critical: bool, isolation: str | None,
        tools: tuple[str, ...], consecutive_failures: int, restarts: int, last_check: datetime | None,
        last_check_ok: bool | None, allowed: tuple[str, ...], stale_after: datetime | None, singleton: bool,
        owner: str | None, standby: bool, check_status: str | None, observed_value: str | int | float | bool | None,
        observed_unit: str | None, check_output: str | None,
    ) -> PluginSnapshot:
        """``PluginSnapshot(...)`` given every field, made by filling its slots (``slot_maker``): the core makes one a
        plugin a batch as thousands load."""
        return _make_snapshot(
            name, state, since, version, reason, error_type, error, requires, critical, isolation, tools,
            consecutive_failures, restarts, last_check, last_check_ok, allowed, stale_after, singleton, owner,
            standby, check_status, observed_value, observed_unit, check_output)

    @property
    def healthy(self) -> bool:
        """RUNNING, its last health check (if any yet) passed, and that check is not stale."""
        return self.state is PluginLifecycleState.RUNNING and self.last_check_ok is not False and (
            self.stale_after is None or datetime.now(UTC) < self.stale_after
        )

    @property
    def degraded(self) -> bool:
        """Healthy, but its last health check said ``warn``."""
        return self.healthy and self.check_status == "warn"

    @property
    def stale(self) -> bool:
        """RUNNING, and its last health check is older than the supervisor promised (``stale_after`` passed)."""
        return self.stale_after is not None and self.state is PluginLifecycleState.RUNNING and (
            datetime.now(UTC) >= self.stale_after
        )

    def to_json(self, stamps: Stamps | None = None) -> str:
        """A compact JSON text (how the stores keep it): ``json.dumps(..., separators=(",", ":"))`` of its fields, the
        times as ISO 8601 text, written field by field (two fifths of the time of building a dict and encoding it, a
        snapshot written for each plugin as thousands load); a field holding another type than its own is written
        as ``json.dumps`` would (``_as_dumped``). ``stamps``: the texts of times, shared with other writes.

        The usual values (None, True, False, an empty tuple) are written in line, the writers called for the others
        only: a call a field was a third of writing a snapshot."""
        try:
            return (
                f'{{"name":{_string(self.name)},"state":{_string(self.state._value_)},'
                f'"since":{_string(_iso(self.since, stamps))},'
                f'"version":{"null" if self.version is None else _string(self.version)},'
                f'"reason":{"null" if self.reason is None else _string(self.reason)},'
                f'"error_type":{"null" if self.error_type is None else _string(self.error_type)},'
                f'"error":{"null" if self.error is None else _string(self.error)},'
                f'"requires":{"[]" if self.requires is _NONE else _strings(self.requires)},'
                f'"critical":{"false" if self.critical is False else _flag(self.critical)},'
                f'"isolation":{"null" if self.isolation is None else _string(self.isolation)},'
                f'"tools":{"[]" if self.tools is _NONE else _strings(self.tools)},'
                f'"consecutive_failures":{_count(self.consecutive_failures)},"restarts":{_count(self.restarts)},'
                f'"last_check":{_time(self.last_check, stamps)},"last_check_ok":{_maybe_flag(self.last_check_ok)},'
                f'"allowed":{_strings(self.allowed)},"stale_after":{_time(self.stale_after, stamps)},'
                f'"singleton":{"false" if self.singleton is False else _flag(self.singleton)},'
                f'"owner":{"null" if self.owner is None else _string(self.owner)},'
                f'"standby":{"false" if self.standby is False else _flag(self.standby)},'
                f'"check_status":{"null" if self.check_status is None else _string(self.check_status)},'
                f'"observed_value":{"null" if self.observed_value is None else _compact(self.observed_value)},'
                f'"observed_unit":{"null" if self.observed_unit is None else _string(self.observed_unit)},'
                f'"check_output":{"null" if self.check_output is None else _string(self.check_output)}}}'
            )
        except TypeError:
            return self._as_dumped()

    def _as_dumped(self) -> str:
        # Not dataclasses.asdict: it deep-copies every value (40 us a snapshot, not 8 us). The values are flat (JSON
        # scalars, datetimes, tuples of str), so a shallow read gives the same JSON.
        data = {name: getattr(self, name) for name in _SNAPSHOT_FIELDS}
        data["state"] = self.state.value
        data["since"] = self.since.isoformat()
        data["last_check"] = None if self.last_check is None else self.last_check.isoformat()
        data["stale_after"] = None if self.stale_after is None else self.stale_after.isoformat()
        return _compact(data)

    @classmethod
    def from_json(cls, text: str | bytes) -> PluginSnapshot:
        """The inverse of ``to_json``."""
        data: dict[str, Any] = json.loads(text)
        data["state"] = PluginLifecycleState(data["state"])
        data["since"] = datetime.fromisoformat(data["since"])
        data["last_check"] = None if data["last_check"] is None else datetime.fromisoformat(data["last_check"])
        stale_after = data.get("stale_after")  # absent from rows written before it existed
        data["stale_after"] = None if stale_after is None else datetime.fromisoformat(stale_after)
        data.setdefault("singleton", False)  # absent from rows written before singletons existed
        data.setdefault("owner", None)
        data.setdefault("standby", False)
        if "check_status" not in data:  # rows written before health results: what last_check_ok said
            ok = data.get("last_check_ok")
            data["check_status"] = None if ok is None else "pass" if ok else "fail"
        for key in ("requires", "tools", "allowed"):
            data[key] = tuple(data[key])
        return cls(**data)


_SNAPSHOT_FIELDS = tuple(f.name for f in fields(PluginSnapshot))
#: The empty tuple (one object in CPython): a field holding it is written ``[]`` in line, any other tuple by
#: ``_strings``.
_NONE: tuple[str, ...] = ()
#: Makes a snapshot of a value for each field, in order (what ``made`` fills: every field, as ``tests/test_store.py``
#: checks).
_make_snapshot = slot_maker(PluginSnapshot)


def is_stale(snapshot: PluginSnapshot, now: datetime) -> bool:
    """``snapshot.stale`` at ``now`` (UTC): judge many snapshots against one clock reading."""
    return snapshot.stale_after is not None and snapshot.state is PluginLifecycleState.RUNNING and (
        now >= snapshot.stale_after
    )


def is_healthy(snapshot: PluginSnapshot, now: datetime) -> bool:
    """``snapshot.healthy`` at ``now`` (UTC)."""
    return snapshot.state is PluginLifecycleState.RUNNING and snapshot.last_check_ok is not False and (
        snapshot.stale_after is None or now < snapshot.stale_after
    )


#: ``json.dumps(..., separators=(",", ":"))`` for the values the stores keep (records and snapshots: flat, built
#: here, no value held twice), by one encoder made once (one made at each call was a tenth of the core's loading).
_compact = compact_encoder()


class Stamps(dict[datetime, str]):
    """The ISO 8601 text of each UTC time asked for, worked out once: the records and snapshots of a batch share their
    times (a plugin's moves of one step, its snapshot's ``since``, its first check), and ``isoformat`` was a tenth of
    writing them."""

    def __missing__(self, at: datetime) -> str:
        text = self[at] = at.isoformat()
        return text


def _iso(at: datetime, stamps: Stamps | None) -> str:
    """``at.isoformat()``, from ``stamps`` where given and ``at`` is in UTC (equal times in other zones are written
    otherwise, so only UTC's are shared)."""
    return at.isoformat() if stamps is None or at.tzinfo is not UTC else stamps[at]


def record_to_json(record: TransitionRecord, stamps: Stamps | None = None) -> str:
    """A transition record as compact JSON (the history entry the HTTP API serves): ``json.dumps`` of its
    ``to_dict()``, written field by field (2 us, not 5: three records a plugin as thousands load). ``stamps``: the
    texts of times, shared with other writes."""
    source = record.source
    try:
        return (
            f'{{"plugin":{_string(record.plugin)},"from":{"null" if source is None else _string(source._value_)},'
            f'"to":{_string(record.dest._value_)},"trigger":{_string(record.trigger)},'
            f'"reason":{"null" if record.reason is None else _string(record.reason)},'
            f'"error_type":{"null" if record.error_type is None else _string(record.error_type)},'
            f'"error":{"null" if record.error is None else _string(record.error)},'
            f'"at":{_string(_iso(record.at, stamps))}}}'
        )
    except TypeError:  # a field of another type than its own: as json.dumps writes it
        return _compact(record.to_dict())


#: ``json.dumps`` of one ``str`` (a subclass too), quotes included; ``TypeError`` for anything else. The writers below
#: raise ``TypeError`` for a value that is not of the one type they write, and their callers then write it the slow,
#: general way: so a record or snapshot is always written as ``json.dumps`` writes its dict.
_string: Callable[[str], str] = json.encoder.encode_basestring_ascii


def _maybe(value: str | None) -> str:
    return "null" if value is None else _string(value)


def _flag(value: bool) -> str:
    if value is True:
        return "true"
    if value is False:
        return "false"
    raise TypeError(value)


def _maybe_flag(value: bool | None) -> str:
    return "null" if value is None else _flag(value)


def _count(value: int) -> str:
    if type(value) is int:
        return int.__repr__(value)
    raise TypeError(value)


def _strings(values: tuple[str, ...] | list[str]) -> str:
    if type(values) in (tuple, list):
        return f"[{','.join(map(_string, values))}]"
    raise TypeError(values)


def _time(value: datetime | None, stamps: Stamps | None = None) -> str:
    return "null" if value is None else _string(_iso(value, stamps))


def record_from_json(text: str | bytes) -> TransitionRecord:
    """The inverse of ``record_to_json``."""
    data = json.loads(text)
    return TransitionRecord(
        plugin=data["plugin"],
        source=None if data["from"] is None else PluginLifecycleState(data["from"]),
        dest=PluginLifecycleState(data["to"]),
        trigger=data["trigger"],
        reason=data["reason"],
        error_type=data["error_type"],
        error=data["error"],
        at=datetime.fromisoformat(data["at"]),
    )


class StateStore(Protocol):
    """Where the host publishes plugin states and every worker reads them (DESIGN.md section 8)."""

    def begin(self, names: Iterable[str]) -> None:
        """A host starts with these plugins: forget the snapshots of any others (no ghosts); keep history."""
        ...

    def put(self, snapshot: PluginSnapshot, record: TransitionRecord | None = None) -> None:
        """Publish a plugin's snapshot, and the transition that produced it, in one step."""
        ...

    def put_many(self, snapshots: Iterable[PluginSnapshot], records: Iterable[TransitionRecord] = ()) -> None:
        """Publish several snapshots, and the transitions that led there in the order they happened, in one step
        (one version change): all of it or, if it fails, none (so what is recorded is a prefix of what happened)."""
        ...

    def degraded(self) -> str | None:
        """None while the store works; else why the answers are this process's last known states."""
        ...

    def version(self) -> int:
        """A number that grows with every ``put``; cheap, for caches."""
        ...

    def look(self) -> AbstractContextManager[None]:
        """A block in which this thread's (or greenlet's) ``version()`` and ``get_meta()`` may share one look at
        the store, for a store that pays for each (SQLite: a ``PRAGMA data_version``, 3 us): never older than the
        first of them in the block, and a write made in the block need not be seen before it ends (for reads
        only). Pins nest: an inner one joins the outer. A store whose reads cost nothing of the kind: no-op."""
        ...

    def snapshots(self) -> list[PluginSnapshot]:
        """Every current plugin, ordered by name."""
        ...

    def critical_snapshots(self) -> list[PluginSnapshot]:
        """Every current critical plugin, ordered by name (what ``/readyz`` judges: a few among many)."""
        ...

    def parse_ahead(self, pause: Callable[[], None], step: int) -> int:
        """Parse every current plugin's snapshot that the next ``snapshots()`` would parse, calling ``pause()`` after
        each ``step`` of them (to give way to other work); how many were parsed. A store that parses nothing (it
        keeps objects): 0."""
        ...

    def snapshot(self, name: str) -> PluginSnapshot | None:
        """One plugin, or None."""
        ...

    def history(self, name: str) -> list[TransitionRecord]:
        """The plugin's recorded transitions, oldest first (bounded)."""
        ...

    def last_seq(self) -> int:
        """The sequence number of the newest transition recorded (0: none); it only grows. Cheap: followers of
        the store (``/v1/events``, ``plugins watch``) ask it several times a second."""
        ...

    def records_since(self, seq: int, limit: int | None = None) -> list[tuple[int, str, str]]:
        """The transitions recorded after ``seq`` that are still kept, oldest first (at most ``limit``): each as
        (seq, plugin, record JSON)."""
        ...

    def transition_counts(self) -> dict[tuple[str | None, str], int]:
        """How many of the transitions kept in every plugin's history went from each state to each other one
        (by name; None: a first state)."""
        ...

    def set_meta(self, key: str, value: str) -> None:
        """Keep a small service-wide value (liveness of the host, loading finished, disabled plugins)."""
        ...

    def get_meta(self, key: str) -> str | None:
        """A value kept with ``set_meta``, or None."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...
