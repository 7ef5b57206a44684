"""Supervision: outcomes move plugins, health checks run, FAILED plugins come back within the limits."""

from __future__ import annotations

import textwrap
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from plugin_health import PluginLifecycleState
from plugin_health.errors import PluginNotRunningError, UnknownPluginError, UnknownToolError
from plugin_health.loader.loader import FirstCheck, PluginLoader
from plugin_health.loader.sources import discover
from plugin_health.sandbox.results import PluginSandboxResult
from plugin_health.supervision import RESTART_LIMIT_REACHED, SupervisionSettings, Supervisor
from plugin_health.supervision import supervisor as supervision
from plugin_health.tools import ToolRunner

S = PluginLifecycleState


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def write(directory: Path, name: str, body: str) -> None:
    (directory / f"{name}.py").write_text(
        "from plugin_health import Plugin, tool\n\n\nclass P(Plugin):\n"
        + textwrap.indent(textwrap.dedent(body), "    ")
    )


FLAKY = """
calls = 0
fail_starts = 0

@tool
def work(self, fail=False):
    self.calls += 1
    if fail:
        raise ValueError(f"call {self.calls} failed")
    return self.calls

def start(self):
    if self.fail_starts > 0:
        type(self).fail_starts -= 1
        raise RuntimeError("not yet")

def health_check(self):
    return not getattr(self, "sick", False)
"""


def setup(directory: Path, **settings: float) -> tuple[PluginLoader, Supervisor, FakeClock]:
    clock = FakeClock()
    loader = PluginLoader()
    supervisor = Supervisor(loader, SupervisionSettings(**settings), clock=clock, jitter=lambda: 0.0)  # type: ignore[arg-type]
    loader.load(discover([directory], group=None))
    return loader, supervisor, clock


def test_threshold_of_consecutive_tool_failures(tmp_path: Path) -> None:
    write(tmp_path, "flaky", FLAKY)
    loader, supervisor, _ = setup(tmp_path, failure_threshold=3)
    runner = ToolRunner(supervisor)
    assert runner.run("flaky", "work", fail=True).error_type == "ValueError"
    assert runner.run("flaky", "work", fail=True).error == "call 2 failed"
    assert runner.run("flaky", "work").result == 3  # success: the count goes back to 0
    assert supervisor.watch("flaky").consecutive_failures == 0
    for _ in range(2):
        runner.run("flaky", "work", fail=True)
    assert loader.manager.get_state("flaky") is S.RUNNING
    runner.run("flaky", "work", fail=True)
    assert loader.manager.get_state("flaky") is S.FAILED
    last = loader.manager.last("flaky")
    assert (last.reason, last.error_type, last.error) == ("3 consecutive failures (tool work)", "ValueError",
                                                         "call 6 failed")
    with pytest.raises(PluginNotRunningError, match="'flaky' is FAILED, not RUNNING"):
        runner.run("flaky", "work")


def test_tool_runner_typed_errors(tmp_path: Path) -> None:
    write(tmp_path, "flaky", FLAKY)
    _, supervisor, _ = setup(tmp_path)
    runner = ToolRunner(supervisor)
    with pytest.raises(UnknownPluginError):
        runner.run("ghost", "work")
    with pytest.raises(UnknownToolError, match="no tool 'start'"):
        runner.run("flaky", "start")  # a lifecycle method is not a tool
    assert runner.tools("flaky") == ("work",)


def test_failing_health_checks_move_a_running_plugin(tmp_path: Path) -> None:
    write(tmp_path, "flaky", FLAKY)
    loader, supervisor, clock = setup(tmp_path, failure_threshold=2, health_interval=30.0)
    supervisor.tick()  # the first check runs as soon as the plugin is RUNNING
    watch = supervisor.watch("flaky")
    assert watch.last_check_ok is True
    assert watch.last_check is not None
    loader.registry.get("flaky").handle.instance.sick = True
    clock.now += 29
    supervisor.tick()
    assert watch.consecutive_failures == 0  # not due yet
    clock.now += 1
    supervisor.tick()
    assert (watch.last_check_ok, watch.consecutive_failures) == (False, 1)
    clock.now += 30
    supervisor.tick()
    assert loader.manager.get_state("flaky") is S.FAILED
    assert loader.manager.last("flaky").reason == "2 consecutive failures (health check)"
    assert loader.manager.last("flaky").error_type == "HealthCheckFailed"


def test_failed_plugin_restarts_with_backoff(tmp_path: Path) -> None:
    write(tmp_path, "flaky", FLAKY.replace("fail_starts = 0", "fail_starts = 2"))
    loader, supervisor, clock = setup(tmp_path, backoff_base=1.0, backoff_max=300.0)
    m = loader.manager
    assert m.get_state("flaky") is S.FAILED
    watch = supervisor.watch("flaky")
    assert watch.next_restart_at == clock.now + 0.5  # attempt 0: 1 s, jitter 0 -> half
    clock.now += 0.4
    supervisor.tick()
    assert m.get_state("flaky") is S.FAILED
    clock.now += 0.1
    supervisor.tick()  # restart 1: start fails again
    assert m.get_state("flaky") is S.FAILED
    assert watch.next_restart_at == clock.now + 1.0  # attempt 1: 2 s -> 1 s
    clock.now += 1.0
    supervisor.tick()
    assert m.get_state("flaky") is S.RUNNING
    assert watch.restarts == 2
    assert [r.trigger for r in m.history("flaky")][-3:] == ["reset", "initialize", "start"]


def test_restart_limit_keeps_plugin_failed_until_operator_restart(tmp_path: Path) -> None:
    write(tmp_path, "flaky", FLAKY.replace("fail_starts = 0", "fail_starts = 1000"))
    loader, supervisor, clock = setup(tmp_path, max_restarts=2, backoff_base=1.0)
    m = loader.manager
    for _ in range(10):
        clock.now += 400
        supervisor.tick()
    watch = supervisor.watch("flaky")
    assert watch.restarts == 2
    assert watch.gave_up
    assert m.get_state("flaky") is S.FAILED
    assert m.last("flaky").reason == RESTART_LIMIT_REACHED
    assert m.last("flaky").error_type == "RuntimeError"
    assert supervisor.tick() is None  # nothing scheduled any more

    type(loader.registry.get("flaky").handle.instance).fail_starts = 0
    assert supervisor.restart("flaky", automatic=False) is S.RUNNING
    assert not watch.gave_up


def test_restarts_outside_the_window_do_not_count(tmp_path: Path) -> None:
    write(tmp_path, "flaky", FLAKY)
    loader, supervisor, clock = setup(tmp_path, max_restarts=1, restart_window=60.0, failure_threshold=1)
    runner = ToolRunner(supervisor)
    for _ in range(3):  # one restart per window, and the window has passed each time: never gives up
        runner.run("flaky", "work", fail=True)
        assert loader.manager.get_state("flaky") is S.FAILED
        clock.now += 1
        supervisor.tick()
        assert loader.manager.get_state("flaky") is S.RUNNING
        clock.now += 61
    runner.run("flaky", "work", fail=True)
    clock.now += 1
    supervisor.tick()
    runner.run("flaky", "work", fail=True)  # a second failure inside the window: no restart left
    assert loader.manager.get_state("flaky") is S.FAILED
    assert loader.manager.last("flaky").reason == RESTART_LIMIT_REACHED


def test_zero_max_restarts_turns_automatic_restarts_off(tmp_path: Path) -> None:
    write(tmp_path, "flaky", FLAKY.replace("fail_starts = 0", "fail_starts = 1"))
    loader, supervisor, clock = setup(tmp_path, max_restarts=0)
    clock.now += 10_000
    assert supervisor.tick() is None
    assert loader.manager.get_state("flaky") is S.FAILED
    assert loader.manager.last("flaky").reason == "start failed"


def test_plugin_that_never_loaded_is_reimported_on_restart(tmp_path: Path) -> None:
    (tmp_path / "fixme.py").write_text("def broken(:\n")
    loader, supervisor, clock = setup(tmp_path)
    assert loader.manager.last("fixme").error_type == "SyntaxError"
    write(tmp_path, "fixme", "version = '2.0'\n")
    clock.now += 1
    supervisor.tick()
    assert loader.manager.get_state("fixme") is S.RUNNING
    assert [r.trigger for r in loader.manager.history("fixme")] == ["load", "reset", "initialize", "start"]


def test_background_thread_restarts_for_real(tmp_path: Path) -> None:
    write(tmp_path, "flaky", FLAKY.replace("fail_starts = 0", "fail_starts = 1"))
    loader = PluginLoader()
    supervisor = Supervisor(loader, SupervisionSettings(backoff_base=0.05, backoff_max=0.1))
    loader.load(discover([tmp_path], group=None))
    assert loader.manager.get_state("flaky") is S.FAILED
    supervisor.start()
    try:
        deadline = time.monotonic() + 5
        while loader.manager.get_state("flaky") is not S.RUNNING and time.monotonic() < deadline:
            time.sleep(0.01)
        assert loader.manager.get_state("flaky") is S.RUNNING
    finally:
        supervisor.stop()
        loader.shutdown()


def test_moves_told_together_schedule_and_reset_as_moves_told_one_at_a_time(tmp_path: Path) -> None:
    """A plugin entered through its way up in one step (its three records told to the supervisor at once) is
    scheduled for its first check and has its failure count reset (news to the listeners), as when each move is told
    on its own."""
    seen: dict[str, list[tuple[str, bool]]] = {}
    for way in ("one at a time", "together"):
        _, supervisor, clock = setup(tmp_path)
        manager = supervisor.manager
        news: list[tuple[str, bool]] = []
        supervisor.subscribe(lambda name, urgent, news=news: news.append((name, urgent)))
        supervisor.watch("p").consecutive_failures = 2  # counted before it was forgotten, say
        if way == "together":
            manager.enter_through("p", S.LOADED, ("initialize", "start"))
        else:
            manager.set_state("p", S.LOADED)
            manager.trigger("p", "initialize")
            manager.trigger("p", "start")
        seen[way] = news
        assert supervisor._due == [(clock.now, "p", "check")]  # its first check, due now
        assert supervisor.watch("p").consecutive_failures == 0
        assert supervisor.watch("p").next_check_at == clock.now
    assert seen["together"] == seen["one at a time"] == [("p", True)]


def test_work_scheduled_as_the_supervisor_turns_to_wait_is_not_missed(tmp_path: Path) -> None:
    """Between a tick (which says when the next item is due) and the wait for it, another thread may schedule an
    item due sooner, whose wake-up then finds nobody waiting: the wait is worked out from what is scheduled when it
    begins, not from what the tick saw (else that item waited for the one after it: here an hour)."""
    write(tmp_path, "good", "def health_check(self):\n    return True\n")
    loader = PluginLoader()
    supervisor = Supervisor(loader, SupervisionSettings(health_interval=3600))
    loader.load(discover([tmp_path], group=None))
    supervisor.tick()  # its first check: the next one is due in an hour
    watch = supervisor.watch("good")
    first = watch.last_check
    assert first is not None
    ticked = supervisor.tick

    def tick_then_schedule() -> float | None:
        next_due = ticked()
        if supervisor.tick is tick_then_schedule:  # once: what another thread's schedule does right then
            supervisor.tick = ticked  # type: ignore[method-assign]
            with supervisor._lock:
                watch.next_check_at = supervisor._clock()
                supervisor._schedule(watch.next_check_at, "good", "check")
        return next_due

    supervisor.tick = tick_then_schedule  # type: ignore[method-assign]
    supervisor.start()
    try:
        deadline = time.monotonic() + 5
        while watch.last_check == first and time.monotonic() < deadline:
            time.sleep(0.01)
        assert watch.last_check != first
    finally:
        supervisor.stop()
        loader.shutdown()


@pytest.mark.parametrize("compacting", [True, False], ids=["stale-dropped-together", "stale-popped-one-by-one"])
def test_first_checks_judged_with_their_loads_leave_only_the_next_checks_due(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, compacting: bool) -> None:
    """Each plugin entering RUNNING is due for a check at once; a first check judged as it came up with its load
    schedules the next one an interval later, and the item due at once goes stale. ``tick`` then skips every stale
    item (dropped all at once when they are most of what is scheduled, else popped one by one: the same outcome),
    runs only the check of the plugin whose first check was not made, and leaves each plugin's next check due."""
    if not compacting:
        monkeypatch.setattr(supervision, "COMPACT_AFTER", 10**9)
    for i in range(600):
        write(tmp_path, f"p{i:03d}", "pass\n")
    loader, supervisor, clock = setup(tmp_path, health_interval=30.0)
    assert len(supervisor._due) == 600
    judged_at = clock.now
    for i in range(1, 600):
        first = FirstCheck(PluginSandboxResult(True, True), datetime.now(UTC))
        assert supervisor.check_made_if_passed(f"p{i:03d}", first)
    clock.now += 1
    ran: list[str] = []
    check = supervisor.check
    monkeypatch.setattr(supervisor, "check", lambda name: ran.append(name) or check(name))
    assert supervisor.tick() == judged_at + 30.0  # the next due: the first checks judged with their loads
    assert ran == ["p000"]
    # (the check that ran is due again an interval after it was due, as the others)
    assert sorted(supervisor._due) == [(judged_at + 30.0, f"p{i:03d}", "check") for i in range(600)]
    assert supervisor._superseded == (0 if compacting else 599)
    loader.shutdown()
