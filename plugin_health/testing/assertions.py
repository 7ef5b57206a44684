"""Assertions on plugin lifecycles: states, histories, refused moves, waiting for a state, driving a manager.

Each takes a :class:`~plugin_health.testing.PluginHost` or a bare :class:`~plugin_health.PluginLifecycleManager`
(anything with a ``manager``), accepts states as names or :class:`~plugin_health.PluginLifecycleState`, and fails
with an ``AssertionError`` whose message says what each plugin did instead (its reason and error included), so
that a failing test needs no debugger. Legality is judged by :mod:`plugin_health.testing.oracle`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

from plugin_health.errors import IllegalTransitionError
from plugin_health.lifecycle import PluginLifecycleManager, TransitionRecord
from plugin_health.testing import oracle

#: Operator actions ``assert_illegal`` sends through a host (the other names are lifecycle triggers).
OPERATOR_ACTIONS = ("restart", "disable", "enable")

#: One expected move: ``(from, to)``, or ``(from, to, reason)`` to check the recorded reason too.
Move = tuple[str | None, str] | tuple[str | None, str, str | None]


class HasManager(Protocol):
    """A :class:`~plugin_health.testing.PluginHost`, or anything else that exposes its lifecycle manager."""

    @property
    def manager(self) -> PluginLifecycleManager: ...


Target = PluginLifecycleManager | HasManager

_Everything = tuple[int, dict[str, str], dict[str, list[TransitionRecord]]]


def assert_states(target: Target, expected: Mapping[str, str]) -> None:
    """Each plugin named in ``expected`` is in that state (plugins not named are not checked)."""
    __tracebackhide__ = True  # pytest shows the test's line, not this helper's
    manager = _manager(target)
    problems = []
    for name, state in expected.items():
        want = _state(state)
        actual = manager.get_state(name)
        if actual is None:
            problems.append(f"{name}: not hosted, expected {want} (hosted: {', '.join(manager) or 'none'})")
        elif actual != want:
            problems.append(f"{name}: {actual.value}, expected {want}{_why(manager.last(name))}")
    if problems:
        raise AssertionError("plugin states differ from the expected ones:\n  " + "\n  ".join(problems))


def assert_history(target: Target, name: str, expected: Sequence[Move], *, tail: bool = False) -> None:
    """``name`` moved exactly as ``expected`` says, oldest first.

    The plugin's first state (``from`` None) is compared only when ``expected`` starts with it; ``tail=True``
    compares the newest ``len(expected)`` moves only. A move with a third item compares the recorded reason too.
    """
    __tracebackhide__ = True  # pytest shows the test's line, not this helper's
    records = _manager(target).history(name)
    moves = [_move(m) for m in expected]
    if not (moves and moves[0][0] is None):
        records = [r for r in records if r.source is not None]
    if tail:
        records = records[-len(moves):] if moves else []
    if len(records) == len(moves) and all(
        (r.source, r.dest) == (source, dest) and (not with_reason or r.reason == reason)
        for r, (source, dest, with_reason, reason) in zip(records, moves, strict=True)
    ):
        return
    wanted = "\n    ".join(
        _arrow(source, dest) + (f"  ({reason})" if with_reason else "") for source, dest, with_reason, reason in moves
    ) or "(no moves)"
    happened = "\n    ".join(_arrow(r.source, r.dest) + _why(r, "  ") for r in records) or "(no moves)"
    which = "newest " if tail else ""
    raise AssertionError(f"the {which}moves of plugin {name!r} differ from the expected ones\n"
                         f"  expected:\n    {wanted}\n  actual:\n    {happened}")


def assert_illegal(target: Target, name: str, trigger: str | None = None, *,
                   to: str | None = None) -> IllegalTransitionError:
    """Attempt a move that must be refused; check that ``IllegalTransitionError`` names it and nothing changed.

    ``trigger``: a lifecycle trigger fired at the manager, or (given a host) an operator action, ``restart``,
    ``disable`` or ``enable``; ``to``: a state for ``set_state`` instead. Nothing changed means every plugin's
    state and history, and the manager's version, are as they were. Returns the error (``.allowed``...).
    """
    __tracebackhide__ = True  # pytest shows the test's line, not this helper's
    if (trigger is None) == (to is None):
        raise TypeError("assert_illegal() takes a trigger or to=<state>, not both nor neither")
    manager = _manager(target)
    attempt: Callable[[], object]
    if to is not None:
        what = f"set_state to {to!r}"
        attempt = lambda: manager.set_state(name, to)  # noqa: E731
    elif trigger in OPERATOR_ACTIONS:
        action = getattr(target, trigger, None)
        if action is None:
            raise TypeError(f"operator action {trigger!r} needs a PluginHost, not {type(target).__name__}")
        what = f"operator action {trigger!r}"
        attempt = lambda: action(name)  # noqa: E731
    else:
        assert trigger is not None
        what = f"trigger {trigger!r}"
        attempt = lambda: manager.trigger(name, trigger)  # noqa: E731
    before = _everything(manager)
    state = before[1].get(name)
    where = f"plugin {name!r} " + ("(untracked)" if state is None else f"in state {state}")
    try:
        attempt()
    except IllegalTransitionError as err:
        refused = err
    except Exception as err:
        raise AssertionError(f"{what} on {where} raised {type(err).__name__} ({err}), "
                             "not IllegalTransitionError") from err
    else:
        raise AssertionError(f"{what} on {where} was allowed: {_changes(before, _everything(manager))}")
    changes = _changes(before, _everything(manager))
    if changes:
        raise AssertionError(f"{what} on {where} raised IllegalTransitionError but changed things: {changes}")
    if (refused.plugin, refused.state) != (name, state):
        raise AssertionError(f"{what} on {where}: the IllegalTransitionError names plugin {refused.plugin!r} in "
                             f"state {refused.state}")
    return refused


def wait_for_state(target: Target, name: str, state: str, timeout: float = 10.0) -> TransitionRecord:
    """Wait until ``name`` is in ``state`` (supervision moves plugins in the background); the move that got it there."""
    __tracebackhide__ = True  # pytest shows the test's line, not this helper's
    manager = _manager(target)
    want = _state(state)
    deadline = time.monotonic() + timeout
    while True:
        if manager.get_state(name) == want:
            return manager.last(name)
        if time.monotonic() >= deadline:
            break
        time.sleep(0.02)
    current = manager.get_state(name)
    if current is None:
        raise AssertionError(f"plugin {name!r} did not reach {want} within {timeout:g} s: it is not hosted")
    moves = "\n    ".join(_arrow(r.source, r.dest) + _why(r, "  ") for r in manager.history(name))
    raise AssertionError(f"plugin {name!r} did not reach {want} within {timeout:g} s: it is {current.value}\n"
                         f"  its moves:\n    {moves}")


def drive_to(manager: PluginLifecycleManager, name: str, state: str) -> list[TransitionRecord]:
    """Move ``name`` to ``state`` by the shortest legal path (entering it first if untracked); the records made.

    A plugin enters in ``state`` itself when that is a first state (LOADED, FAILED), else as LOADED.
    """
    want = _state(state)
    records = []
    current = manager.get_state(name)
    if current is None:
        first = want if want in oracle.FIRST_STATES else "LOADED"
        records.append(manager.set_state(name, first))
        current = manager.state_of(name)
    route = oracle.path(current, want)
    if route is None:
        raise ValueError(f"no legal path from {current.value} to {want}")
    records.extend(manager.trigger(name, trigger) for trigger in route)
    return records


def _manager(target: Target) -> PluginLifecycleManager:
    return target if isinstance(target, PluginLifecycleManager) else target.manager


def _state(value: str) -> str:
    """``value`` as a state's name; ``ValueError`` for a typo (a test must not pass by comparing to nonsense)."""
    if value not in oracle.STATES:
        raise ValueError(f"{value!r} is not a lifecycle state ({', '.join(oracle.STATES)})")
    return str(value)


def _move(move: Move) -> tuple[str | None, str, bool, str | None]:
    """``(from, to, whether the reason is compared, reason)``, the states checked."""
    if len(move) not in (2, 3):
        raise ValueError(f"a move is (from, to) or (from, to, reason), not {move!r}")
    source = None if move[0] is None else _state(move[0])
    return source, _state(move[1]), len(move) == 3, move[2] if len(move) == 3 else None


def _arrow(source: str | None, dest: str) -> str:
    return f"{'(entered)' if source is None else source} -> {dest}"


def _why(record: TransitionRecord, lead: str = " ") -> str:
    """`` (reason; ErrorType: message)`` for a record that has any of them."""
    error = ": ".join(part for part in (record.error_type, record.error) if part)
    details = "; ".join(part for part in (record.reason, error) if part)
    return f"{lead}({details})" if details else ""


def _everything(manager: PluginLifecycleManager) -> _Everything:
    version = manager.version
    states = {name: state.value for name, state in manager.all_states().items()}
    return version, states, {name: manager.history(name) for name in states}


def _changes(before: _Everything, after: _Everything) -> str:
    """What differs between two readings of a manager, in words (empty: nothing)."""
    changes = []
    for name in sorted(set(before[1]) | set(after[1])):
        old, new = before[1].get(name), after[1].get(name)
        if old != new:
            changes.append(f"{name} {old or 'untracked'} -> {new or 'untracked'}")
        elif before[2].get(name) != after[2].get(name):
            changes.append(f"{name}'s history changed")
    if not changes and before[0] != after[0]:
        changes.append("the manager's version moved")
    return "; ".join(changes)
