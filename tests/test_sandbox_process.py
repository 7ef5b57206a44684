"""Process sandbox: one long-lived child per plugin; faults are reported, and the child replaced."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from plugin_health.loader.sources import PluginSource
from plugin_health.sandbox import PluginSandboxResult, ProcessPlugin, SandboxLimits

PLUGINS = Path(__file__).parent / "plugins" / "process"
MIB = 1024 * 1024


def source(name: str, directory: Path = PLUGINS) -> PluginSource:
    path = directory / f"{name}.py"
    return PluginSource(name, str(path), path=path)


def gone(pid: int) -> bool:
    """Whether the process has exited and been reaped (no /proc entry; a zombie would keep one)."""
    return not Path(f"/proc/{pid}").exists()


def wait_until(condition: Callable[[], bool], seconds: float = 3.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return condition()


@pytest.fixture
def make() -> Iterator[Callable[..., ProcessPlugin]]:
    made: list[ProcessPlugin] = []

    def factory(name: str = "faulty", timeout: float | None = 2.0, memory_limit_mb: int | None = 256,
                directory: Path = PLUGINS) -> ProcessPlugin:
        plugin = ProcessPlugin(source(name, directory), SandboxLimits(timeout, memory_limit_mb))
        made.append(plugin)
        return plugin

    yield factory
    for plugin in made:
        plugin.close()


@pytest.fixture
def faulty(make: Callable[..., ProcessPlugin]) -> ProcessPlugin:
    plugin = make()
    assert plugin.start().ok
    return plugin


def assert_failed(result: PluginSandboxResult, error_type: str, error: str) -> None:
    assert (result.ok, result.result, result.error_type) == (False, None, error_type)
    assert result.error is not None
    assert error in result.error


# --- start ------------------------------------------------------------------------------------------


def test_start_returns_the_plugin_metadata(make: Callable[..., ProcessPlugin]) -> None:
    plugin = make()
    result = plugin.start()
    assert result.ok, result
    assert result.result == {
        "class_name": "Faulty",
        "name": "faulty",
        "version": "1.2.0",
        "requires": ["geo>=2.0"],
        "critical": True,
        "timeout": 5.0,
        "memory_limit_mb": 256,
        "isolation": "process",
        "tools": ["allocate", "count", "echo", "exit", "fail", "hard_exit", "interrupt", "kill9", "own_class",
                  "pid", "segfault", "sleep", "spin", "spin_in_c", "unpicklable"],
    }
    assert plugin.alive
    assert plugin.pid is not None
    assert plugin.pid != os.getpid()
    assert plugin.start().result == result.result  # idempotent: the same child
    assert plugin.call("pid").result == plugin.pid


@pytest.mark.parametrize(
    ("name", "error_type", "error"),
    [
        ("broken_import", "RuntimeError", "boom at import"),
        ("syntax_error", "SyntaxError", "expected ':'"),
        ("no_class", "NoPluginClassError", "defines no subclass of plugin_health.Plugin"),
        ("bad_init", "ValueError", "constructor refused"),
        ("exit_import", "SystemExit", "exit at import"),
        ("crash_import", "PluginCrashedError", "died while loading (exit code 5)"),
        ("hang_import", "PluginTimeoutError", "did not finish loading within 0.5 s"),
        ("missing", "FileNotFoundError", "missing.py"),
    ],
    ids=["exception", "SyntaxError", "no-class", "constructor", "SystemExit", "crash", "hang", "no-file"],
)
def test_start_reports_what_went_wrong_loading(
    make: Callable[..., ProcessPlugin], name: str, error_type: str, error: str
) -> None:
    plugin = make(name, timeout=0.5)
    assert_failed(plugin.start(), error_type, error)
    assert not plugin.alive
    assert_failed(plugin.call("health_check"), error_type, error)  # a call retries the load, and says why not


# --- calls and their faults -----------------------------------------------------------------------------


def test_calls_reach_one_long_lived_instance(faulty: ProcessPlugin) -> None:
    assert [faulty.call("count").result for _ in range(3)] == [1, 2, 3]
    assert faulty.call("echo", (1, "a"), {"k": [None]}).result == {"args": [1, "a"], "kwargs": {"k": [None]}}
    assert faulty.call("health_check").result is True


@pytest.mark.parametrize(
    ("method", "error_type", "error"),
    [
        ("fail", "ValueError", "bad value"),
        ("exit", "SystemExit", "2"),
        ("interrupt", "KeyboardInterrupt", "KeyboardInterrupt"),
        ("nonexistent", "AttributeError", "'Faulty' object has no attribute 'nonexistent'"),
        ("__class__", "AttributeError", "'__class__' is not a plugin method"),
        ("unpicklable", "UnpicklableResultError", "the result cannot be pickled: cannot pickle '_thread.lock'"),
        ("own_class", "UnpicklableResultError", "the result of 'own_class' cannot be unpickled in the server"),
    ],
    ids=["exception", "SystemExit", "KeyboardInterrupt", "no-method", "private", "unpicklable", "private-class"],
)
def test_exceptions_are_reported_and_the_child_lives_on(
    faulty: ProcessPlugin, method: str, error_type: str, error: str
) -> None:
    pid = faulty.pid
    assert faulty.call("count").result == 1
    assert_failed(faulty.call(method), error_type, error)
    assert faulty.pid == pid
    assert faulty.call("count").result == 2  # same instance, state kept


def test_unpicklable_arguments_are_refused_before_sending(faulty: ProcessPlugin) -> None:
    assert_failed(faulty.call("echo", (threading.Lock(),)), "UnpicklableArgumentsError", "cannot be sent")
    assert faulty.call("count").result == 1


@pytest.mark.parametrize(
    ("method", "death"),
    [("segfault", "killed by SIGSEGV"), ("hard_exit", "exit code 3"), ("kill9", "killed by SIGKILL")],
    ids=["segfault", "os._exit", "kill-9"],
)
def test_a_crash_is_reported_and_the_next_call_gets_a_fresh_child(
    faulty: ProcessPlugin, method: str, death: str
) -> None:
    pid = faulty.pid
    assert pid is not None
    assert faulty.call("count").result == 1
    began = time.perf_counter()
    assert_failed(faulty.call(method), "PluginCrashedError", f"died during {method!r} ({death})")
    assert time.perf_counter() - began < 0.5
    assert faulty.pid is None
    assert not faulty.alive
    assert gone(pid)
    assert faulty.call("count").result == 1  # respawned: a fresh instance
    assert faulty.pid not in (None, pid)


@pytest.mark.parametrize(
    ("method", "args"),
    [("sleep", (10,)), ("spin", ()), ("spin_in_c", ())],
    ids=["sleep", "except-Exception-loop", "hang-in-C"],
)
def test_timeout_kills_and_replaces_the_child(faulty: ProcessPlugin, method: str, args: tuple[object, ...]) -> None:
    pid = faulty.pid
    assert pid is not None
    assert faulty.call("count").result == 1
    began = time.perf_counter()
    result = faulty.call(method, args, timeout=0.2)
    elapsed = time.perf_counter() - began
    assert_failed(result, "PluginTimeoutError", "call exceeded its timeout of 0.2 s")
    assert 0.2 <= elapsed < 0.3
    assert wait_until(lambda: gone(pid))
    assert faulty.pid not in (None, pid)  # already replaced
    assert faulty.call("count").result == 1


def test_call_timeout_defaults_to_the_limit(make: Callable[..., ProcessPlugin]) -> None:
    plugin = make(timeout=0.2)
    began = time.perf_counter()
    assert plugin.call("sleep", (10,)).error_type == "PluginTimeoutError"
    assert time.perf_counter() - began < 1.0  # includes the first start


def test_memory_cap_stops_a_huge_allocation_and_the_child_survives(faulty: ProcessPlugin) -> None:
    pid = faulty.pid
    assert_failed(faulty.call("allocate", (2048,)), "PluginMemoryError", "call exceeded its memory limit of 256 MiB")
    assert faulty.pid == pid
    assert faulty.call("allocate", (100,)).result == 100 * MIB


def test_without_a_memory_limit_the_allocation_works(make: Callable[..., ProcessPlugin]) -> None:
    plugin = make(memory_limit_mb=None)
    assert plugin.call("allocate", (512,)).result == 512 * MIB


def test_a_failing_reimport_is_what_the_next_call_reports(
    make: Callable[..., ProcessPlugin], tmp_path: Path
) -> None:
    plugin_file = tmp_path / "flaky.py"
    plugin_file.write_text(textwrap.dedent("""
        import os
        from plugin_health import Plugin, tool

        class Flaky(Plugin):
            @tool
            def die(self):
                os._exit(1)
    """))
    plugin = make("flaky", directory=tmp_path)
    assert plugin.start().ok
    assert plugin.call("die").error_type == "PluginCrashedError"
    plugin_file.write_text("raise ImportError('dependency vanished')\n")
    assert_failed(plugin.call("health_check"), "ImportError", "dependency vanished")


# --- concurrency and cleanup -----------------------------------------------------------------------


def test_calls_from_many_threads_are_serialised(faulty: ProcessPlugin) -> None:
    results: list[int] = []

    def worker() -> None:
        for _ in range(25):
            results.append(faulty.call("count").result)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == list(range(1, 101))


def test_close_reaps_the_child_and_is_idempotent(faulty: ProcessPlugin) -> None:
    pid = faulty.pid
    assert pid is not None
    faulty.close()
    assert gone(pid)  # exited and reaped: no zombie
    assert faulty.pid is None
    assert not faulty.alive
    faulty.close()
    assert faulty.call("count").result == 1  # a later call starts a new child


def test_close_during_a_hung_call_ends_it(faulty: ProcessPlugin) -> None:
    pid = faulty.pid
    assert pid is not None
    results: list[PluginSandboxResult] = []
    caller = threading.Thread(target=lambda: results.append(faulty.call("sleep", (30,), timeout=30)))
    caller.start()
    time.sleep(0.1)
    began = time.perf_counter()
    faulty.close()
    caller.join(5)
    assert time.perf_counter() - began < 2.0
    assert results[0].error_type == "PluginCrashedError"
    assert gone(pid)


def test_the_child_exits_when_the_server_end_of_its_pipe_closes(faulty: ProcessPlugin) -> None:
    pid = faulty.pid
    assert pid is not None
    faulty._slot[0].conn.close()
    assert wait_until(lambda: gone(pid))


def test_children_die_with_their_server(tmp_path: Path) -> None:
    script = textwrap.dedent(f"""
        import os, sys
        from pathlib import Path
        from plugin_health.loader.sources import PluginSource
        from plugin_health.sandbox import ProcessPlugin, SandboxLimits

        if __name__ == "__main__":
            path = Path({str(PLUGINS / "faulty.py")!r})
            plugin = ProcessPlugin(PluginSource("faulty", str(path), path=path), SandboxLimits(5.0, 256))
            assert plugin.start().ok
            print(plugin.pid, flush=True)
            if sys.argv[1] == "crash":
                os._exit(0)  # no cleanup at all: the child must notice EOF and exit by itself
    """)
    (tmp_path / "server.py").write_text(script)
    for how in ("exit", "crash"):
        out = subprocess.run([sys.executable, str(tmp_path / "server.py"), how], capture_output=True, text=True,
                             timeout=30, check=True)
        pid = int(out.stdout.split()[0])
        assert wait_until(lambda pid=pid: not alive_process(pid)), how


def alive_process(pid: int) -> bool:
    """Whether ``pid`` is a running (not zombie) process; orphans may wait for a reaper as zombies."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")
