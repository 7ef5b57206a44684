"""Sandbox costs, each printed as a ratio to a baseline measured in the same run.

Run: ``.venv/bin/python bench/sandbox.py [--quick]`` (about a minute on 2 shared CPUs; ``--quick``: fewer, shorter
repeats, about 10 s). Prints, for a trivial function:

* inline: the bare call, then ``Sandbox.run`` without limits, with a timeout (main thread: setitimer;
  another thread: the watchdog) and with a timeout plus the memory guard, each as a ratio to the bare call;
* process: the round trip of a plugin in a runner of its own (``RunnerHandle.call``, as the core places an
  ``isolation = "process"`` plugin), pebble's ``ProcessPool`` and ``multiprocessing.Pool``, each as a ratio to a
  raw ``multiprocessing.Pipe`` round trip to a child echo loop;
* how long after a 0.2 s timeout a hung call returns, inline and in a runner;
* a crash's detection, and loading the plugin into a fresh runner + its first call after a crash or a kill -9
  (what the supervisor's restart does; ``bench/runtime.py`` measures the runners further).
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import os
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

# ``python bench/<name>.py`` puts bench/ first on sys.path, where bench/http.py would shadow the standard library's
# ``http``, which Flask (imported by plugin_health) needs.
if str(Path(__file__).resolve().parent) in sys.path:
    sys.path.remove(str(Path(__file__).resolve().parent))

from plugin_health.loader.sources import PluginSource
from plugin_health.runtime.runners import RunnerHandle, RunnerPool, RunnerSettings
from plugin_health.sandbox import PluginSandboxResult, Sandbox, SandboxLimits

PLUGIN = '''
import ctypes
import time
from plugin_health import Plugin, tool

class Bench(Plugin):
    @tool
    def noop(self):
        return 1

    @tool
    def hang(self):
        while True:
            time.sleep(0.001)

    @tool
    def segfault(self):
        ctypes.string_at(0)
'''

REPEATS = 7
SCALE = 1.0  # --quick: a fifth of the calls per repeat, 3 repeats


class RunnerPlugin:
    """The bench plugin in a runner of its own, loaded into a fresh one when its runner is lost (as a restart by
    the supervisor would)."""

    def __init__(self, source: PluginSource) -> None:
        self.source = source
        self.pool = RunnerPool(RunnerSettings(load_limits=SandboxLimits(10.0, 512)))
        self.handle = self.load()

    def load(self) -> RunnerHandle:
        placed = self.pool.load(self.source, dedicated=True)
        assert isinstance(placed.handle, RunnerHandle), placed
        placed.handle.name = self.source.name
        self.handle = placed.handle
        return placed.handle

    def call(self, method: str, timeout: float | None = None) -> PluginSandboxResult:
        return self.handle.call(method, timeout=timeout)

    def serving_pid(self) -> int:
        """The pid of the runner's serving child (where the plugin's code runs), the child of its guard."""
        guard = self.handle.runner.pid
        (child,) = Path(f"/proc/{guard}/task/{guard}/children").read_text().split()
        return int(child)

    def close(self) -> None:
        self.pool.close()


def trivial() -> int:
    return 1


def busy() -> None:
    while True:
        pass


def echo(conn: Connection) -> None:
    """The raw-pipe baseline: a child that sends back whatever it receives, until EOF."""
    try:
        while True:
            conn.send_bytes(conn.recv_bytes())
    except EOFError:
        return


def per_call(loop: Callable[[int], None], n: int) -> float:
    """Median seconds per call of ``loop(n)`` over several repeats."""
    n = max(1, int(n * SCALE))
    loop(max(1, n // 10))  # warm up
    samples = []
    for _ in range(REPEATS):
        began = time.perf_counter()
        loop(n)
        samples.append((time.perf_counter() - began) / n)
    return statistics.median(samples)


def calls(fn: Callable[[], Any]) -> Callable[[int], None]:
    def loop(n: int) -> None:
        for _ in range(n):
            fn()

    return loop


def in_thread(fn: Callable[[], float]) -> float:
    out: list[float] = []
    worker = threading.Thread(target=lambda: out.append(fn()))
    worker.start()
    worker.join()
    return out[0]


def fmt_time(seconds: float) -> str:
    if seconds < 1e-6:
        return f"{seconds * 1e9:8.1f} ns"
    if seconds < 1e-3:
        return f"{seconds * 1e6:8.2f} us"
    return f"{seconds * 1e3:8.2f} ms"


def table(title: str, rows: list[tuple[str, float, str]]) -> None:
    print(f"\n{title}")
    width = max(len(name) for name, _, _ in rows)
    for name, seconds, ratio in rows:
        print(f"  {name:<{width}}  {fmt_time(seconds)}  {ratio}")


def inline_costs() -> None:
    n = 200_000
    bare = per_call(calls(trivial), n)
    rows = [("bare call", bare, "1.0x (baseline)")]
    variants = [
        ("Sandbox.run, no limits", SandboxLimits()),
        ("Sandbox.run, timeout (setitimer)", SandboxLimits(timeout=10.0)),
        ("Sandbox.run, timeout + memory guard", SandboxLimits(timeout=10.0, memory_limit_mb=512)),
    ]
    for name, limits in variants:
        run = Sandbox(limits).run
        cost = per_call(calls(lambda run=run: run(trivial)), n)  # type: ignore[misc]
        rows.append((name, cost, f"{cost / bare:.1f}x"))
    watched = Sandbox(SandboxLimits(timeout=10.0)).run
    cost = in_thread(lambda: per_call(calls(lambda: watched(trivial)), n))
    rows.append(("Sandbox.run, timeout, off the main thread (watchdog)", cost, f"{cost / bare:.1f}x"))
    guarded = Sandbox(SandboxLimits(timeout=10.0, memory_limit_mb=512)).run
    cost = in_thread(lambda: per_call(calls(lambda: guarded(trivial)), n))
    rows.append(("Sandbox.run, timeout + memory, off the main thread", cost, f"{cost / bare:.1f}x"))
    table("Inline, median per call of a trivial function (ratio to the bare call)", rows)


def process_costs(plugin: RunnerPlugin) -> None:
    import pebble

    context = multiprocessing.get_context("forkserver")
    n = 3_000
    conn, child_conn = context.Pipe()
    child = context.Process(target=echo, args=(child_conn,), daemon=True)
    child.start()
    child_conn.close()
    message = b"x" * 64

    def raw() -> None:
        conn.send_bytes(message)
        conn.recv_bytes()

    baseline = per_call(calls(raw), n)
    conn.close()
    child.join()
    rows = [("raw Pipe round trip to an echo child", baseline, "1.0x (baseline)")]
    cost = per_call(calls(lambda: plugin.call("noop")), n)
    rows.append(("RunnerHandle.call, a runner of its own", cost, f"{cost / baseline:.1f}x"))
    with pebble.ProcessPool(max_workers=1, context=context) as pool:
        cost = per_call(calls(lambda: pool.schedule(trivial).result()), n // 3)
    rows.append(("pebble.ProcessPool schedule().result()", cost, f"{cost / baseline:.1f}x"))
    with context.Pool(1) as mp_pool:
        cost = per_call(calls(lambda: mp_pool.apply(trivial)), n // 3)
    rows.append(("multiprocessing.Pool.apply", cost, f"{cost / baseline:.1f}x"))
    table("Process, median per call of a trivial function (ratio to the raw pipe)", rows)


def median_time(fn: Callable[[], Any], repeats: int = 5) -> float:
    samples = []
    for _ in range(repeats):
        began = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - began)
    return statistics.median(samples)


def fault_costs(plugin: RunnerPlugin) -> None:
    timeout = 0.2
    inline = Sandbox(SandboxLimits(timeout=timeout))
    rows = []
    main = median_time(lambda: inline.run(busy))
    rows.append(("inline, main thread (SIGALRM)", main, f"+{(main - timeout) * 1e3:.1f} ms past the timeout"))
    watchdog = in_thread(lambda: median_time(lambda: inline.run(busy)))
    rows.append(("inline, other thread (watchdog)", watchdog, f"+{(watchdog - timeout) * 1e3:.1f} ms"))
    hung = []
    for _ in range(5):
        start = time.perf_counter()
        assert plugin.call("hang", timeout=timeout).error_type == "PluginTimeoutError"
        hung.append(time.perf_counter() - start)
        assert not plugin.handle.lost  # SIGALRM stopped it in the runner, which goes on
    process = statistics.median(hung)
    rows.append(("runner of its own (SIGALRM in the runner)", process, f"+{(process - timeout) * 1e3:.1f} ms"))
    table(f"A hung call with a {timeout} s timeout: time until its result", rows)

    baseline = per_call(calls(lambda: plugin.call("noop")), 1000)
    detect, respawn, killed = [], [], []
    for _ in range(7):
        start = time.perf_counter()
        assert plugin.call("segfault").error_type == "PluginCrashedError"
        detect.append(time.perf_counter() - start)
        start = time.perf_counter()
        plugin.load()
        assert plugin.call("noop").ok
        respawn.append(time.perf_counter() - start)
    for _ in range(7):
        pid = plugin.serving_pid()
        start = time.perf_counter()
        os.kill(pid, signal.SIGKILL)
        assert plugin.call("noop").error_type == "PluginCrashedError"
        plugin.load()
        assert plugin.call("noop").ok
        killed.append(time.perf_counter() - start)
    rows = [("round trip of a healthy call (baseline)", baseline, "1.0x")]
    for name, samples in [
        ("a segfault: until the call returns PluginCrashedError", detect),
        ("after a crash: load in a fresh runner + first call", respawn),
        ("kill -9 of the serving child: detect, load in a fresh runner, first call", killed),
    ]:
        median = statistics.median(samples)
        rows.append((name, median, f"{median / baseline:.1f}x"))
    table("Process faults (median)", rows)


def main() -> None:
    global REPEATS, SCALE
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 repeats of a fifth of the calls")
    if parser.parse_args().quick:
        REPEATS, SCALE = 3, 0.2
    print(f"Python {sys.version.split()[0]}, {multiprocessing.cpu_count()} CPUs")
    logging.getLogger("plugin_health").setLevel(logging.ERROR)  # runners lost on purpose: no warnings
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "bench_plugin.py"
        path.write_text(PLUGIN)
        plugin = RunnerPlugin(PluginSource("bench_plugin", str(path), path=path))
        try:
            inline_costs()
            process_costs(plugin)
            fault_costs(plugin)
        finally:
            plugin.close()


if __name__ == "__main__":
    main()
