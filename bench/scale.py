"""Scale benchmark: start-up, health reads and memory under gunicorn with 10, 100, 1,000 and 10,000 plugins.

Run from the repository root, in the project's venv, with ``wrk`` on ``PATH`` and matplotlib installed
(``pip install -e '.[bench]'``)::

    python bench/scale.py [--quick] [--sizes 10,100,1000,10000]

It takes about 3.5 minutes (``--quick``: one 1 s wrk run per figure, about 80 s). For each number of plugins it
writes that many trivial plugins into a temporary directory, starts ``gunicorn -c gunicorn.conf.py -b
127.0.0.1:<free port> wsgi:app`` with the repository's settings (the ``on_starting`` hook starts the plugin host,
which loads them; health checks every 3,600 s, so none run during the measurements), and measures:

* the time from starting gunicorn to ``/startupz`` answering 200 (every plugin loaded, started and checked once);
* the first GET of each of the dashboard's data routes (``/v1/plugins/``, ``/v1/health``, the SVG lifecycle
  diagram) and of ``/readyz`` and ``/metrics``, in that order, right after start-up: a worker that has built
  nothing yet (unless an earlier route of the five landed on the same worker);
* requests/s, the best of two runs of ``wrk -t2 -c16 -d3s`` (after a 1 s warm-up; on a shared machine other load
  only ever slows a run down), of ``GET /v1/plugins/<a middle plugin>/health``,
  ``GET /v1/plugins/``, the list with ``If-None-Match`` (the 304 every dashboard poll gets while nothing changes,
  checked to answer 304 before and after), ``GET /v1/health`` and its 304, and the list again while an operator
  restart of one plugin moves the store's version every second (each worker must build the list again);
* the first GET of the list in a fresh worker against a warm worker's: every worker replaced (SIGTERM; the master
  boots others, as when ``max_requests`` recycles one) while the store's version stands still, then the first GET
  once they are idle, against the median of later ones each taken once the workers are idle as long again (the
  goal's baseline: an idle machine answers slower than a busy one), and of later ones request after request; the
  medians of three such replacements (one with ``--quick``) (issue 13's goal: at most 3x with 1,000 plugins);
* the resident memory of the plugin host and the median of the workers' after the runs (their caches full).

It prints two tables (start-up, the health reads, the list's size and memory; then the dashboard's data routes),
each value followed by its ratio to the 10-plugin row (the baseline), and draws ``bench/scale.png``. Each server
is stopped (SIGTERM to the master, then SIGKILL of its process group) before the next one starts, however the run
ends.

``bench/`` is first on ``sys.path`` here, where ``bench/http.py`` shadows the standard library's ``http``: like
``bench/http.py`` this script speaks HTTP through ``_serve`` over a plain socket and never imports ``plugin_health``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from _figures import report
from _serve import (
    ROOT,
    Reply,
    Server,
    WrkResult,
    base_env,
    describe,
    fetch,
    fmt_time,
    gunicorn_settings,
    plugins_service,
    rss,
    run_wrk,
    servers_stopped,
    warm_up,
    workers_of,
)

SIZES = (10, 100, 1000, 10_000)
WRK = ["wrk", "-t2", "-c16", "-d3s", "--latency"]
QUICK_WRK = ["wrk", "-t2", "-c16", "-d1s", "--latency"]
WARMUP = ["wrk", "-t2", "-c16", "-d1s"]
ROUNDS = 2  # wrk runs per figure, the best one kept (--quick: 1)
FRESH_TRIES = 3  # replacements of every worker for the first list in a fresh worker (--quick: 1)
READY_WITHIN = 600.0  # seconds allowed for /startupz with 10,000 plugins on a busy machine
PLOT = ROOT / "bench" / "scale.png"
TOKEN = "bench-scale"  # the operator token of the service under test (the churn restarts a plugin)
COLD = {  # the first GET of each route, in one worker whose cache is cold
    "list": "/v1/plugins/",
    "aggregate": "/v1/health",
    "diagram": "/v1/lifecycle/diagram?format=svg",
    "readyz": "/readyz",
    "metrics": "/metrics",
}


@dataclass
class Row:
    """What one number of plugins measured."""

    plugins: int
    startup: float = 0.0  # seconds from starting gunicorn to /startupz 200
    rps: dict[str, float] = field(default_factory=dict)  # route -> requests/s
    p99: dict[str, float] = field(default_factory=dict)  # route -> seconds
    cold: dict[str, float] = field(default_factory=dict)  # route -> seconds of the first GET
    fresh: float = 0.0  # seconds of the first list in a worker booted while the store stood still (median of rounds)
    warm: float = 0.0  # seconds of a list from a worker that had answered it already, request after request (median)
    warm_idle: float = 0.0  # the same, each once the workers had sat idle as long as before the fresh one's (median)
    warmed: list[float] = field(default_factory=list)  # seconds each replacement worker's log says warming took
    list_bytes: int = 0
    host_rss: int = 0
    worker_rss: int = 0
    running: int = 0
    boots: int = 0  # workers booted during the wrk runs (max_requests recycling)
    bad: int = 0  # responses >= 400 and socket errors during the wrk runs


def timed_fetch(port: int, path: str) -> tuple[float, Reply]:
    """One GET and its wall-clock time."""
    began = time.perf_counter()
    reply = fetch(port, path, timeout=120.0)
    return time.perf_counter() - began, reply


def expect_304(server: Server, path: str, etag: str, tries: int = 10) -> None:
    """Every one of ``tries`` conditional GETs (spread over the workers) answers 304."""
    statuses = {fetch(server.port, path, {"If-None-Match": etag}, timeout=120.0).status for _ in range(tries)}
    if statuses != {304}:
        raise RuntimeError(f"If-None-Match on {path} answered {sorted(statuses)}, not only 304")


@contextlib.contextmanager
def churning(server: Server, plugin: str, period: float = 1.0) -> Iterator[None]:
    """Restart ``plugin`` every ``period`` seconds meanwhile (each restart moves the store's version)."""
    stop = threading.Event()
    failures: list[str] = []

    def restart() -> None:
        path = f"/v1/plugins/{plugin}/restart"
        while True:
            try:
                reply = fetch(server.port, path, {"Authorization": f"Bearer {TOKEN}"}, timeout=60.0, method="POST")
            except OSError as err:
                failures.append(f"POST {path}: {err}")
            else:
                if reply.status != 200:
                    failures.append(f"POST {path} answered {reply.status}")
            if stop.wait(period):
                return

    thread = threading.Thread(target=restart, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
    if failures:
        raise RuntimeError(failures[0])


def settled(pids: set[int], still: float = 0.3, within: float = 120.0) -> None:
    """Wait (bounded) until none of ``pids`` used any CPU for ``still`` seconds (booted, idle, accepting)."""

    def cpu() -> dict[int, int]:
        ticks = {}
        for pid in pids:
            with contextlib.suppress(OSError):
                fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
                ticks[pid] = int(fields[11]) + int(fields[12])  # utime + stime
        return ticks

    deadline = time.monotonic() + within
    before = cpu()
    while time.monotonic() < deadline:
        time.sleep(still)
        now = cpu()
        if now == before:
            return
        before = now


def fresh_and_warm(server: Server, workers: int) -> tuple[float, float, float, list[float]]:
    """The first list in a fresh worker against a warm worker's: every worker is replaced (SIGTERM; the master
    boots others) while the store's version stands still, as a worker recycled by ``max_requests`` starts; once the
    new ones are idle, the first GET of the list lands on one of them. Then ``4 x workers`` more, the median of the
    last ``workers`` (by then nearly every worker has answered it): a warm worker's, busy. Then ``workers`` more,
    each once the workers are idle again as long as before the first (``settled``): a warm worker's in the same
    conditions as the fresh one's. An idle machine answers slower than a busy one (its CPUs' caches and the wake-up
    of a process asleep: 2.7 against 1.2 ms for a warm worker's list of 1,000 plugins, Dec 03), so that the
    baseline of the goal is the warm worker idle as long, not the one answering request after request. Also what
    the new workers' logs say warming took."""
    def gunicorn_workers() -> set[int]:
        return {pid for pid, cmd in server.children().items() if "gunicorn" in cmd and "core_main" not in cmd}

    old = gunicorn_workers()
    booted, logged = server.boots(), len(server.log.read_text(errors="replace"))
    for pid in old:
        os.kill(pid, signal.SIGTERM)
    server.wait_for_workers(booted + len(old), within=120.0)
    deadline = time.monotonic() + 120.0
    while (gunicorn_workers() & old or len(gunicorn_workers()) < workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    settled(gunicorn_workers())
    first, reply = timed_fetch(server.port, COLD["list"])
    if reply.status != 200:
        raise RuntimeError(f"GET {COLD['list']} in a fresh worker answered {reply.status}")
    later = [timed_fetch(server.port, COLD["list"])[0] for _ in range(4 * workers)]
    idle = []
    for _ in range(workers):
        settled(gunicorn_workers())
        idle.append(timed_fetch(server.port, COLD["list"])[0])
    log = server.log.read_text(errors="replace")[logged:]
    warmed = [float(ms) / 1e3 for ms in re.findall(r"warmed in (\d+) ms", log)]
    return first, statistics.median(later[-workers:]), statistics.median(idle), warmed


def quiet(server: Server, path: str, still: float = 1.0, within: float = 120.0) -> None:
    """Wait (bounded) until ``path``'s ETag (the store's version) stood still for ``still`` seconds: with thousands
    of plugins the first health checks go on after ``/startupz`` (loading waits for them at most a second), and a
    304 is only promised while nothing moved."""
    deadline = time.monotonic() + within
    tag, since = None, time.monotonic()
    while time.monotonic() < deadline:
        now = fetch(server.port, path, timeout=120.0).headers.get("etag")
        if now != tag:
            tag, since = now, time.monotonic()
        elif time.monotonic() - since >= still:
            return
        time.sleep(0.1)
    raise RuntimeError(f"{path}: the store still moved after {within:.0f} s")


def best(runs: Iterable[WrkResult]) -> WrkResult:
    """The run with the most requests/s (on a shared machine, other load only ever slows a run down)."""
    return max(runs, key=lambda run: run.rps)


def measure(plugins: int, work: Path, wrk: list[str], rounds: int, workers: int) -> Row:
    """Start a service with ``plugins`` trivial plugins, measure it, stop it."""
    row = Row(plugins)
    server = plugins_service(plugins, work, TOKEN, READY_WITHIN)
    with servers_stopped([server]):
        row.startup = server.start()
        server.wait_for_workers(workers)
        for key, path in COLD.items():
            row.cold[key], reply = timed_fetch(server.port, path)
            if reply.status >= 500 and key != "aggregate":  # the aggregate is 503 only when a critical plugin fails
                raise RuntimeError(f"GET {path} answered {reply.status}")
        quiet(server, "/v1/health")
        listing = fetch(server.port, COLD["list"], timeout=120.0)
        aggregate = fetch(server.port, COLD["aggregate"], timeout=120.0)
        row.list_bytes = len(listing.body)
        row.running = [entry["state"] for entry in json.loads(listing.body)].count("RUNNING")
        health_path = f"/v1/plugins/p{plugins // 2:05d}/health"
        cases: list[tuple[str, str, dict[str, str]]] = [
            ("health", health_path, {}),
            ("list", COLD["list"], {}),
            ("list 304", COLD["list"], {"If-None-Match": listing.headers["etag"]}),
            ("aggregate", COLD["aggregate"], {}),
            ("aggregate 304", COLD["aggregate"], {"If-None-Match": aggregate.headers["etag"]}),
        ]
        for key, path, headers in cases:
            etag = headers.get("If-None-Match")
            if etag:
                expect_304(server, path, etag)
            warm_up(server, path, headers, WARMUP)
            result = best(run_wrk(server, path, headers, wrk) for _ in range(rounds))
            if etag:
                expect_304(server, path, etag)  # nothing moved the store's version meanwhile
            row.rps[key], row.p99[key] = result.rps, result.latency_p99
            row.boots += result.boots
            row.bad += result.bad_status + result.socket_errors
        # A first request is one sample: the median of FRESH_TRIES replacements of every worker (--quick: one).
        tries = [fresh_and_warm(server, workers) for _ in range(FRESH_TRIES if rounds > 1 else 1)]
        row.fresh = statistics.median(fresh for fresh, _, _, _ in tries)
        row.warm = statistics.median(warm for _, warm, _, _ in tries)
        row.warm_idle = statistics.median(idle for _, _, idle, _ in tries)
        row.warmed = [took for _, _, _, warmed in tries for took in warmed]
        # The list while something changes once a second: every worker builds it again after each change.
        with churning(server, f"p{0:05d}"):
            runs = [run_wrk(server, COLD["list"], {}, wrk) for _ in range(rounds)]
        result = best(runs)
        row.rps["list churn"], row.p99["list churn"] = result.rps, result.latency_p99
        row.bad += sum(run.bad_status + run.socket_errors for run in runs)
        children = server.children()
        row.host_rss = next((rss(pid) for pid, cmd in children.items() if "plugin_health.runtime.core_main" in cmd), 0)
        row.worker_rss = int(statistics.median(rss(pid) for pid, cmd in children.items() if "gunicorn" in cmd))
    return row


def ratio(value: float, baseline: float) -> str:
    return f"{value / baseline:.2f}" if baseline else "-"


def mib(size: float) -> str:
    return f"{size / 2**20:.0f} MiB"


def count(value: float) -> str:
    return f"{value:,.0f}"


Column = tuple[str, Callable[[Row], float], Callable[[float], str]]

#: The main table: start-up, the three health reads, the list's size and memory.
MAIN: list[Column] = [
    ("startup", lambda r: r.startup, fmt_time),
    ("health req/s", lambda r: r.rps["health"], count),
    ("list req/s", lambda r: r.rps["list"], count),
    ("list 304 req/s", lambda r: r.rps["list 304"], count),
    ("list body", lambda r: r.list_bytes, lambda v: f"{v / 1e3:,.0f} kB"),
    ("host RSS", lambda r: r.host_rss, mib),
    ("worker RSS", lambda r: r.worker_rss, mib),
]
#: What the dashboard polls (the aggregate and its 304), the list under changes, and the first GET of each route.
DASHBOARD: list[Column] = [
    ("aggregate req/s", lambda r: r.rps["aggregate"], count),
    ("aggregate 304 req/s", lambda r: r.rps["aggregate 304"], count),
    ("list p99", lambda r: r.p99["list"], fmt_time),
    ("list req/s, churn", lambda r: r.rps["list churn"], count),
    ("list p99, churn", lambda r: r.p99["list churn"], fmt_time),
    *((f"1st {key}", lambda r, key=key: r.cold[key], fmt_time) for key in COLD),
    ("1st list, fresh worker", lambda r: r.fresh, fmt_time),
    ("list, warm worker", lambda r: r.warm, fmt_time),
    ("list, warm worker, idle", lambda r: r.warm_idle, fmt_time),
]


def print_columns(rows: list[Row], columns: list[Column]) -> None:
    """A table of ``columns`` per number of plugins, each value followed by its ratio to the first row's."""
    cells = [[f"{fmt(cell(row))} ({ratio(cell(row), cell(rows[0]))})" for _, cell, fmt in columns] for row in rows]
    widths = [max(len(name), *(len(line[i]) for line in cells)) + 2 for i, (name, _, _) in enumerate(columns)]
    print(f"{'plugins':>8}" + "".join(f"{name:>{width}}" for (name, _, _), width in zip(columns, widths, strict=True)))
    for row, line in zip(rows, cells, strict=True):
        print(f"{row.plugins:>8,}" + "".join(f"{text:>{width}}" for text, width in zip(line, widths, strict=True)))


def plot(rows: list[Row], path: Path, workers: str) -> None:
    """Requests/s of each route and the start-up time against the number of plugins, both axes logarithmic."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.axes import Axes
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    def log_axes(axes: Axes, unit: str) -> None:
        axes.set(xscale="log", yscale="log", xlabel="plugins")
        axes.set_xticks(sizes, [f"{n:,}" for n in sizes])
        axes.xaxis.set_minor_formatter(NullFormatter())
        axes.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        axes.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}{unit}" if v >= 1 else f"{v:g}{unit}"))
        axes.yaxis.set_minor_formatter(NullFormatter())
        axes.grid(True, which="major", alpha=0.3)

    sizes = [row.plugins for row in rows]
    fig, (reads, startup) = plt.subplots(1, 2, figsize=(11, 4.5), gridspec_kw={"width_ratios": [3, 2]})
    for key, label, marker in (
        ("health", "GET /v1/plugins/<name>/health", "o"),
        ("list", "GET /v1/plugins/", "s"),
        ("list 304", "GET /v1/plugins/ (If-None-Match: 304)", "^"),
        ("aggregate", "GET /v1/health", "D"),
        ("aggregate 304", "GET /v1/health (If-None-Match: 304)", "v"),
        ("list churn", "GET /v1/plugins/, a change every second", "x"),
    ):
        reads.plot(sizes, [row.rps[key] for row in rows], marker=marker, label=label)
    log_axes(reads, "")
    reads.set(ylabel="requests/s (wrk -t2 -c16)", title=f"Health reads under gunicorn, {workers}")
    reads.legend(fontsize=8)
    startup.plot(sizes, [row.startup for row in rows], marker="o", color="tab:red")
    log_axes(startup, " s")
    startup.set(ylabel="seconds", title="gunicorn start to /startupz 200")
    fig.suptitle(f"plugin-health: trivial plugins, {os.cpu_count()} CPUs, Python {sys.version.split()[0]}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="one 1 s wrk run per figure, not the best of two 3 s")
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)), help="numbers of plugins, comma-separated")
    parser.add_argument("--plot", type=Path, default=PLOT, help=f"where to draw the plot (default {PLOT})")
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",")]
    wrk, rounds = (QUICK_WRK, 1) if args.quick else (WRK, ROUNDS)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))  # stop the servers on SIGTERM too
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        conf = gunicorn_settings(base_env())
        workers = int(str(conf["workers"]))
        for plugins in sizes:
            work = Path(tmp, str(plugins))
            work.mkdir()
            rows.append(measure(plugins, work, wrk, rounds, workers))

    print(f"Python {sys.version.split()[0]}, {os.cpu_count()} CPUs")
    runs = "the best of 2 runs" if rounds == 2 else "1 run" if rounds == 1 else f"the best of {rounds} runs"
    print(f"gunicorn -c gunicorn.conf.py, {describe(conf)}; {' '.join(wrk[:4])}, {runs} after a 1 s warm-up")
    print(f"each value is followed by its ratio to the {rows[0].plugins:,}-plugin row (the baseline)\n")
    print_columns(rows, MAIN)
    print(
        "\nthe dashboard's data routes: /v1/health, the list's p99 and the list while a plugin restarts every second;"
        " the first GET of each route right after start-up"
    )
    print_columns(rows, DASHBOARD)
    print("\nthe first list in a fresh worker against a warm worker's, both after the workers sat idle: "
          + ", ".join(f"{r.plugins:,}: {r.fresh / r.warm_idle:.2f}x" for r in rows) + " (goal at 1,000: at most 3x)")
    print("and against a warm worker's request after request: "
          + ", ".join(f"{r.plugins:,}: {r.fresh / r.warm:.2f}x" for r in rows))
    for r in rows:
        if r.plugins >= 1000:
            met = "met" if r.fresh / r.warm_idle <= 3 else "MISSED"
            report(f"1st list in a fresh worker, {r.plugins:,} plugins", fmt_time(r.fresh),
                   f"{fmt_time(r.warm_idle)} (a warm worker, idle as long)", r.fresh / r.warm_idle,
                   goal=f"<= 3x at 1,000: {met}" if r.plugins == 1000 else "")
            report(f"1st list in a fresh worker, {r.plugins:,} plugins, against request after request",
                   fmt_time(r.fresh), f"{fmt_time(r.warm)} (a warm worker, busy)", r.fresh / r.warm)
    print("warming a worker (its log, median): "
          + ", ".join(f"{r.plugins:,}: {fmt_time(statistics.median(r.warmed)) if r.warmed else '-'}" for r in rows))
    print("plugins RUNNING: " + ", ".join(f"{r.running:,}/{r.plugins:,}" for r in rows))
    print("workers booted during the runs (max_requests): " + ", ".join(str(r.boots) for r in rows))
    bad = sum(r.bad for r in rows)
    if bad:
        print(f"!! {bad} responses >= 400 or socket errors during the runs")
    plot(rows, args.plot, workers_of(conf))
    print(f"plot: {args.plot.relative_to(ROOT) if args.plot.is_relative_to(ROOT) else args.plot}")


if __name__ == "__main__":
    main()
