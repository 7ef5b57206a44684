"""A Hypothesis state machine that fires random moves at a lifecycle manager and judges each by the table.

:class:`LifecycleStateMachine` drives a bare :class:`~plugin_health.PluginLifecycleManager`: every trigger, legal or
not (unknown ones too), ``set_state`` to every state (and to names that are none), ``forget``, on two plugins. A
legal move must land where :mod:`plugin_health.testing.oracle` says, record exactly one entry and be told to the
listeners; anything else must raise ``IllegalTransitionError`` with the table's allowed triggers and change nothing.
``TestLifecycle = LifecycleStateMachine.TestCase`` runs it; :func:`lifecycle_state_machine` builds one over a
manager of your own (your listeners subscribed, a small history limit). The same over hosted plugins:
:mod:`plugin_health.testing.hostmachine`.

These two modules are the only ones of the package that import Hypothesis (``pip install plugin-health[testing]``).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import ClassVar

from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from plugin_health.errors import UnknownPluginError
from plugin_health.lifecycle import PluginLifecycleManager, TransitionRecord
from plugin_health.lifecycle.manager import DEFAULT_HISTORY_LIMIT
from plugin_health.testing import oracle
from plugin_health.testing.assertions import assert_illegal
from plugin_health.testing.oracle import as_entry

#: The plugins the machine moves: two, so that moving one must never touch the other.
NAMES = ("alpha", "beta")
#: Names that are no state (a lower-case one, a trigger's, an empty one).
BOGUS_STATES = ("BOGUS", "running", "to_RUNNING", "")
#: Names that are no trigger: ``transitions``' automatic ones (off), the manager's own methods, near misses.
BOGUS_TRIGGERS = ("to_RUNNING", "to_LOADED", "set_state", "trigger", "Reset", "bogus", "")
REASONS = (None, "why", "dependency_missing: geo")
ERROR_TYPES = (None, "RuntimeError")


class LifecycleStateMachine(RuleBasedStateMachine):
    """Random moves at a :class:`PluginLifecycleManager`, each judged by the table; ``.TestCase`` runs it.

    Subclass it to test a manager of your own: override :meth:`new_manager` (and set ``history_limit`` to the
    limit that manager keeps).
    """

    history_limit: ClassVar[int] = DEFAULT_HISTORY_LIMIT

    def __init__(self) -> None:
        super().__init__()
        self.manager = self.new_manager()
        #: What the table says each tracked plugin's whole history is.
        self.expected: dict[str, list[oracle.Entry]] = {}
        #: What a listener was told, in order.
        self.seen: list[TransitionRecord] = []
        self.manager.subscribe(self.seen.append)

    def new_manager(self) -> PluginLifecycleManager:
        """The manager under test (a fresh one for every run)."""
        return PluginLifecycleManager(history_limit=self.history_limit)

    def state(self, name: str) -> str | None:
        """The state the table says ``name`` is in (None: untracked)."""
        expected = self.expected.get(name)
        return None if not expected else expected[-1][1]

    @rule(name=st.sampled_from(NAMES), state=st.sampled_from(oracle.STATES + BOGUS_STATES),
          reason=st.sampled_from(REASONS), error_type=st.sampled_from(ERROR_TYPES))
    def set_state(self, name: str, state: str, reason: str | None, error_type: str | None) -> None:
        """``set_state``: legal only where one trigger of the table leads (for an untracked plugin: a first state)."""
        current = self.state(name)
        if current is None:
            trigger: str | None = oracle.ENTER_TRIGGER if state in oracle.FIRST_STATES else None
        else:
            trigger = oracle.trigger_between(current, state)
        if trigger is None:
            self._refused(name, current, to=state)
            return
        version = self.manager.version
        record = self.manager.set_state(name, state, reason=reason, error_type=error_type)
        self._moved(name, record, (current, state, trigger, reason, error_type), version)

    @rule(name=st.sampled_from(NAMES), trigger=st.sampled_from(oracle.TRIGGERS + BOGUS_TRIGGERS),
          reason=st.sampled_from(REASONS), error_type=st.sampled_from(ERROR_TYPES))
    def fire(self, name: str, trigger: str, reason: str | None, error_type: str | None) -> None:
        """``trigger``: legal only where the table has the move; an untracked plugin is ``UnknownPluginError``."""
        current = self.state(name)
        if current is None:
            version = self.manager.version
            try:
                self.manager.trigger(name, trigger)
            except UnknownPluginError:
                pass
            else:
                raise AssertionError(f"trigger {trigger!r} on untracked plugin {name!r} did not raise")
            if name in self.manager or self.manager.version != version:
                raise AssertionError(f"trigger {trigger!r} on untracked plugin {name!r} changed the manager")
            return
        dest = oracle.LEGAL.get((current, trigger))
        if dest is None:
            self._refused(name, current, trigger=trigger)
            return
        version = self.manager.version
        record = self.manager.trigger(name, trigger, reason=reason, error_type=error_type)
        self._moved(name, record, (current, dest, trigger, reason, error_type), version)

    @rule(name=st.sampled_from(NAMES))
    def forget(self, name: str) -> None:
        """Stop tracking ``name``: it may enter again, in a first state only."""
        self.manager.forget(name)
        self.expected.pop(name, None)

    def _refused(self, name: str, current: str | None, trigger: str | None = None, to: str | None = None) -> None:
        seen = len(self.seen)
        error = assert_illegal(self.manager, name, trigger, to=to)
        if current is not None and error.allowed != oracle.allowed(current):
            raise AssertionError(f"plugin {name!r} in {current}: allowed {error.allowed}, the table says "
                                 f"{oracle.allowed(current)}")
        if len(self.seen) != seen:
            raise AssertionError(f"a listener was told of a refused move of {name!r}: {self.seen[seen:]}")

    def _moved(self, name: str, record: TransitionRecord, expected: oracle.Entry, version: int) -> None:
        if as_entry(record) != expected:
            raise AssertionError(f"plugin {name!r} recorded {as_entry(record)}, the table says {expected}")
        if self.manager.version <= version:
            raise AssertionError(f"the manager's version did not move with {name!r}'s move")
        if not self.seen or self.seen[-1] is not record:
            raise AssertionError(f"no listener was told of {name!r}'s move {as_entry(record)}")
        if expected[0] is None:
            self.expected[name] = []
        self.expected[name].append(expected)

    @invariant()
    def matches_the_table(self) -> None:
        """Every plugin is where the table says, with the history it says, and is offered what the table offers."""
        states = {name: entries[-1][1] for name, entries in sorted(self.expected.items())}
        actual = {name: state.value for name, state in self.manager.all_states().items()}
        if actual != states:
            raise AssertionError(f"states {actual}, the table says {states}")
        for name in NAMES:
            state = states.get(name)
            if state is None:
                if self.manager.get_state(name) is not None or name in self.manager:
                    raise AssertionError(f"forgotten or never entered plugin {name!r} is tracked")
                continue
            history = self.manager.history(name)
            entries = [as_entry(r) for r in history]
            if entries != self.expected[name][-self.history_limit:]:
                raise AssertionError(f"plugin {name!r} recorded {entries}, the table says {self.expected[name]}")
            oracle.check_history(name, history)
            if any(b.at < a.at for a, b in itertools.pairwise(history)) or history[0].at.tzinfo is None:
                raise AssertionError(f"plugin {name!r}'s history is not in UTC time order")
            if self.manager.last(name) is not history[-1]:
                raise AssertionError(f"last({name!r}) is not the newest record")
            if self.manager.allowed_triggers(name) != oracle.allowed(state):
                raise AssertionError(f"{name!r} in {state} allows {self.manager.allowed_triggers(name)}, "
                                     f"the table says {oracle.allowed(state)}")
            for trigger in oracle.TRIGGERS:
                if self.manager.may(name, trigger) != ((state, trigger) in oracle.LEGAL):
                    raise AssertionError(f"may({name!r}, {trigger!r}) in {state} disagrees with the table")


def lifecycle_state_machine(
    manager_factory: Callable[[], PluginLifecycleManager] | None = None,
    *,
    history_limit: int = DEFAULT_HISTORY_LIMIT,
) -> type[LifecycleStateMachine]:
    """A :class:`LifecycleStateMachine` over managers from ``manager_factory`` (which keep ``history_limit``).

    ``TestMyManager = lifecycle_state_machine(make_manager).TestCase`` collects it as a test.
    """


    class Machine(LifecycleStateMachine):
        def new_manager(self) -> PluginLifecycleManager:
            if manager_factory is None:
                return PluginLifecycleManager(history_limit=history_limit)
            return manager_factory()

    Machine.history_limit = history_limit
    return Machine
