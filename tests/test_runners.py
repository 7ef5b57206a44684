"""Runners: plugin code runs in runner processes, never in the core; every fault there is survived and blamed.

These tests drive :class:`RunnerPool` directly (``load`` -> :class:`Placed`, ``handle.call``), the way the loader
does. The fault plugins live in tests/plugins/runner (and the import faults of the old process mode in
tests/plugins/process).
"""

from __future__ import annotations

import itertools
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from waiting import wait_for

from plugin_health.errors import PluginBusyError, PluginNotRunningError
from plugin_health.loader.sources import PluginSource
from plugin_health.runtime.runners import (
    Placed,
    RunnerHandle,
    RunnerLoss,
    RunnerPool,
    RunnerSettings,
    _random_idents,
    absolute,
    scrubbed_environment,
)
from plugin_health.sandbox import PluginSandboxResult, SandboxLimits

PLUGINS = Path(__file__).parent / "plugins"
RUNNER = PLUGINS / "runner"
PROCESS = PLUGINS / "process"
MIB = 1024 * 1024
GRACE = RunnerSettings().grace
#: Slack for a loaded CI machine on top of a deadline.
SLACK = 0.3


def source(name: str, directory: Path = RUNNER) -> PluginSource:
    path = directory / f"{name}.py"
    return PluginSource(name, str(path), path=path)


def test_ids_sent_together_are_62_random_bits_each() -> None:
    """Requests sent together take their ids from one read of the system's random source: each still as
    ``secrets.randbits(62)`` would give it (no two alike, every bit used, none past 62 bits)."""
    idents = _random_idents(4096)
    assert len(idents) == len(set(idents)) == 4096
    assert all(0 <= ident < 2**62 for ident in idents)
    assert max(idents) >= 2**61  # the high bits vary
    assert any(ident & 1 for ident in idents)  # and the low ones
    assert _random_idents(0) == []


def alive(pid: int) -> bool:
    """Whether ``pid`` is a process that still runs (a zombie waiting for its reaper does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


def group_members(pgid: int) -> list[int]:
    """The running (not zombie) processes of process group ``pgid``."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            members.append(int(entry.name))
    return members


def parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


class Harness:
    """A pool, the losses it told, and a way to place a plugin and name its handle as the loader would."""

    def __init__(self, settings: RunnerSettings | None = None) -> None:
        self.losses: list[RunnerLoss] = []
        self.pool = RunnerPool(settings, on_lost=self.losses.append)

    def place(self, name: str = "tools", dedicated: bool = False, timeout: float | None = 5.0,
              memory_limit_mb: int | None = 256, directory: Path = RUNNER) -> RunnerHandle:
        placed = self.pool.load(source(name, directory), dedicated, SandboxLimits(timeout, memory_limit_mb))
        assert isinstance(placed.handle, RunnerHandle), placed
        assert placed.declaration is not None
        placed.handle.name = placed.declaration["name"]
        return placed.handle


@pytest.fixture
def make() -> Iterator[Callable[..., Harness]]:
    made: list[Harness] = []

    def factory(settings: RunnerSettings | None = None) -> Harness:
        made.append(Harness(settings))
        return made[-1]

    yield factory
    for harness in made:
        harness.pool.close()


@pytest.fixture
def harness(make: Callable[..., Harness]) -> Harness:
    return make()


def assert_failed(result: PluginSandboxResult, error_type: str, error: str = "") -> None:
    assert (result.ok, result.result, result.error_type) == (False, None, error_type), result
    assert result.error is not None
    assert error in result.error, result.error


def timed(call: Callable[[], PluginSandboxResult]) -> tuple[PluginSandboxResult, float]:
    began = time.perf_counter()
    result = call()
    return result, time.perf_counter() - began


# --- loading ----------------------------------------------------------------------------------------------


def test_load_places_an_instance_in_a_runner_and_returns_its_declaration(harness: Harness) -> None:
    placed = harness.pool.load(source("tools"), False, SandboxLimits(5.0, 256))
    assert placed.handle is not None
    assert (placed.phase, placed.error_type) == (None, None)
    assert placed.declaration is not None
    assert {k: v for k, v in placed.declaration.items() if k != "tools"} == {
        "name": "tools", "version": "1.2.0", "requires": ["geo>=2.0"], "critical": True, "timeout": None,
        "memory_limit_mb": None, "isolation": "inline", "singleton": False,
    }
    assert {"count", "echo", "segfault", "garble"} <= set(placed.declaration["tools"])
    handle = placed.handle
    assert isinstance(handle, RunnerHandle)
    assert handle.isolation == "inline"
    assert handle.limits == SandboxLimits(5.0, 256)  # the plugin declares none: the defaults it was loaded with
    serving = handle.call("pid").result
    runner = handle.runner
    assert serving not in (os.getpid(), runner.pid)
    assert parent_of(serving) == runner.pid  # the serving child of a guard, which is the core's child
    assert parent_of(runner.pid) == os.getpid()
    assert os.getpgid(serving) == os.getpgid(runner.pid) == runner.pid != os.getpgid(0)


def test_inline_plugins_share_one_runner_and_a_dedicated_one_has_its_own(harness: Harness) -> None:
    tools = harness.place("tools")
    bystander = harness.place("bystander")
    own = harness.place("tools", dedicated=True)
    assert (tools.isolation, bystander.isolation, own.isolation) == ("inline", "inline", "process")
    assert tools.call("pid").result == bystander.call("pid").result != own.call("pid").result
    assert (tools.uses_process_of(bystander), tools.uses_process_of(own)) == (True, False)
    assert [tools.call("count").result, own.call("count").result, tools.call("count").result] == [1, 1, 2]
    assert len(harness.pool.runners()) == 2


def test_the_shared_runner_started_ahead_is_the_one_plugins_load_in(harness: Harness) -> None:
    """Started before the first load (the core discovers its plugins meanwhile), it boots on its own: the first load
    waits for its boot, as for a runner started by that load."""
    harness.pool.start_shared()
    ahead = harness.pool.shared_runner()
    assert ahead is not None
    harness.pool.start_shared()  # one is running: nothing more is started
    assert harness.pool.runners() == [ahead]
    tools = harness.place("tools")
    assert tools.runner is ahead
    assert tools.call("count").result == 1


def test_a_shared_runner_started_ahead_for_nothing_is_stopped(harness: Harness) -> None:
    harness.pool.start_shared()
    ahead = harness.pool.shared_runner()
    assert ahead is not None
    harness.pool.stop_unused_shared()
    assert harness.pool.runners() == []
    assert ahead.process.poll() is not None  # it exited, and was reaped
    assert not group_members(ahead.pgid)
    tools = harness.place("tools")  # a later load starts one again
    assert tools.runner is not ahead
    assert tools.call("count").result == 1


def test_a_shared_runner_started_ahead_that_died_before_any_load_blames_nobody(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It never ran plugin code: the first load goes to a fresh runner, and no plugin is failed or quarantined for it.
    The pool looks at it before its first load, rather than counting on the idle watcher to have noticed (here it
    has not: its look is taken away)."""
    monkeypatch.setattr(harness.pool, "_died_idle", lambda runner: None)
    harness.pool.start_shared()
    ahead = harness.pool.shared_runner()
    assert ahead is not None
    os.killpg(ahead.pgid, signal.SIGKILL)
    wait_for(lambda: not alive(ahead.pid), timeout=5)
    tools = harness.place("tools")
    assert tools.runner is not ahead
    assert tools.call("count").result == 1
    assert not harness.pool.quarantined
    assert not harness.losses  # nothing of a plugin was lost
    assert ahead.dead is not None
    assert not group_members(ahead.pgid)


@pytest.mark.parametrize("streamed", [False, True], ids=["load", "load_many"])
def test_a_runner_that_never_booted_fails_the_load_but_quarantines_nobody(
    make: Callable[..., Harness], streamed: bool
) -> None:
    """A runner lost before its first frame (it did not start in time, or died starting) imported nothing: the load
    sent to it fails, saying so, but its source is not moved into a runner of its own, as one that brought a booted
    runner down is."""
    harness = make(RunnerSettings(boot_timeout=0.001))  # no interpreter starts in a millisecond
    if streamed:
        placed = next(iter(harness.pool.load_many([source("tools")], SandboxLimits(5.0, 256))))
    else:
        placed = harness.pool.load(source("tools"), False, SandboxLimits(5.0, 256))
    assert placed is not None
    assert (placed.handle, placed.phase, placed.error_type) == (None, "import", "PluginCrashedError")
    assert placed.error is not None
    assert "did not start within" in placed.error
    assert not harness.pool.quarantined


def test_a_shared_runner_that_was_used_is_kept_even_with_no_plugin_left(harness: Harness) -> None:
    """Once handed to a load, a runner may be in use in a moment (a load about to send): it is never stopped."""
    harness.pool.start_shared()
    tools = harness.place("tools")
    harness.pool.release(tools)
    harness.pool.stop_unused_shared()
    assert harness.pool.runners() == [tools.runner]
    assert tools.runner.dead is None


@pytest.mark.parametrize(
    ("name", "directory", "phase", "error_type", "error"),
    [
        ("syntax_error", PROCESS, "import", "SyntaxError", "expected ':'"),
        ("broken_import", PROCESS, "import", "RuntimeError", "boom at import"),
        ("exit_import", PROCESS, "import", "SystemExit", "exit at import"),
        ("missing", PROCESS, "import", "FileNotFoundError", "missing.py"),
        ("hang_import", PROCESS, "import", "PluginTimeoutError", "call exceeded its timeout of 0.3 s"),
        ("no_class", PROCESS, "class lookup", "NoPluginClassError", "defines no subclass of plugin_health.Plugin"),
        ("bad_init", PROCESS, "instantiation", "ValueError", "constructor refused"),
    ],
    ids=["syntax-error", "exception", "SystemExit", "no-file", "sleep-at-import", "no-class", "constructor"],
)
@pytest.mark.parametrize("dedicated", [False, True], ids=["shared", "dedicated"])
def test_a_load_failure_names_its_phase_and_the_runner_lives_on(
    harness: Harness, name: str, directory: Path, phase: str, error_type: str, error: str, dedicated: bool
) -> None:
    bystander = harness.place("bystander")
    placed = harness.pool.load(source(name, directory), dedicated, SandboxLimits(0.3, 256))
    assert (placed.handle, placed.declaration, placed.phase, placed.error_type) == (None, None, phase, error_type)
    assert placed.error is not None
    assert error in placed.error
    assert harness.pool.runners() == [bystander.runner]  # a dedicated runner of a failed load is stopped
    assert bystander.call("count").result == 1  # the shared runner was not harmed
    assert (harness.losses, harness.pool.quarantined) == ([], set())


@pytest.mark.parametrize(
    ("name", "error_type", "error"),
    [
        ("crash_import", "PluginCrashedError", "its runner died (exit code 5)"),
        ("hard_hang_import", "PluginTimeoutError", "call exceeded its timeout of 0.3 s and did not stop"),
    ],
    ids=["os._exit-at-import", "hang-past-the-hard-deadline"],
)
def test_a_crash_or_hang_at_import_in_the_shared_runner_quarantines_the_source(
    harness: Harness, name: str, error_type: str, error: str
) -> None:
    directory = PROCESS if name == "crash_import" else RUNNER
    bystander = harness.place("bystander")
    tools = harness.place("tools")
    began = time.perf_counter()
    placed = harness.pool.load(source(name, directory), False, SandboxLimits(0.3, 256))
    assert time.perf_counter() - began < 0.3 + GRACE + SLACK
    assert (placed.handle, placed.phase, placed.error_type) == (None, "import", error_type)
    assert placed.error is not None
    assert error in placed.error
    assert harness.pool.quarantined == {str(directory / f"{name}.py")}
    [loss] = harness.losses
    assert (loss.culprit, loss.victims, loss.error_type) == (None, ("bystander", "tools"), error_type)
    assert (bystander.lost, tools.lost) == (True, True)
    with pytest.raises(PluginNotRunningError):
        bystander.call("count")
    # From now on the source loads in a runner of its own: it takes nothing else down with it.
    again = harness.place("bystander")
    assert harness.pool.load(source(name, directory), False, SandboxLimits(0.3, 256)).error_type == error_type
    assert harness.losses[1].victims == ()
    assert not again.lost
    assert again.call("count").result == 1


# --- calls ------------------------------------------------------------------------------------------------


def test_calls_reach_one_long_lived_instance(harness: Harness) -> None:
    tools = harness.place()
    assert [tools.call("count").result for _ in range(3)] == [1, 2, 3]
    echoed = tools.call("echo", (1, "a", [2.5]), {"k": [None, True]}).result
    assert echoed == {"args": [1, "a", [2.5]], "kwargs": {"k": [None, True]}}
    assert tools.call("health_check").result is True


@pytest.mark.parametrize(
    ("method", "args", "error_type", "error"),
    [
        ("fail", (), "ValueError", "bad value"),
        ("exit", (), "SystemExit", "2"),
        ("interrupt", (), "KeyboardInterrupt", "KeyboardInterrupt"),
        ("nonexistent", (), "AttributeError", "'Tools' object has no attribute 'nonexistent'"),
        ("__class__", (), "AttributeError", "'__class__' is not a plugin method"),
        ("silent_exit", (), "SilentExit", "SilentExit"),
        ("a_set", (), "UnserializableResultError", "a set is not a JSON value"),
        ("pickled", (), "UnserializableResultError", "Pickled"),
        ("a_dataclass", (), "UnserializableResultError", "Point"),
        ("deep", (100_000,), "UnserializableResultError", "cannot be sent as JSON"),
    ],
    ids=["exception", "SystemExit", "KeyboardInterrupt", "no-method", "private", "str-raises-SystemExit",
         "set-result", "reduce-os._exit-result", "dataclass-result", "nested-100000-deep"],
)
def test_a_failed_call_is_reported_and_the_runner_lives_on(
    harness: Harness, method: str, args: tuple[object, ...], error_type: str, error: str
) -> None:
    tools = harness.place()
    pid = tools.call("pid").result
    assert tools.call("count").result == 1
    assert_failed(tools.call(method, args), error_type, error)
    assert tools.call("pid").result == pid
    assert tools.call("count").result == 2  # the same instance, its state kept
    assert harness.losses == []


def test_unencodable_arguments_are_refused_before_sending(harness: Harness) -> None:
    tools = harness.place()
    assert_failed(tools.call("echo", (threading.Lock(),)), "UnencodableArgumentsError", "cannot be sent")
    assert tools.call("count").result == 1  # nothing reached the runner


def test_a_result_larger_than_a_message_may_be_is_refused(make: Callable[..., Harness]) -> None:
    harness = make(RunnerSettings(max_message=64 * 1024))
    tools = harness.place()
    assert_failed(tools.call("big", (100_000,)), "ResultTooLargeError", "larger than the limit of 65536")
    assert tools.call("big", (1000,)).result == "x" * 1000
    assert tools.call("count").result == 1


# --- timeouts -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["sleep", "spin"], ids=["sleep", "except-Exception-loop"])
def test_a_timeout_the_runner_can_stop_leaves_the_runner_alive(harness: Harness, method: str) -> None:
    tools = harness.place()
    pid = tools.call("pid").result
    result, elapsed = timed(lambda: tools.call(method, (10,) if method == "sleep" else (), timeout=0.2))
    assert_failed(result, "PluginTimeoutError", "call exceeded its timeout of 0.2 s")
    assert 0.2 <= elapsed < 0.2 + SLACK
    assert tools.call("pid").result == pid
    assert harness.losses == []


@pytest.mark.parametrize("method", ["disarm_and_spin", "spin_in_c"], ids=["SIGALRM-disarmed", "hang-in-C"])
def test_a_call_past_its_hard_deadline_kills_its_runner_and_is_blamed(harness: Harness, method: str) -> None:
    bystander = harness.place("bystander")
    tools = harness.place("tools")
    other = harness.place("bystander", dedicated=True)  # another runner: untouched
    runner = tools.runner
    result, elapsed = timed(lambda: tools.call(method, timeout=0.3))
    assert_failed(result, "PluginTimeoutError", "call exceeded its timeout of 0.3 s and did not stop")
    assert 0.3 + GRACE <= elapsed < 0.3 + GRACE + SLACK, elapsed  # the hard deadline, not the runner, ended it
    [loss] = harness.losses
    assert (loss.culprit, loss.victims, loss.error_type) == ("tools", ("bystander",), "PluginTimeoutError")
    wait_for(lambda: not alive(runner.pid) and group_members(runner.pgid) == [], timeout=2)
    assert (tools.lost, bystander.lost, other.lost) == (True, True, False)
    for handle in (tools, bystander):
        with pytest.raises(PluginNotRunningError):
            handle.call("count")
    assert other.call("count").result == 1
    # The culprit is quarantined: its next load gets a runner of its own; the others a fresh shared one.
    assert harness.pool.quarantined == {str(RUNNER / "tools.py")}
    assert harness.place("tools").isolation == "process"
    again = harness.place("bystander")
    assert again.isolation == "inline"
    assert again.runner is not runner
    assert again.call("count").result == 1


def test_an_inherited_health_check_is_no_pass_when_its_runner_cannot_answer(harness: Harness, tmp_path: Path) -> None:
    """``Plugin``'s own ``health_check`` is answered without a call, but still by the runner: a runner that another
    plugin's thread wedges in C (holding the GIL) answers nothing, and the check is a timeout, never a pass."""
    (tmp_path / "trivial.py").write_text("from plugin_health import Plugin\nclass P(Plugin):\n    pass\n")
    (tmp_path / "wedger.py").write_text(textwrap.dedent("""
        import threading, time
        from plugin_health import Plugin, tool

        class P(Plugin):
            @tool
            def wedge(self):
                threading.Thread(target=lambda: (time.sleep(0.2), sum(range(10**12))), daemon=True).start()
    """))
    trivial = harness.place("trivial", directory=tmp_path)
    assert trivial.call("health_check").ok  # answered at once while the runner is free
    wedger = harness.place("wedger", directory=tmp_path)
    assert wedger.call("wedge").ok
    time.sleep(0.5)  # the thread now holds the GIL in C
    result, elapsed = timed(lambda: trivial.call("health_check", timeout=0.3))
    assert_failed(result, "PluginTimeoutError")
    assert elapsed >= 0.3 + GRACE
    wait_for(lambda: not alive(trivial.runner.pid), timeout=2)


def test_an_exception_whose_str_never_returns_is_a_timeout(harness: Harness) -> None:
    tools = harness.place()
    pid = tools.call("pid").result
    result, elapsed = timed(lambda: tools.call("endless_str", timeout=0.3))
    assert_failed(result, "PluginTimeoutError", "call exceeded its timeout of 0.3 s")
    assert result.error == "call exceeded its timeout of 0.3 s"  # the call's timeout, not its guard's
    assert elapsed < 0.3 + GRACE, elapsed  # stopped in the runner, before the hard deadline
    assert tools.call("pid").result == pid
    assert harness.losses == []


# --- crashes and a broken protocol --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "death"),
    [
        ("segfault", "killed by SIGSEGV"),
        ("hard_exit", "exit code 3"),
        ("kill9", "killed by SIGKILL"),
        ("kill_parent", "killed by SIGKILL"),
    ],
    ids=["segfault", "os._exit", "kill-9-itself", "kill-9-its-parent"],
)
def test_a_crash_is_detected_at_once_and_names_how_the_runner_died(
    harness: Harness, method: str, death: str
) -> None:
    bystander = harness.place("bystander")
    tools = harness.place()
    runner = tools.runner
    result, elapsed = timed(lambda: tools.call(method, timeout=5.0))
    assert_failed(result, "PluginCrashedError", f"its runner died ({death})")
    assert elapsed < 1.0, elapsed  # seen when it happens, not at the call's timeout
    assert os.getpid() > 0  # still here: nothing of it reached the core
    [loss] = harness.losses
    assert (loss.culprit, loss.victims, loss.error_type) == ("tools", ("bystander",), "PluginCrashedError")
    wait_for(lambda: not alive(runner.pid) and group_members(runner.pgid) == [], timeout=2)
    assert bystander.lost
    assert harness.place("tools").isolation == "process"


@pytest.mark.parametrize(
    ("data", "why"),
    [
        ("ff" * 16, "MessageTooLargeError"),
        ("00000004" + "01020304", "WireError"),
        # Caught by the answer's id when the forged frame arrives alone, as bytes nobody asked for when the real
        # answer follows it in the same read: either way a broken runner.
        ("00000003" + b"[1]".hex(), "its runner broke the protocol"),
        # A marker of compiling ahead is read only while a load marked ``ahead`` is awaited.
        ("0000000f" + b'{"compiling":1}'.hex(), "its runner broke the protocol"),
    ],
    ids=["huge-length", "not-JSON", "not-an-object", "a-marker-of-compiling-ahead"],
)
def test_garbage_on_the_runners_line_is_a_broken_runner(harness: Harness, data: str, why: str) -> None:
    tools = harness.place()
    runner = tools.runner
    result, elapsed = timed(lambda: tools.call("garble", (data,), timeout=5.0))
    assert_failed(result, "PluginCrashedError", "its runner broke the protocol")
    assert result.error is not None
    assert why in result.error
    assert elapsed < 1.0
    assert [(loss.culprit, loss.error_type) for loss in harness.losses] == [("tools", "PluginCrashedError")]
    assert not alive(runner.pid)
    assert harness.place("bystander").call("count").result == 1  # the core goes on


def test_a_plugin_closing_the_runners_line_is_a_lost_runner(harness: Harness) -> None:
    tools = harness.place()
    result, elapsed = timed(lambda: tools.call("close_line", timeout=5.0))
    assert_failed(result, "PluginCrashedError", "its runner died")
    assert elapsed < 1.0
    assert [loss.culprit for loss in harness.losses] == ["tools"]


# --- what a runner sees -------------------------------------------------------------------------------------


def test_a_runner_gets_a_scrubbed_environment(harness: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PLUGIN_HEALTH_ADMIN_TOKEN", "s3cret")
    monkeypatch.setenv("RUNNER_TEST_VISIBLE", "yes")
    tools = harness.place()
    assert tools.call("environ", ("PLUGIN_HEALTH_ADMIN_TOKEN",)).result is None
    assert tools.call("environ", ("RUNNER_TEST_VISIBLE",)).result == "yes"
    assert scrubbed_environment({"PLUGIN_HEALTH_STORE": "x", "GUNICORN_CMD_ARGS": "y",
                                 "PROMETHEUS_MULTIPROC_DIR": "z", "HOME": "/h"}) == {"HOME": "/h"}


def test_a_runner_loads_none_of_the_services_libraries(harness: Harness) -> None:
    modules = set(harness.place().call("modules").result)
    assert "plugin_health" in modules
    assert modules.isdisjoint({"flask", "redis", "apispec", "prometheus_client", "werkzeug", "marshmallow"})


# --- the actor ----------------------------------------------------------------------------------------------


def test_calls_from_many_threads_run_one_at_a_time(harness: Harness) -> None:
    tools = harness.place()
    results: list[int] = []

    def worker() -> None:
        for _ in range(25):
            results.append(tools.call("count").result)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert sorted(results) == list(range(1, 101))


def test_past_the_queue_limit_a_call_is_refused_at_once(make: Callable[..., Harness]) -> None:
    tools = make(RunnerSettings(queue_limit=2)).place()
    start = threading.Barrier(6)
    outcomes: list[tuple[str, float, object]] = []

    def caller() -> None:
        start.wait(5)
        began = time.perf_counter()
        try:
            result = tools.call("sleep", (0.5,))
            outcomes.append(("ran", time.perf_counter() - began, result.result))
        except PluginBusyError as err:
            outcomes.append(("busy", time.perf_counter() - began, str(err)))

    threads = [threading.Thread(target=caller) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    refused = [elapsed for kind, elapsed, _ in outcomes if kind == "busy"]
    ran = sorted(value for kind, _, value in outcomes if kind == "ran")  # [began, ended] in the runner
    assert (len(refused), len(ran)) == (3, 3), outcomes  # one runs, two wait, the rest are refused
    assert max(refused) < 0.45  # never after the call that runs (0.5 s), even on a machine that pauses a while
    assert all(earlier[1] <= later[0] for earlier, later in itertools.pairwise(ran))  # one at a time, never overlapping


def test_a_call_whose_caller_cannot_wait_its_turn_is_refused_at_once_unrun(harness: Harness) -> None:
    tools = harness.place()
    for _ in range(3):
        tools.call("sleep", (0.3,))  # its calls lately take 0.3 s each
    sleeper = threading.Thread(target=lambda: tools.call("sleep", (0.3,)))
    sleeper.start()
    wait_for(tools._actor.locked, timeout=2)
    assert tools.call("count", give_up_at=time.monotonic() + 2).result == 1  # room to wait: it waits its turn
    sleeper = threading.Thread(target=lambda: tools.call("sleep", (0.3,)))
    sleeper.start()
    wait_for(tools._actor.locked, timeout=2)
    began = time.perf_counter()
    # The call ahead is likely to take about 0.3 s: a caller that waits 50 ms is told at once.
    with pytest.raises(PluginBusyError):
        tools.call("count", give_up_at=time.monotonic() + 0.05)
    assert time.perf_counter() - began < 0.1
    sleeper.join(5)
    assert tools.call("count").result == 2  # the refused call never ran


def test_a_call_no_longer_awaited_when_its_turn_comes_is_dropped_unrun(harness: Harness) -> None:
    tools = harness.place()
    with tools._actor:  # its turn comes late (as when callers jump the queue): the caller has given up by then
        tools._waiting += 1
        caller = threading.Thread(target=lambda: outcome.append(_try(lambda: tools.call(
            "count", give_up_at=time.monotonic() + 0.1))))
        outcome: list[object] = []
        tools._waiting -= 1
        caller.start()
        time.sleep(0.2)
    caller.join(5)
    assert isinstance(outcome[0], PluginBusyError)  # refused while its caller still listens
    assert tools.call("count").result == 1  # the dropped call never ran


def _try(call: Callable[[], object]) -> object:
    try:
        return call()
    except Exception as err:  # noqa: BLE001 - the test looks at what was raised
        return err


# --- memory -------------------------------------------------------------------------------------------------


def test_a_plugin_that_keeps_memory_past_its_limit_gets_its_runner_recycled(harness: Harness) -> None:
    bystander = harness.place("bystander")
    tools = harness.place(memory_limit_mb=64)
    runner = tools.runner
    results = []
    for _ in range(5):
        results.append(tools.call("keep_20_mib"))
        if not results[-1].ok:
            break
    assert [r.result for r in results[:-1]] == list(range(1, len(results)))
    assert_failed(results[-1], "PluginMemoryError", "past its memory limit of 64 MiB")
    [loss] = harness.losses
    assert (loss.culprit, loss.victims, loss.error_type) == ("tools", ("bystander",), "PluginMemoryError")
    assert (tools.lost, bystander.lost) == (True, True)
    assert not alive(runner.pid)
    again = harness.place(memory_limit_mb=64)
    assert again.isolation == "process"
    assert again.call("keep_20_mib").result == 1  # a fresh runner: its memory back


def test_a_huge_allocation_is_stopped_and_the_runner_survives(harness: Harness) -> None:
    tools = harness.place(memory_limit_mb=256)
    pid = tools.call("pid").result
    assert_failed(tools.call("allocate", (2048,)), "PluginMemoryError", "call exceeded its memory limit of 256 MiB")
    assert tools.call("pid").result == pid
    assert tools.call("allocate", (100,)).result == 100 * MIB
    assert harness.losses == []


def test_without_a_memory_limit_a_large_allocation_works(harness: Harness) -> None:
    assert harness.place(memory_limit_mb=None).call("allocate", (300,)).result == 300 * MIB


# --- releasing and closing ----------------------------------------------------------------------------------


def test_closing_a_handle_forgets_its_instance_and_stops_a_runner_of_its_own(harness: Harness) -> None:
    shared = harness.place("tools")
    bystander = harness.place("bystander")
    own = harness.place("tools", dedicated=True)
    own_runner = own.runner
    shared.close()
    own.close()
    for handle in (shared, own):
        with pytest.raises(PluginNotRunningError):
            handle.call("count")
    assert not alive(own_runner.pid)
    assert bystander.call("count").result == 1
    assert harness.pool.runners() == [bystander.runner]
    assert harness.losses == []


def test_close_leaves_no_process_behind(harness: Harness) -> None:
    forker = harness.place("forker")
    harness.place("bystander")
    own = harness.place("tools", dedicated=True)
    assert forker.call("start").ok
    child = forker.call("child_pid").result
    assert alive(child)
    runners = harness.pool.runners()
    pgids = {runner.pgid for runner in runners}
    members = {pid for pgid in pgids for pid in group_members(pgid)}
    assert {child, own.call("pid").result, *(runner.pid for runner in runners)} <= members
    harness.pool.close()
    wait_for(lambda: not any(alive(pid) for pid in members), timeout=5)
    assert [pid for pgid in pgids for pid in group_members(pgid)] == []
    for runner in runners:  # the guards, the core's children, are reaped too
        assert not Path(f"/proc/{runner.pid}").exists()
    harness.pool.close()  # idempotent


def test_close_during_a_hung_call_ends_it(harness: Harness) -> None:
    tools = harness.place()
    results: list[PluginSandboxResult] = []
    caller = threading.Thread(target=lambda: results.append(tools.call("sleep", (30,), timeout=30)))
    caller.start()
    wait_for(tools._actor.locked, timeout=2)
    time.sleep(0.05)  # the request is on its way
    began = time.perf_counter()
    harness.pool.close()
    assert time.perf_counter() - began < 0.3  # the call in flight is not waited for: its runner is killed at once
    caller.join(5)
    assert_failed(results[0], "PluginCrashedError")
    assert not alive(tools.runner.pid)


def test_a_runner_exits_when_the_core_closes_its_line(harness: Harness) -> None:
    tools = harness.place()
    serving = tools.call("pid").result
    tools.runner.sock.shutdown(socket.SHUT_RDWR)
    wait_for(lambda: tools.runner.process.poll() is not None, timeout=5)
    assert tools.runner.process.returncode == 0
    assert not alive(serving)


@pytest.mark.parametrize("how", ["os._exit", "SIGKILL"])
def test_runners_die_with_their_core(tmp_path: Path, how: str) -> None:
    script = textwrap.dedent(f"""
        import os, signal
        from pathlib import Path
        from plugin_health.loader.sources import PluginSource
        from plugin_health.runtime.runners import RunnerPool
        from plugin_health.sandbox import SandboxLimits

        path = Path({str(RUNNER / "tools.py")!r})
        pool = RunnerPool()
        handle = pool.load(PluginSource("tools", str(path), path=path), False, SandboxLimits(5.0, 256)).handle
        print(handle.runner.pid, handle.call("pid").result, flush=True)
        if {how!r} == "SIGKILL":
            os.kill(os.getpid(), signal.SIGKILL)
        os._exit(0)  # no cleanup at all: the runner must notice and go by itself
    """)
    (tmp_path / "core.py").write_text(script)
    out = subprocess.run([sys.executable, str(tmp_path / "core.py")], capture_output=True, text=True, timeout=30,
                         check=False)
    assert out.returncode == (0 if how == "os._exit" else -signal.SIGKILL), out.stderr
    guard, serving = map(int, out.stdout.split())
    wait_for(lambda: not alive(guard) and not alive(serving), timeout=5)


def test_a_runner_that_dies_right_after_a_call_is_blamed_on_that_call(harness: Harness) -> None:
    tools = harness.place()
    bystander = harness.place("bystander")
    runner = tools.runner
    # The answer can win the race against the guard's death: either way, the death is this call's.
    result = tools.call("kill_parent_and_return", timeout=5.0)
    wait_for(lambda: harness.losses, timeout=2)
    assert [(loss.culprit, loss.victims) for loss in harness.losses] == [("tools", ("bystander",))]
    if result.ok:
        assert "answered" in harness.losses[0].cause
    assert tools.lost
    assert bystander.lost
    wait_for(lambda: not alive(runner.pid), timeout=2)


def test_a_runner_that_dies_while_idle_blames_nobody(harness: Harness) -> None:
    tools = harness.place()
    bystander = harness.place("bystander")
    assert tools.call("exit_later", (0.5,)).result == "scheduled"
    wait_for(lambda: harness.losses, timeout=3)
    loss = harness.losses[0]
    assert loss.culprit is None  # half a second after the last answer: nobody's call was in flight
    assert set(loss.victims) == {"tools", "bystander"}
    assert "while idle" in loss.cause
    assert tools.lost
    assert bystander.lost


@pytest.mark.parametrize("exponent", [25, 300])
def test_a_large_integer_arrives_exactly_and_its_runner_lives_on(harness: Harness, exponent: int) -> None:
    # JSON has no size for integers: one past 64 bits is the plugin's value to the last digit, not a float, and
    # never mistaken for a broken runner.
    tools = harness.place()
    bystander = harness.place("bystander")
    result = tools.call("power", (exponent,))
    assert (result.ok, result.result) == (True, 10**exponent)
    assert type(result.result) is int
    assert harness.losses == []
    assert bystander.call("count").result == 1


def test_an_integer_too_long_for_json_fails_the_call_not_the_runner(harness: Harness) -> None:
    tools = harness.place()
    assert_failed(tools.call("power", (5000,)), "UnserializableResultError", "cannot be sent as JSON")
    assert harness.losses == []
    assert tools.call("count").result == 1


def test_a_call_with_no_timeout_of_its_own_still_has_a_deadline(make: Callable[..., Harness]) -> None:
    harness = make(RunnerSettings(longest=0.3))
    tools = harness.place(timeout=None, memory_limit_mb=None)
    result, elapsed = timed(lambda: tools.call("disarm_and_spin"))
    assert_failed(result, "PluginTimeoutError", "timeout of 0.3 s")
    assert elapsed < 0.3 + 0.25 + SLACK


def test_a_call_waiting_on_a_runner_being_recycled_for_kept_memory_is_not_blamed(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The runner of a plugin that kept memory past its limit is killed before its turn is given to anyone else: a
    bystander's call waiting for that turn must not land in the dying runner and be blamed for the loss (the hostile
    ``memory_leak`` case, inline, saw its canary quarantined for the leaker's memory now and then)."""
    bystander = harness.place("bystander")
    tools = harness.place(memory_limit_mb=64)
    runner = tools.runner
    for _ in range(3):
        assert tools.call("keep_20_mib").ok  # 60 MiB kept: the next call goes past 64
    killing = threading.Event()
    kill = type(runner).kill

    def slow_kill(self: object, why: str) -> int | None:  # the killer's thread preempted just before the kill
        if self is runner and "kept" in why:
            killing.set()
            time.sleep(0.3)
        return kill(self, why)  # type: ignore[arg-type]

    monkeypatch.setattr(type(runner), "kill", slow_kill)
    outcomes: dict[str, object] = {}
    leaker = threading.Thread(target=lambda: outcomes.update(tools=_try(lambda: tools.call("keep_20_mib"))))
    leaker.start()
    assert killing.wait(10)
    outcomes["bystander"] = _try(lambda: bystander.call("count"))
    leaker.join(10)
    assert [(loss.culprit, loss.error_type) for loss in harness.losses] == [("tools", "PluginMemoryError")]
    assert isinstance(outcomes["tools"], PluginSandboxResult)
    assert_failed(outcomes["tools"], "PluginMemoryError", "past its memory limit of 64 MiB")
    assert isinstance(outcomes["bystander"], PluginNotRunningError), outcomes["bystander"]


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the sender's end, on purpose
def test_loads_sent_ahead_never_wait_on_a_sender_that_died_without_a_word(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The thread that sends loads ahead hands over every outcome, or the exception that stopped it; one that ends
    otherwise (a ``BaseException`` it does not catch) must not leave the loader waiting for ever."""

    def dies(*args: object) -> None:
        raise SystemExit(0)  # ends a thread without a word

    monkeypatch.setattr(RunnerPool, "_send_loads", dies)
    outcome: list[object] = []

    def load() -> None:
        outcome.append(_try(lambda: list(harness.pool.load_many([source("tools")]))))

    loader = threading.Thread(target=load, daemon=True)
    loader.start()
    loader.join(10)
    assert not loader.is_alive(), "load_many still waits on a sender that is gone"
    assert isinstance(outcome[0], RuntimeError), outcome


def test_the_text_of_a_source_is_kept_only_until_its_load_is_answered() -> None:
    """``load_many`` sends each source's text (as read to place it) with its load: kept for a load sent again to a new
    runner (the first never ran it), dropped once its load is answered, so that 10,000 large plugins are never held
    at once; whether a source runs apart is asked once."""
    from plugin_health.runtime.runners import _Placing

    asked: list[str] = []

    def apart(source: PluginSource) -> tuple[bool, bytes | None]:
        asked.append(source.name)
        return source.name == "alone", f"text of {source.name}".encode()

    placing = _Placing(apart)
    shared, alone = PluginSource("shared", "shared.py"), PluginSource("alone", "alone.py")
    assert (placing.apart((shared, None)), placing.apart((alone, None)), placing.apart((shared, None))) == (
        False, True, False)
    assert asked == ["shared", "alone"]
    assert placing.text(shared) == b"text of shared"  # sent, and again to a new runner if the first is lost
    assert placing.text(shared) == b"text of shared"
    placing.loaded(shared)
    assert placing.text(shared) is None
    assert placing.apart((shared, None)) is False
    assert asked == ["shared", "alone"]


def test_load_many_imports_each_text_it_is_given_and_drops_it_once_answered(
    harness: Harness, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Streamed loads carry the text ``apart`` gave for each source (the runner imports it, not the file), and each
    text is let go as its load is answered."""
    from plugin_health.runtime import runners

    sources = []
    for i in range(5):
        path = tmp_path / f"p{i}.py"
        path.write_text("raise RuntimeError('the file, not the text')\n")
        sources.append(PluginSource(f"p{i}", str(path), path=path))
    dropped: list[str] = []
    loaded = runners._Placing.loaded

    def dropping(self: runners._Placing, source: PluginSource) -> None:
        dropped.append(source.name)
        loaded(self, source)

    monkeypatch.setattr(runners._Placing, "loaded", dropping)
    text = b"from plugin_health import Plugin\nclass P(Plugin):\n    version = '3.0'\n"
    placed = list(harness.pool.load_many(sources, SandboxLimits(5.0, 256), apart=lambda source: (False, text)))
    assert [p.declaration["version"] if p and p.declaration else p for p in placed] == ["3.0"] * 5
    assert dropped == [source.name for source in sources]


def test_streamed_loads_read_the_answers_that_arrive_while_they_wait_to_send_more(
    harness: Harness, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Loads are sent ahead, many at a time: a sender that waits for room on the socket while the runner, answering,
    waits for room on its side would hold both until the deadline (the runner then killed, its plugins failed).
    While it waits to send, the sender reads what has arrived. Here the window is large enough, and the requests
    and answers big enough, that both sides' buffers fill long before the last request is sent."""
    from plugin_health.runtime import runners

    monkeypatch.setattr(runners, "PIPELINE", 3000)
    text = (b"from plugin_health import Plugin\nclass P(Plugin):\n    version = '3.0'\n"
            b"    critical = False  # " + b"x" * 1000 + b"\n")
    sources = [PluginSource(f"p{i:04d}_{'y' * 60}", str(tmp_path / f"p{i}.py"), path=tmp_path / f"p{i}.py")
               for i in range(3000)]
    began = time.monotonic()
    placed = list(harness.pool.load_many(sources, SandboxLimits(3.0, 256), apart=lambda source: (False, text)))
    assert [p.declaration["version"] if p and p.declaration else p for p in placed] == ["3.0"] * 3000
    assert harness.losses == []
    assert time.monotonic() - began < 3.0  # not held until the first deadline


# --- loads compiled ahead ---------------------------------------------------------------------------------------

#: Plugin code that makes the shared runner die compiling ahead any text holding ``BOOM`` (``Runner.compile_ahead``
#: calls the runner's ``_compile``, which a plugin sharing the runner can replace, as it can anything there).
SABOTEUR = """
import os
import sys
from plugin_health import Plugin

runner = sys.modules["__main__"]
real = runner._compile

def compile_or_die(text, *args, **kwargs):
    if b"BOOM" in text:
        os._exit(3)
    return real(text, *args, **kwargs)

runner._compile = compile_or_die

class P(Plugin):
    pass
"""


def streamed(harness: Harness, tmp_path: Path, texts: dict[str, str]) -> list[Placed | None]:
    """``load_many`` of one source per entry of ``texts`` (name: source), each sent with its text."""
    sources = []
    for name, text in texts.items():
        path = tmp_path / f"{name}.py"
        path.write_text(text)
        sources.append(PluginSource(name, str(path), path=path))
    return list(harness.pool.load_many(sources, SandboxLimits(5.0, 256),
                                       apart=lambda source: (False, texts[source.name].encode())))


def test_a_runner_lost_while_compiling_loads_ahead_blames_none_of_them(harness: Harness, tmp_path: Path) -> None:
    """The runner compiles the loads that arrived together before the first one's plugin code runs: a runner lost
    then was not lost in any of their code. None is blamed (the first in flight would have been, wrongly, and
    quarantined), and they load again in a fresh runner, compiled as imported: there they all load."""
    [saboteur] = streamed(harness, tmp_path, {"saboteur": SABOTEUR})
    assert saboteur is not None
    assert isinstance(saboteur.handle, RunnerHandle)
    saboteur.handle.name = "saboteur"
    plain = "from plugin_health import Plugin\nclass P(Plugin):\n    pass\n"
    placed = streamed(harness, tmp_path, {"a": plain, "b": plain, "boom": plain + "# BOOM\n", "c": plain})
    assert [(p.phase, p.error_type) for p in placed if p is not None] == [(None, None)] * 4
    assert all(isinstance(p.handle, RunnerHandle) and not p.handle.lost for p in placed if p is not None)
    assert harness.pool.quarantined == set()
    [loss] = harness.losses
    assert (loss.culprit, loss.victims, loss.error_type) == (None, ("saboteur",), "PluginCrashedError")
    assert "compiling loads ahead" in loss.cause
    assert saboteur.handle.lost


def test_a_plugin_that_brings_the_runner_down_at_import_after_compiling_ahead_is_blamed(
    harness: Harness, tmp_path: Path
) -> None:
    """Once compiling ahead has ended (the core was told), a runner lost is lost in plugin code again: the load in
    flight is blamed and quarantined, the loads before it stay loaded, and those after it load in a fresh runner."""
    plain = "from plugin_health import Plugin\nclass P(Plugin):\n    pass\n"
    placed = streamed(harness, tmp_path, {"a": plain, "crash": "import os\nos._exit(5)\n", "c": plain})
    a, crash, c = placed
    assert a is not None
    assert isinstance(a.handle, RunnerHandle)
    assert crash is not None
    assert (crash.handle, crash.phase, crash.error_type) == (None, "import", "PluginCrashedError")
    assert c is not None
    assert isinstance(c.handle, RunnerHandle)
    assert not c.handle.lost
    assert harness.pool.quarantined == {str(tmp_path / "crash.py")}
    assert a.handle.lost  # it shared the runner that was lost


@pytest.mark.parametrize("marker", ['{"compiling":1}', '{"compiled":1}', '{"ok":true}'])
def test_a_marker_of_compiling_ahead_a_plugin_forges_breaks_the_protocol_and_blames_it(
    harness: Harness, tmp_path: Path, marker: str
) -> None:
    """A plugin that writes, as it is imported, what looks like a marker of compiling ahead (for no load in flight),
    or a frame of one member: the runner broke the protocol, in that plugin's import, which is blamed."""
    frame = len(marker).to_bytes(4, "big") + marker.encode()
    forger = ("import os\nfrom plugin_health import Plugin\n"
              "argv = open('/proc/self/cmdline', 'rb').read().split(b'\\0')\n"
              f"os.write(int(argv[argv.index(b'--fd') + 1]), {frame!r})\n"
              "class P(Plugin):\n    pass\n")
    plain = "from plugin_health import Plugin\nclass P(Plugin):\n    pass\n"
    a, forged, c = streamed(harness, tmp_path, {"a": plain, "forger": forger, "c": plain})
    assert forged is not None
    assert (forged.handle, forged.phase, forged.error_type) == (None, "import", "PluginCrashedError")
    assert forged.error is not None
    assert "broke the protocol" in forged.error
    assert harness.pool.quarantined == {str(tmp_path / "forger.py")}
    assert a is not None
    assert c is not None
    assert isinstance(c.handle, RunnerHandle)
    assert not c.handle.lost


@pytest.mark.parametrize("check", [False, True], ids=["no-check", "check"])
def test_streamed_bring_ups_tell_each_phase_whether_it_ran_plugin_code_or_not(
    harness: Harness, tmp_path: Path, check: bool
) -> None:
    """Plugins brought up with their loads: one that overrides none of the lifecycle methods comes up on the answers
    riding in its load's frame (``Plugin``'s own no-ops: passed, in no time, their results theirs); one that overrides
    ``start`` has that phase's own outcome, its neighbours' the no-ops'; and one whose ``initialize`` returns False
    goes no further."""
    texts = {
        "plain": b"from plugin_health import Plugin\nclass P(Plugin):\n    pass\n",
        "starts": b"from plugin_health import Plugin\nclass P(Plugin):\n    def start(self):\n        return 7\n",
        "refuses": (b"from plugin_health import Plugin\nclass P(Plugin):\n"
                    b"    def initialize(self, context):\n        return False\n"),
    }
    sources = [PluginSource(name, str(tmp_path / f"{name}.py"), path=tmp_path / f"{name}.py") for name in texts]
    up = {"config": {}, "timeout": 5.0, "check": check}
    placed = list(harness.pool.load_many(sources, SandboxLimits(5.0, 256), [up] * 3,
                                         apart=lambda source: (False, texts[source.name])))
    outcomes = {p.declaration["name"]: [(r.ok, r.result, r.error_type) for r in p.up]
                for p in placed if p is not None and p.declaration is not None}
    no_op_check = [(True, True, None)] if check else []
    assert outcomes == {
        "plain": [(True, None, None), (True, None, None), *no_op_check],
        "starts": [(True, None, None), (True, 7, None), *no_op_check],
        "refuses": [(True, False, None)],
    }
    plain = next(p for p in placed if p is not None and p.declaration and p.declaration["name"] == "plain")
    assert [r.duration_ms for r in plain.up] == [0.0] * (3 if check else 2)
    assert all(p is not None and p.up_lost is None for p in placed)
    assert harness.losses == []


def test_streamed_loads_tell_whether_the_next_outcome_has_arrived(harness: Harness, tmp_path: Path) -> None:
    """``load_many``'s outcomes say whether the next one has arrived (``ready``), so that the loader can take those that
    arrived together in one step: once the runner has answered every load, each is there without a wait; before the
    first answer can have come, none is."""
    text = b"from plugin_health import Plugin\nclass P(Plugin):\n    pass\n"
    sources = [PluginSource(f"p{i}", str(tmp_path / f"p{i}.py"), path=tmp_path / f"p{i}.py") for i in range(40)]
    harness.pool.start_shared()
    streamed = harness.pool.load_many(sources, SandboxLimits(5.0, 256), apart=lambda source: (False, text))
    assert streamed.ready() is False  # type: ignore[attr-defined]  # (the runner cannot have answered yet)
    first = next(streamed)
    assert first is not None
    assert first.declaration is not None
    streamed._sender.join(10)  # type: ignore[attr-defined]  # every answer read and handed over
    rest = []
    while streamed.ready():  # type: ignore[attr-defined]
        rest.append(next(streamed))
    assert len(rest) == 39
    assert [p.declaration["name"] for p in rest if p is not None and p.declaration] == [f"p{i}" for i in range(1, 40)]
    assert streamed.ready() is False  # type: ignore[attr-defined]
    with pytest.raises(StopIteration):
        next(streamed)


@pytest.mark.parametrize("text", ["/srv/plugins/p.py", "plugins/p.py", "p.py", "/srv/../plugins/p.py",
                                  "../p.py", "/srv/..plugins/p.py", "//srv/p.py", "/", "/srv/plugins/pkg/__init__.py"])
def test_a_source_path_is_sent_absolute_as_abspath_makes_it(text: str) -> None:
    """A load names its source by the text ``os.path.abspath`` gives (the runner shares the core's working
    directory), whether the path was absolute already or not, with ``..`` or not."""
    assert absolute(Path(text)) == os.path.abspath(Path(text))
