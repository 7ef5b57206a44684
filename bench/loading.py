"""Loading benchmark (issue 13): the CPU the core and its runner spend on each plugin while the core loads.

``bench/startup.py`` times the whole service (gunicorn, its workers, the core); this one times what bounds it: the
core's own start (``Core.start``) in a process of its own, over N trivial plugins (a SQLite store, real runners),
and reads where the CPU goes: the core's threads (its main thread, the thread streaming loads to the shared runner,
the batch writer; ``time.thread_time`` as each ends) and the runner (from ``/proc``). Each figure is per plugin at
10,000 plugins against the same at 1,000, measured in the same run (a ratio above 1 is work that grows faster than
the plugins); one round each, alternating, 3 rounds (``--quick``: 1), medians.

Each size runs in a fresh process (``--child N``), so that nothing one left warms the next.

And at 10,000 plugins, the core's CPU a plugin against the same with every plugin that came up with its load moved
one move at a time (``--stepwise``: ``PluginLoader._joined_whole`` declines, and ``_came_up`` moves it LOADED,
INITIALIZED, RUNNING, each move on its own with its listeners), in the same rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

from _figures import report
from _serve import PLUGIN_SOURCE

SIZES = (1_000, 10_000)
FIGURES = ("wall", "core", "main", "loads", "batches", "runner")
LABELS = {"wall": "Core.start, wall clock", "core": "the core's CPU", "main": "its main thread's CPU",
          "loads": "its load stream's CPU", "batches": "its batch writer's CPU", "runner": "the runner's CPU"}


def child(plugins: int, stepwise: bool = False) -> dict[str, float]:
    """Load ``plugins`` trivial plugins with ``Core.start`` here; seconds of each figure (all plugins).
    ``stepwise``: each plugin moved up one move at a time, as before ``enter_through``."""
    spent: Counter[str] = Counter()
    run = threading.Thread.run

    def timed(thread: threading.Thread) -> None:
        try:
            run(thread)
        finally:
            spent[thread.name.rpartition("-")[2]] += time.thread_time()

    threading.Thread.run = timed  # type: ignore[method-assign]  # each thread's CPU, read as it ends
    # bench/ was put first on the path to run this file: its http.py would shadow the standard library's
    # (prometheus_client imports http.server).
    sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != Path(__file__).resolve().parent]
    with tempfile.TemporaryDirectory(prefix=f"bench-loading-{plugins}-") as tmp:
        work = Path(tmp)
        (work / "plugins").mkdir()
        (work / "metrics").mkdir()
        for i in range(plugins):
            (work / "plugins" / f"p{i:05d}.py").write_text(PLUGIN_SOURCE)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(work / "metrics")
        from plugin_health.config import load_settings
        from plugin_health.lifecycle import PluginLifecycleState
        from plugin_health.loader.loader import PluginLoader
        from plugin_health.runtime.core import Core
        from plugin_health.store import open_instance_store

        if stepwise:
            PluginLoader._joined_whole = lambda *args: False  # type: ignore[method-assign]

        settings = load_settings({"plugin_path": str(work / "plugins"), "run_dir": str(work / "run"),
                                  "health_interval": 3600}, environ={})
        core = Core(settings, open_instance_store(settings))
        core.own_process = True  # as the plugin host's core: this process is its own
        main0, used0, began = time.thread_time(), _used(), time.perf_counter()
        core.start(background=False, announce=True)
        wall, used, main = time.perf_counter() - began, _used() - used0, time.thread_time() - main0
        runner = sum(_cpu(pid) for pid in _descendants(os.getpid()))
        running = sum(core.manager.state_of(name) is PluginLifecycleState.RUNNING for name in core.manager)
        core.shutdown()
    if running != plugins:
        raise SystemExit(f"{running} of {plugins} plugins RUNNING")
    return {"wall": wall, "core": used, "main": main, "loads": spent["loads"], "batches": spent["batches"],
            "runner": runner}


def _used() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _descendants(pid: int) -> list[int]:
    found, frontier = [], [pid]
    while frontier:
        parent = frontier.pop()
        for task in Path(f"/proc/{parent}/task").iterdir():
            try:
                kids = [int(kid) for kid in (task / "children").read_text().split()]
            except OSError:
                continue
            found.extend(kids)
            frontier.extend(kids)
    return found


def _cpu(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(plugins: int, stepwise: bool = False) -> dict[str, float]:
    """One round in a fresh process."""
    command = [sys.executable, __file__, "--child", str(plugins), *(["--stepwise"] if stepwise else [])]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    if done.returncode:
        raise RuntimeError(f"{plugins} plugins: exit {done.returncode}:\n{done.stderr[-2000:]}")
    found: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 round each, not 3")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--stepwise", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.stepwise)))
        return
    print(f"Python {platform.python_version()}, {os.cpu_count()} CPUs")
    rounds = 1 if args.quick else 3
    print(f"Core.start over N trivial plugins in-process (SQLite store, real runners); {rounds} alternating round(s)\n")
    seen: dict[int, list[dict[str, float]]] = {size: [] for size in SIZES}
    stepwise: list[dict[str, float]] = []
    for _ in range(rounds):
        for size in SIZES:
            found = measure(size)
            seen[size].append(found)
            print(f"  round: {size:>6,} plugins  " + "  ".join(f"{key} {found[key]:.2f} s" for key in FIGURES))
        found = measure(SIZES[-1], stepwise=True)
        stepwise.append(found)
        print(f"  round: {SIZES[-1]:>6,} plugins, one move at a time  "
              + "  ".join(f"{key} {found[key]:.2f} s" for key in FIGURES))
    median = {size: {key: statistics.median(r[key] for r in seen[size]) for key in FIGURES} for size in SIZES}
    small, large = SIZES
    print(f"\nper plugin (median), {large:,} against {small:,} plugins")
    for key in FIGURES:
        per_large, per_small = median[large][key] / large, median[small][key] / small
        ratio = per_large / per_small if per_small else None
        print(f"  {LABELS[key]:28s} {per_large * 1e6:8.1f} us   {per_small * 1e6:8.1f} us   "
              f"{'-' if ratio is None else f'{ratio:.2f}'}")
        report(f"{LABELS[key]} a plugin, {large:,} plugins", f"{per_large * 1e6:.1f} us",
               f"{per_small * 1e6:.1f} us ({small:,} plugins)", ratio)
    print(f"\nper plugin (median), {large:,} plugins each brought up in one step against one move at a time")
    for key in ("core", "main"):
        whole = median[large][key] / large
        apart = statistics.median(r[key] for r in stepwise) / large
        print(f"  {LABELS[key]:28s} {whole * 1e6:8.1f} us   {apart * 1e6:8.1f} us   {whole / apart:.2f}")
        report(f"{LABELS[key]} a plugin, {large:,} plugins, each brought up in one step", f"{whole * 1e6:.1f} us",
               f"{apart * 1e6:.1f} us (one move at a time)", whole / apart)


if __name__ == "__main__":
    main()
