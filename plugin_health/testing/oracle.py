"""The lifecycle table written out again by hand, as the README's Lifecycle section states it: the oracle.

The helpers and the state machines of :mod:`plugin_health.testing` judge the code against this table, never against
the table the code itself uses (:mod:`plugin_health.lifecycle.states`): an oracle that is the code under test
proves nothing. Data and functions over strings (a :class:`~plugin_health.PluginLifecycleState` is a string, so
either may be given), and two judgments of recorded transitions that raise ``AssertionError``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from plugin_health.lifecycle import TransitionRecord

#: A record as plain values: ``(from, to, trigger, reason, error_type)``.
Entry = tuple[str | None, str, str, str | None, str | None]

#: The five states, in the README's order.
STATES: Final = ("LOADED", "INITIALIZED", "RUNNING", "FAILED", "UNAVAILABLE")

#: The five triggers, in the table's order.
TRIGGERS: Final = ("initialize", "start", "fail", "make_unavailable", "reset")

#: (state, trigger) -> state, for every legal move, and for nothing else.
LEGAL: Final[Mapping[tuple[str, str], str]] = MappingProxyType({
    ("LOADED", "initialize"): "INITIALIZED",
    ("INITIALIZED", "start"): "RUNNING",
    ("LOADED", "fail"): "FAILED",
    ("INITIALIZED", "fail"): "FAILED",
    ("RUNNING", "fail"): "FAILED",
    ("LOADED", "make_unavailable"): "UNAVAILABLE",
    ("INITIALIZED", "make_unavailable"): "UNAVAILABLE",
    ("RUNNING", "make_unavailable"): "UNAVAILABLE",
    ("FAILED", "reset"): "LOADED",
    ("UNAVAILABLE", "reset"): "LOADED",
})

#: The states an untracked plugin may enter in (FAILED: its code could not be loaded).
FIRST_STATES: Final = frozenset({"LOADED", "FAILED"})

#: The trigger recorded for a plugin's first state.
ENTER_TRIGGER: Final = "load"

#: The states a plugin is brought up from or taken down in (operator ``disable`` is legal there).
ACTIVE: Final = frozenset({"LOADED", "INITIALIZED", "RUNNING"})


def allowed(state: str) -> tuple[str, ...]:
    """The triggers legal from ``state``, in table order (none for an unknown state)."""
    return tuple(trigger for trigger in TRIGGERS if (state, trigger) in LEGAL)


def trigger_between(source: str, dest: str) -> str | None:
    """The one trigger that moves ``source`` to ``dest``, or None when no legal move does."""
    return next((trigger for (s, trigger), d in LEGAL.items() if s == source and d == dest), None)


def path(source: str, dest: str) -> tuple[str, ...] | None:
    """The shortest sequence of triggers from ``source`` to ``dest`` (empty when they are equal), or None."""
    if source not in STATES or dest not in STATES:
        return None
    routes: dict[str, tuple[str, ...]] = {source: ()}
    frontier = deque([source])
    while frontier:
        state = frontier.popleft()
        if state == dest:
            return routes[state]
        for trigger in allowed(state):
            nxt = LEGAL[(state, trigger)]
            if nxt not in routes:
                routes[nxt] = (*routes[state], trigger)
                frontier.append(nxt)
    return None


def as_entry(record: TransitionRecord) -> Entry:
    """``record`` as plain values, to compare and to print."""
    source = None if record.source is None else record.source.value
    return source, record.dest.value, record.trigger, record.reason, record.error_type


def check_moves(plugin: str, records: Sequence[TransitionRecord], start: str | None) -> None:
    """``records`` follow each other from ``start`` (None: untracked) by legal moves only; else ``AssertionError``."""
    for record in records:
        source = None if record.source is None else record.source.value
        if source != start:
            raise AssertionError(f"plugin {plugin!r}: a move from {source} follows one to {start}")
        if source is None:
            legal = record.dest in FIRST_STATES and record.trigger == ENTER_TRIGGER
        else:
            legal = LEGAL.get((source, record.trigger)) == record.dest
        if not legal:
            raise AssertionError(f"plugin {plugin!r} moved {source} -> {record.dest.value} by {record.trigger!r}, "
                                 "which the table does not allow")
        start = record.dest.value


def check_history(plugin: str, history: Sequence[TransitionRecord]) -> None:
    """A plugin's whole (bounded) history follows the table: entered legally, then legal moves only."""
    first = history[0].source
    check_moves(plugin, history, None if first is None else first.value)
