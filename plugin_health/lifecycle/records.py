"""What is kept of every transition, and the bounded history of one plugin."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from plugin_health.errors import bounded
from plugin_health.frozen import slot_maker
from plugin_health.lifecycle.states import PluginLifecycleState

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class TransitionRecord:
    """One move of one plugin; ``source`` is None for the state a plugin is first tracked in."""

    plugin: str
    source: PluginLifecycleState | None
    dest: PluginLifecycleState
    trigger: str
    reason: str | None = None
    error_type: str | None = None
    error: str | None = None
    at: datetime = _EPOCH

    @classmethod
    def now(
        cls,
        plugin: str,
        source: PluginLifecycleState | None,
        dest: PluginLifecycleState,
        trigger: str,
        reason: str | None = None,
        error_type: str | None = None,
        error: str | None = None,
        at: datetime | None = None,
    ) -> TransitionRecord:
        """A record stamped with the current UTC time (``at``: that time, read once for several records), its error
        message bounded.

        Made by filling its slots (``slot_maker``): three records a plugin as it loads.
        """
        return _make_record(plugin, source, dest, trigger, reason, error_type,
                            None if error is None else bounded(error), _now(UTC) if at is None else at)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form of DESIGN.md section 7 (``from``/``to``, ISO-8601 ``at``)."""
        return {
            "plugin": self.plugin,
            "from": None if self.source is None else self.source.value,
            "to": self.dest.value,
            "trigger": self.trigger,
            "reason": self.reason,
            "error_type": self.error_type,
            "error": self.error,
            "at": self.at.isoformat(),
        }


_now = datetime.now
#: Makes a record of a value for each field, in order (what ``now`` fills: every field, as ``tests/test_lifecycle.py``
#: checks).
_make_record = slot_maker(TransitionRecord)


class History:
    """The last ``limit`` transitions of one plugin, oldest first."""

    __slots__ = ("_records",)

    def __init__(self, limit: int, records: Iterable[TransitionRecord] = ()) -> None:
        """``records``: the first ones, oldest first (the last ``limit`` of them are kept)."""
        if limit < 1:
            raise ValueError(f"history limit must be at least 1, got {limit}")
        self._records: deque[TransitionRecord] = deque(records, maxlen=limit)

    def append(self, record: TransitionRecord) -> None:
        """Keep a record, dropping the oldest beyond the limit."""
        self._records.append(record)

    def __iter__(self) -> Iterator[TransitionRecord]:
        return iter(tuple(self._records))

    def __len__(self) -> int:
        return len(self._records)

    @property
    def last(self) -> TransitionRecord:
        """The newest record (every tracked plugin has at least one)."""
        return self._records[-1]
