"""A Hypothesis state machine that drives hosted plugins through the operator's actions, judged by the table.

:func:`run_host_state_machine` sends ``restart``, ``disable``, ``enable`` and health checks, at random, to the
plugins of a :class:`~plugin_health.testing.PluginHost` (real plugins, in runners): an action the table refuses must
change nothing; any other must move the plugin by legal moves only and end where the action promises; and no
plugin may ever run while one it requires does not.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import hypothesis
from hypothesis import HealthCheck
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

from plugin_health.errors import DependencyNotReadyError, PluginNotRunningError
from plugin_health.lifecycle import TransitionRecord
from plugin_health.loader.dependencies import resolve
from plugin_health.testing import oracle
from plugin_health.testing.assertions import assert_illegal
from plugin_health.testing.oracle import as_entry

if TYPE_CHECKING:
    from plugin_health.testing.host import PluginHost

#: The defaults: real processes answer each step (about a millisecond each), so fewer, shorter runs than Hypothesis's.
HOST_SETTINGS = hypothesis.settings(max_examples=25, stateful_step_count=12, deadline=None,
                                    suppress_health_check=[HealthCheck.too_slow])


class HostStateMachine(RuleBasedStateMachine):
    """Operator actions and health checks on a :class:`PluginHost`'s plugins, judged by the table.

    Built by :func:`host_state_machine`, which adds the rules for the chosen plugins. Every run starts with each
    plugin restarted, dependencies first, so that runs replay alike (plugins are expected to behave the same way
    each time they are started).
    """

    host: ClassVar[PluginHost]
    names: ClassVar[tuple[str, ...]]

    def __init__(self) -> None:
        super().__init__()
        registry = self.host.core.registry
        order = [*resolve(registry.declared()).order, *sorted(self.host.states)]
        for name in dict.fromkeys(order):
            # Held UNAVAILABLE by a dependency that cannot run: as it would be after any restart.
            with contextlib.suppress(DependencyNotReadyError):
                self.host.restart(name)

    def act(self, name: str, action: str) -> None:
        """Send the operator action ``action`` to ``name`` and judge what it did."""
        self._settle()
        manager = self.host.manager
        state = manager.state_of(name).value
        legal = (action == "restart" or (action == "disable" and state in oracle.ACTIVE)
                 or (action == "enable" and state in ("FAILED", "UNAVAILABLE")))
        if not legal:
            error = assert_illegal(self.host, name, action)
            if error.allowed != oracle.allowed(state):
                raise AssertionError(f"{action} of {name!r} in {state} names {error.allowed} as allowed, the table "
                                     f"says {oracle.allowed(state)}")
            return
        last = manager.last(name)
        try:
            getattr(self.host, action)(name)
        except DependencyNotReadyError:
            self._settle()
            reason = manager.last(name).reason or ""
            if manager.state_of(name).value != "UNAVAILABLE" or not reason.startswith("dependency_"):
                raise AssertionError(f"{action} of {name!r} was held by a dependency, but it is "
                                     f"{manager.state_of(name).value} ({reason})") from None
        self._settle()
        new = _since(manager.history(name), last)
        oracle.check_moves(name, new, state)
        end = manager.state_of(name).value
        if action == "disable":
            if [as_entry(r)[:4] for r in new] != [(state, "UNAVAILABLE", "make_unavailable", "disabled")]:
                raise AssertionError(f"disable of {name!r} in {state} recorded {[as_entry(r) for r in new]}")
            return
        held = end == "UNAVAILABLE" and not (manager.last(name).reason or "").startswith("dependency_")
        if "reset" not in [r.trigger for r in new] or end in ("LOADED", "INITIALIZED") or held:
            raise AssertionError(f"{action} of {name!r} from {state} did not reset it, then bring it up, fail it or "
                                 f"hold it for a dependency: {[as_entry(r) for r in new]}")
        if state in oracle.ACTIVE and as_entry(new[0])[1:4] != ("UNAVAILABLE", "make_unavailable", "stopped"):
            raise AssertionError(f"restart of {name!r} in {state} did not stop it first: {as_entry(new[0])}")

    def check(self, name: str) -> None:
        """Run ``name``'s health check now: only a RUNNING plugin is checked, and a check can only fail it."""
        self._settle()
        manager = self.host.manager
        state = manager.state_of(name).value
        version, last = manager.version, manager.last(name)
        try:
            health = self.host.check_now(name)
        except PluginNotRunningError:
            if state == "RUNNING" or manager.version != version:
                raise AssertionError(f"health check of {name!r} in {state} refused, or refused but moved it") from None
            return
        if state != "RUNNING":
            raise AssertionError(f"health check of {name!r} ran in state {state}")
        self._settle()
        new = _since(manager.history(name), last)
        oracle.check_moves(name, new, state)
        if health.state.value not in ("RUNNING", "FAILED") or (new and new[0].trigger != "fail"):
            raise AssertionError(f"health check of {name!r} moved it {[as_entry(r) for r in new]}")

    @invariant()
    def every_move_is_legal_and_nothing_runs_without_its_dependencies(self) -> None:
        """Each plugin's whole history follows the table; a RUNNING plugin's dependencies all run."""
        self._settle()
        manager, registry = self.host.manager, self.host.core.registry
        for name in manager:
            oracle.check_history(name, manager.history(name))
            state = manager.state_of(name)
            if self.host.health(name).allowed != oracle.allowed(state):
                raise AssertionError(f"{name!r}'s health offers {self.host.health(name).allowed} in {state.value}")
            entry = registry.get_or_none(name)
            if state.value == "RUNNING" and entry is not None:
                down = [r.name for r in entry.spec.requires if manager.get_state(r.name) != "RUNNING"]
                if down:
                    raise AssertionError(f"plugin {name!r} runs while {', '.join(down)} (which it requires) does not")

    def _settle(self) -> None:
        """Let the supervisor finish what it was doing (a check it started on its own)."""
        self.host.core.supervisor.wait_idle(10.0)


def _since(history: Sequence[TransitionRecord], last: TransitionRecord) -> list[TransitionRecord]:
    """The records after ``last`` (the newest one before an action)."""
    for index in range(len(history) - 1, -1, -1):
        if history[index] is last:
            return list(history[index + 1:])
    raise AssertionError(f"more moves than the history keeps since {as_entry(last)}")


def host_state_machine(host: PluginHost, names: Iterable[str] | None = None) -> type[HostStateMachine]:
    """A :class:`HostStateMachine` over ``host``'s plugins ``names`` (default: all of them)."""
    chosen = tuple(names) if names is not None else tuple(host.states)
    unknown = [name for name in chosen if name not in host.manager]
    if unknown or not chosen:
        raise ValueError(f"plugins {unknown or chosen} are not hosted (hosted: {', '.join(host.states) or 'none'})")
    plugin = st.sampled_from(chosen)

    class HostLifecycle(HostStateMachine):
        @rule(name=plugin, action=st.sampled_from(("restart", "disable", "enable")))
        def operator(self, name: str, action: str) -> None:
            self.act(name, action)

        @rule(name=plugin)
        def health_check(self, name: str) -> None:
            self.check(name)

    HostLifecycle.host = host
    HostLifecycle.names = chosen
    return HostLifecycle


def run_host_state_machine(host: PluginHost, names: Iterable[str] | None = None, *,
                           settings: hypothesis.settings | None = None, **overrides: Any) -> None:
    """Run :func:`host_state_machine` as a test (``HOST_SETTINGS`` unless ``settings``; ``max_examples=...``)."""
    chosen = settings if settings is not None else HOST_SETTINGS
    if overrides:
        chosen = hypothesis.settings(chosen, **overrides)
    run_state_machine_as_test(host_state_machine(host, names), settings=chosen)
