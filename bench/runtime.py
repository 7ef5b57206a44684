"""Runners and the core: what placing plugin code in runner processes costs, each as a ratio to a baseline
measured in the same run.

Run: ``.venv/bin/python bench/runtime.py [--quick]`` (about 15 s; ``--quick``: about 7 s). Prints:

* a health check and a tool call (a trivial one returning a small dict) through ``RunnerHandle.call``, against a
  long-lived child on a ``socket.socketpair()`` doing the same work (the same length-prefixed orjson frames, the
  same method called, an answer of the same shape), median per call; a child answering ready-made bytes of the
  same sizes (no JSON, no call) is shown too, as the floor of any round trip;
* how long past a 0.2 s timeout a call that holds the GIL in C (``sum(range(10**10))``) returns
  ``PluginTimeoutError`` (the core kills its runner at the timeout plus ``RunnerSettings.grace``), against a
  Python-level hang in the same runner, which the runner's ``SIGALRM`` stops;
* a shared runner with 100 plugins killed (the culprit disarms its timer and hangs): the time from the culprit's
  call returning until the 99 others are RUNNING again through the ``Supervisor``'s recovery, against the time the
  same 99 took to load and start in the first place;
* the resident memory (``VmRSS``) of a runner's serving child with one trivial plugin, against a bare
  ``python -c "import time; time.sleep(60)"`` (and the guard's, for the record).

Every process it starts is stopped before it exits.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

# ``python bench/<name>.py`` puts bench/ first on sys.path, where bench/http.py would shadow the standard library's
# ``http``, which Flask (imported by plugin_health) needs.
if str(Path(__file__).resolve().parent) in sys.path:
    sys.path.remove(str(Path(__file__).resolve().parent))

import orjson

from plugin_health import PluginLifecycleState
from plugin_health.lifecycle import TransitionRecord
from plugin_health.loader.loader import LoaderSettings, PluginLoader
from plugin_health.loader.sources import PluginSource, discover
from plugin_health.runtime.hosting import become_subreaper
from plugin_health.runtime.runners import RunnerHandle, RunnerPool, RunnerSettings
from plugin_health.sandbox import SandboxLimits
from plugin_health.supervision import SupervisionSettings, Supervisor
from plugin_health.tools import ToolRunner

RUNNING = PluginLifecycleState.RUNNING
#: The limits the core's loader gives a plugin that declares none (``LoaderSettings``' defaults).
DEFAULT_LIMITS = SandboxLimits(10.0, 512)
HANG_TIMEOUT = 0.2
SHARED_PLUGINS = 100

#: What the tool returns: a small dict.
INFO = {"status": "ok", "version": "1.2.3", "checks": 3, "tags": ["a", "b"]}

TRIVIAL = f'''
from plugin_health import Plugin, tool


class Trivial(Plugin):
    @tool
    def info(self):
        return {INFO!r}
'''

HANGS = f'''
import signal
from plugin_health import Plugin, tool


class Hangs(Plugin):
    isolation = "process"
    timeout = {HANG_TIMEOUT}

    @tool
    def in_c(self):
        return sum(range(10 ** 10))  # minutes in C, the GIL held: SIGALRM's handler never gets to run

    @tool
    def in_python(self):
        while True:
            pass
'''

CULPRIT = f'''
import signal
from plugin_health import Plugin, tool


class Culprit(Plugin):
    timeout = {HANG_TIMEOUT}

    @tool
    def hang(self):
        signal.setitimer(signal.ITIMER_REAL, 0)  # no SIGALRM will come: only the core's hard deadline ends this
        while True:
            pass
'''

#: The raw baseline: a long-lived child on a socketpair, reading length-prefixed frames and answering them.
#: ``json``: decode the request, call the named method of a trivial object, encode an answer of the runner's
#: shape; ``bytes``: answer every frame with the same ready-made frame (argv[3]), no JSON and no call.
RAW_CHILD = r'''
import socket, struct, sys, time
import orjson

HEADER = struct.Struct(">I")


class Trivial:
    def health_check(self):
        return True

    def info(self):
        return INFO


def read_exactly(sock, size):
    buffer = bytearray(size)
    view = memoryview(buffer)
    got = 0
    while got < size:
        n = sock.recv_into(view[got:], size - got)
        if n == 0:
            sys.exit(0)
        got += n
    return bytes(buffer)


sock = socket.socket(fileno=int(sys.argv[1]))
if sys.argv[2] == "bytes":
    body = sys.argv[3].encode()
    frame = HEADER.pack(len(body)) + body
    while True:
        (size,) = HEADER.unpack(read_exactly(sock, 4))
        read_exactly(sock, size)
        sock.sendall(frame)
plugin = Trivial()
while True:
    (size,) = HEADER.unpack(read_exactly(sock, 4))
    request = orjson.loads(read_exactly(sock, size))
    started = time.perf_counter()
    result = getattr(plugin, request["method"])(*request["args"], **request["kwargs"])
    answer = {"ok": True, "error": None, "error_type": None,
              "duration_ms": (time.perf_counter() - started) * 1000.0, "result": result}
    body = orjson.dumps(answer)
    sock.sendall(HEADER.pack(len(body)) + body)
'''.replace("INFO", repr(INFO))

HEADER = struct.Struct(">I")


# -- output ---------------------------------------------------------------------------------------------------


def fmt_time(seconds: float) -> str:
    if seconds < 1e-3:
        return f"{seconds * 1e6:.2f} us"
    if seconds < 1.0:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.2f} s"


def table(title: str, rows: list[tuple[str, str, float, str]]) -> None:
    """``label  value  ratio  note`` rows; a ``(baseline)`` label is the baseline of the rows after it."""
    print(f"\n{title}")
    width = max(len(label) for label, _, _, _ in rows)
    value_width = max(len(value) for _, value, _, _ in rows)
    for label, value, ratio, note in rows:
        line = f"  {label:<{width}}  {value:>{value_width}}  {ratio:8.2f}"
        print(f"{line}  {note}" if note else line, flush=True)


def goal(met: bool, text: str) -> str:
    return f"goal {text}: {'met' if met else 'MISSED'}"


# -- helpers ---------------------------------------------------------------------------------------------------


def write(directory: Path, name: str, code: str) -> PluginSource:
    path = directory / f"{name}.py"
    path.write_text(textwrap.dedent(code))
    return PluginSource(name, str(path), path=path)


def timed_calls(call: Callable[[], Any], n: int, into: list[float]) -> None:
    clock = time.perf_counter
    for _ in range(n):
        began = clock()
        call()
        into.append(clock() - began)


class RawChild:
    """The baseline's child process and its end of the socketpair."""

    def __init__(self, mode: str, answer: bytes = b"") -> None:
        ours, theirs = socket.socketpair()
        self.process = subprocess.Popen(
            [sys.executable, "-c", RAW_CHILD, str(theirs.fileno()), mode, answer.decode()],
            pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL,
        )
        theirs.close()
        self.sock = ours

    def read_exactly(self, size: int) -> bytes:
        buffer = bytearray(size)
        view = memoryview(buffer)
        got = 0
        while got < size:
            n = self.sock.recv_into(view[got:], size - got)
            if n == 0:
                raise EOFError("the raw child closed its end")
            got += n
        return bytes(buffer)

    def call_json(self, request: dict[str, Any]) -> Any:
        body = orjson.dumps(request)
        self.sock.sendall(HEADER.pack(len(body)) + body)
        (size,) = HEADER.unpack(self.read_exactly(4))
        return orjson.loads(self.read_exactly(size))

    def call_bytes(self, frame: bytes) -> bytes:
        self.sock.sendall(frame)
        (size,) = HEADER.unpack(self.read_exactly(4))
        return self.read_exactly(size)

    def close(self) -> None:
        self.sock.close()
        try:
            self.process.wait(2.0)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def request_of(handle: RunnerHandle, method: str) -> dict[str, Any]:
    """The request ``RunnerHandle.call`` sends for a call without arguments (see ``RunnerHandle._call``)."""
    return {"op": "call", "slot": handle.slot, "method": method, "timeout": handle.limits.timeout,
            "args": [], "kwargs": {}}


# -- 1. round trips ------------------------------------------------------------------------------------------


def round_trips(directory: Path, rounds: int, per_round: int) -> None:
    pool = RunnerPool(RunnerSettings(load_limits=DEFAULT_LIMITS))
    children: list[RawChild] = []
    try:
        placed = pool.load(write(directory, "trivial", TRIVIAL), dedicated=False)
        handle = placed.handle
        assert isinstance(handle, RunnerHandle), placed
        handle.name = "trivial"
        rows: list[tuple[str, str, float, str]] = []
        for what, method, expected in (("health check", "health_check", True), ("tool call", "info", INFO)):
            result = handle.call(method)
            assert result.ok, result
            assert result.result == expected, result
            request = request_of(handle, method)
            # An answer of the runner's shape and size, for the bytes-only child to send back ready-made.
            answer = orjson.dumps({"ok": True, "error": None, "error_type": None,
                                   "duration_ms": result.duration_ms, "result": result.result})
            raw_json, raw_bytes = RawChild("json"), RawChild("bytes", answer)
            children += [raw_json, raw_bytes]
            assert raw_json.call_json(request)["result"] == expected
            body = orjson.dumps(request)
            frame = HEADER.pack(len(body)) + body
            variants: dict[str, Callable[[], Any]] = {
                "json": lambda request=request, child=raw_json: child.call_json(request),  # type: ignore[misc]
                "bytes": lambda frame=frame, child=raw_bytes: child.call_bytes(frame),  # type: ignore[misc]
                "runner": lambda method=method: handle.call(method),  # type: ignore[misc]
            }
            samples: dict[str, list[float]] = {name: [] for name in variants}
            for call in variants.values():  # warm up
                timed_calls(call, max(200, per_round // 4), [])
            order = list(variants)
            for r in range(rounds):  # alternate, so that the machine's noise falls on all three alike
                for name in order[r % 3:] + order[:r % 3]:
                    timed_calls(variants[name], per_round, samples[name])
            json_ = statistics.median(samples["json"])
            bytes_ = statistics.median(samples["bytes"])
            runner = statistics.median(samples["runner"])
            rows.append((f"{what}: raw socketpair child, same JSON frames and call (baseline)", fmt_time(json_),
                         1.0, ""))
            rows.append((f"{what}: raw socketpair child, ready-made bytes of the same sizes", fmt_time(bytes_),
                         bytes_ / json_, f"the floor ({len(frame)} B out, {len(answer) + 4} B back)"))
            rows.append((f"{what}: RunnerHandle.call", fmt_time(runner), runner / json_,
                         goal(runner / json_ <= 1.3, "<= 1.3x")))
            for child in (raw_json, raw_bytes):
                child.close()
            children.clear()
        table(f"Round trip of one call, median per call of {rounds} x {per_round:,} calls after a warm-up "
              "(ratio to the raw child doing the same work)", rows)
    finally:
        for child in children:
            child.close()
        pool.close()


# -- 2. hangs ------------------------------------------------------------------------------------------------


def hangs(directory: Path, repeats: int) -> None:
    pool = RunnerPool(RunnerSettings(load_limits=DEFAULT_LIMITS))
    source = write(directory, "hangs", HANGS)

    def fresh() -> RunnerHandle:
        placed = pool.load(source, dedicated=True)
        handle = placed.handle
        assert isinstance(handle, RunnerHandle), placed
        handle.name = "hangs"
        assert handle.call("health_check").ok  # the runner is up and serving before the clock starts
        return handle

    c_past, py_past = [], []
    try:
        python_handle = fresh()
        for _ in range(repeats):
            c_handle = fresh()  # the runner is killed each time: a new one, started before the clock starts
            began = time.perf_counter()
            result = c_handle.call("in_c", timeout=HANG_TIMEOUT)
            c_past.append(time.perf_counter() - began - HANG_TIMEOUT)
            assert result.error_type == "PluginTimeoutError", result
            assert c_handle.lost  # its runner was killed
            began = time.perf_counter()
            result = python_handle.call("in_python", timeout=HANG_TIMEOUT)
            py_past.append(time.perf_counter() - began - HANG_TIMEOUT)
            assert result.error_type == "PluginTimeoutError", result
            assert not python_handle.lost  # stopped by SIGALRM in the runner, which goes on
    finally:
        pool.close()
    grace = RunnerSettings().grace
    py, c = statistics.median(py_past), statistics.median(c_past)
    table(f"A hung call with a {HANG_TIMEOUT} s timeout (hard deadline: + {grace} s grace): time past the timeout "
          f"until it returns PluginTimeoutError, median of {repeats}", [
              ("Python-level hang, stopped by SIGALRM in the runner (baseline)", fmt_time(py), 1.0, ""),
              ("C hang holding the GIL (sum(range(10**10))): runner killed", fmt_time(c), c / py,
               goal(c < 0.3, "< 300 ms")),
          ])


# -- 3. a shared runner lost -------------------------------------------------------------------------------------


def shared_loss(directory: Path) -> tuple[float, float, float]:
    """One run: (initial load+start of the 99, recovery of the 99 after the kill, the first of them back)."""
    plugins = directory / "shared"
    plugins.mkdir()
    victims = [f"p{i:03d}" for i in range(SHARED_PLUGINS - 1)]
    for name in victims:
        (plugins / f"{name}.py").write_text(textwrap.dedent(TRIVIAL))
    (plugins / "culprit.py").write_text(textwrap.dedent(CULPRIT))
    sources = discover([plugins], group=None)
    culprit_source = next(s for s in sources if s.name == "culprit")
    victim_sources = [s for s in sources if s is not culprit_source]

    pool = RunnerPool(RunnerSettings(load_limits=DEFAULT_LIMITS))
    loader = PluginLoader(settings=LoaderSettings(default_timeout=DEFAULT_LIMITS.timeout), placement=pool)
    # max_restarts=0: the culprit stays FAILED, so its own restart (into a runner of its own, after its backoff)
    # does not run during the measurement; the victims' recovery is not a restart and is not limited by it.
    supervisor = Supervisor(loader, SupervisionSettings(workers=8, max_restarts=0))
    pool.on_lost = supervisor.runner_lost
    back: dict[str, float] = {}
    killed_at = [float("inf")]

    def on_transition(record: TransitionRecord) -> None:
        if record.dest is RUNNING and time.perf_counter() >= killed_at[0]:
            back[record.plugin] = time.perf_counter()

    loader.manager.subscribe(on_transition)
    supervisor.start()  # the first health checks run beside the load, as they do beside the recovery
    try:
        began = time.perf_counter()
        loader.load(victim_sources)
        initial = time.perf_counter() - began
        assert all(loader.manager.get_state(n) is RUNNING for n in victims)
        loader.load([culprit_source])
        assert loader.manager.get_state("culprit") is RUNNING
        shared = pool.shared_runner()
        assert shared is not None
        assert len(shared.handles) == SHARED_PLUGINS
        time.sleep(0.2)
        supervisor.wait_idle(5.0)  # the first checks are done

        def recovered() -> bool:
            return all(loader.manager.get_state(n) is RUNNING and not loader.registry.get(n).handle.lost
                       for n in victims)

        result = ToolRunner(supervisor).run("culprit", "hang")
        killed_at[0] = killed = time.perf_counter()
        assert result.error_type == "PluginTimeoutError", result
        assert shared.dead is not None
        deadline = killed + 60.0
        while not recovered():
            if time.perf_counter() > deadline:
                raise RuntimeError("the 99 plugins did not come back within 60 s")
            time.sleep(0.001)
        done = time.perf_counter()
        fresh = pool.shared_runner()
        assert fresh is not None
        assert fresh is not shared
        assert len(fresh.handles) == SHARED_PLUGINS - 1
        first = min(back[n] for n in victims) - killed
        return initial, done - killed, first
    finally:
        supervisor.stop()
        loader.shutdown()
        pool.close()


def shared_losses(directory: Path, repeats: int) -> None:
    runs = []
    for i in range(repeats):
        run = Path(directory) / f"loss{i}"
        run.mkdir()
        runs.append(shared_loss(run))
    initial = statistics.median(r[0] for r in runs)
    recovery = statistics.median(r[1] for r in runs)
    first = statistics.median(r[2] for r in runs)
    victims = SHARED_PLUGINS - 1
    table(f"A shared runner of {SHARED_PLUGINS} trivial plugins killed (the culprit disarms its timer and hangs), "
          f"Supervisor(workers=8); median of {repeats}", [
              (f"load + start the {victims} plugins at first (baseline)", fmt_time(initial), 1.0, ""),
              (f"from the kill until the {victims} others are RUNNING again", fmt_time(recovery),
               recovery / initial, goal(recovery < 1.0, "< 1 s (their initialize is trivial)")),
              ("from the kill until the first of them is RUNNING again", fmt_time(first), first / initial, ""),
          ])


# -- 4. memory ------------------------------------------------------------------------------------------------------


def proc_field(pid: int, path: str, field: str) -> int:
    """A ``Field:  N kB`` line of ``/proc/<pid>/<path>``, in KiB."""
    for line in Path(f"/proc/{pid}/{path}").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/{pid}/{path}")


def rss(pid: int) -> int:
    """VmRSS of ``pid``, in KiB."""
    return proc_field(pid, "status", "VmRSS")


def settled_rss(pid: int) -> int:
    """VmRSS once it stops moving (the process has finished starting up)."""
    last, steady = -1, 0
    deadline = time.monotonic() + 10.0
    while steady < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
        now = rss(pid)
        steady = steady + 1 if now == last else 0
        last = now
    return last


def memory(directory: Path, repeats: int) -> None:
    source = write(directory, "trivial_rss", TRIVIAL)
    bare, child, guard = [], [], []
    for _ in range(repeats):
        process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], stdin=subprocess.DEVNULL)
        try:
            bare.append(settled_rss(process.pid))
        finally:
            process.kill()
            process.wait()
        pool = RunnerPool(RunnerSettings(load_limits=DEFAULT_LIMITS))
        try:
            handle = pool.load(source, dedicated=False).handle
            assert isinstance(handle, RunnerHandle)
            assert handle.call("health_check").ok
            assert handle.call("info").ok
            (runner,) = pool.runners()
            children = Path(f"/proc/{runner.pid}/task/{runner.pid}/children").read_text().split()
            assert len(children) == 1, children
            served = int(children[0])
            child.append(settled_rss(served))
            guard.append(rss(runner.pid))
        finally:
            pool.close()
    mib = 1024.0

    def row(label: str, samples: list[int], base: float, note: str = "") -> tuple[str, str, float, str]:
        value = statistics.median(samples)
        return label, f"{value / mib:.1f} MiB", value / base, note

    base = statistics.median(bare)
    served_ratio = statistics.median(child) / base
    table(f"Resident memory of a runner, median of {repeats}", [
        row('bare interpreter: python -c "import time; time.sleep(60)", VmRSS (baseline)', bare, base),
        row("runner's serving child, one trivial plugin loaded and called, VmRSS", child, base,
            goal(served_ratio <= 1.3, "<= 1.3x")),
        row("runner's guard (forked before any plugin import; most of its pages are shared), VmRSS", guard, base),
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer calls and repeats")
    quick = parser.parse_args().quick
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))  # run the finally blocks
    logging.getLogger("plugin_health").setLevel(logging.ERROR)  # runners lost on purpose: no warnings
    become_subreaper()  # as the core does: a killed runner's serving child is reaped here, not by init
    print(f"Python {sys.version.split()[0]}, {multiprocessing.cpu_count()} CPUs; "
          f"runners: python -m plugin_health.runtime.runner (a guard and its serving child)", flush=True)
    with tempfile.TemporaryDirectory() as name:
        directory = Path(name)
        round_trips(directory, rounds=3 if quick else 5, per_round=1_000 if quick else 2_000)
        hangs(directory, repeats=3 if quick else 5)
        shared_losses(directory, repeats=1 if quick else 3)
        memory(directory, repeats=1 if quick else 3)


if __name__ == "__main__":
    main()
