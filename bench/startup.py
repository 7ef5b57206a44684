"""Start-up benchmark (issue 13): gunicorn started to the first ``/readyz`` 200, 10 plugins against 10,000.

Each round writes N trivial plugins into a temporary directory and starts the repository's service over them
(``gunicorn -c gunicorn.conf.py wsgi:app`` on a free loopback port, as ``bench/_serve.py``'s ``plugins_service``
starts it for the other HTTP benchmarks), then times from spawning gunicorn to the first ``/readyz`` that answers
200 (every plugin loaded, initialized, started and checked once, the critical ones fine). N = 10 is the baseline,
N = 10,000 the figure; the two alternate, 5 rounds each (``--quick``: 1), medians (a start on this shared
machine varies by a third from one round to the next: five rounds' medians move less than three's). The goal:
10,000 under 3 s and at most 4x the 10-plugin start of the same run. ``/readyz`` is probed every 0.25 s until
the core logs that it serves, then every 10 ms (``PROBE_EVERY``: why), so that the probes do not take the CPU the
start is timed on.

The core's own breakdown comes from its JSON log lines (stderr of the core, in gunicorn's log): the time of the
first and last batch of transitions to LOADED, the last to RUNNING, and the line ``plugin host ... serves``, each
in seconds after gunicorn was spawned. And the CPU seconds each kind of process had used when ``/readyz`` first
answered 200 (from ``/proc``: the processes of the server's session, by command line): the core, its runners,
gunicorn's master and its workers. The start is over when the busiest of them is done, on a machine of 2 cores.

Every server is stopped (SIGTERM, then SIGKILL of its process group) after its round, on an error, and on SIGTERM
or SIGINT to this script.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import FrameType

from _figures import report
from _serve import (
    PLUGIN_SOURCE,
    Server,
    describe,
    fetch,
    fmt_time,
    gunicorn_settings,
    plugins_service,
    write_plugins,
)

GOAL_SECONDS = 3.0
ROUNDS = 5
GOAL_RATIO = 4.0
READY_WITHIN = 300.0  # seconds allowed for /readyz with 10,000 plugins on a busy machine
#: The core's phases, from its JSON log lines: (label, what the line says, the first or the last such line). While
#: it loads, the core counts its routine transitions in a line per batch ("... (n to LOADED, m to RUNNING)").
#: (Before batches, a line per transition: "plugin p: None -> LOADED (load)".)
_LOADED, _RUNNING = re.compile(r"(to|->) LOADED"), re.compile(r"(to|->) RUNNING")
PHASES = (("first LOADED", _LOADED, "first"), ("last LOADED", _LOADED, "last"), ("last RUNNING", _RUNNING, "last"),
          ("core serving", re.compile("plugin host"), "first"))


#: A plugin with its own ``initialize``, ``start`` and ``health_check`` (each doing nothing): the runner calls each
#: under the sandbox, where the trivial plugin's are ``Plugin``'s own, answered without a call (docs/architecture.md,
#: "Hard deadlines, blame, quarantine and recovery"). Measured beside the figure (``--no-hooks`` skips it), so that
#: the figure is not read as every plugin's start-up.
HOOKS_SOURCE = PLUGIN_SOURCE.replace(
    "    pass\n",
    "    def initialize(self, context):\n        pass\n\n    def start(self):\n        pass\n\n"
    "    def health_check(self):\n        return True\n")


def write_hooked(directory: Path, count: int) -> None:
    """``count`` plugins with hooks of their own (HOOKS_SOURCE), one module each."""
    directory.mkdir()
    for i in range(count):
        (directory / f"p{i:05d}.py").write_text(HOOKS_SOURCE)


@dataclass
class Round:
    """One start: seconds to /readyz 200, and the core's phases (seconds after gunicorn was spawned)."""

    plugins: int
    ready: float
    phases: dict[str, float] = field(default_factory=dict)
    cpu: dict[str, float] = field(default_factory=dict)


#: Kinds of processes in the server's session, by what their command line holds (the first that matches).
ROLES = (("core", "plugin_health.runtime.core_main"), ("runners", "plugin_health.runtime.runner"),
         ("gunicorn", ""))
_TICK = os.sysconf("SC_CLK_TCK")


def cpu_by_role(session: int) -> dict[str, float]:
    """CPU seconds (user and system) used so far by the live processes of ``session``, summed by role (ROLES)."""
    used = dict.fromkeys((role for role, _ in ROLES), 0.0)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rpartition(")")[2].split()
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if int(fields[3]) != session:
            continue
        role = next(role for role, holds in ROLES if holds in command)
        used[role] += (int(fields[11]) + int(fields[12])) / _TICK
    return used


#: How often /readyz is probed: every PROBE_EVERY seconds once the core's log says it serves, every PROBE_BEFORE
#: seconds until then. Each probe is a new connection and a request a worker serves (about a millisecond of its CPU):
#: probed every 10 ms from the spawn, a 10,000-plugin start sent ~600 probes that took ~0.6 s of the CPU it was
#: being timed on (the workers' CPU fell from 2.5 to 1.9 s probing every 100 ms). Kubernetes probes every 10 s by
#: default, haproxy every 2 s. The core logs "serves" just after it marks loading done (what /readyz waits for),
#: so the first 200 is seen within PROBE_EVERY of it. ``--probe-always`` probes every PROBE_EVERY from the spawn.
PROBE_EVERY, PROBE_BEFORE = 0.01, 0.25
_SERVES = re.compile(rb'"message":"plugin host \d+ serves')


@dataclass
class Probing:
    """How ``ready`` probes, and how many probes it sent."""

    always: bool = False
    sent: int = 0


def ready(server: Server, probing: Probing, within: float = READY_WITHIN) -> tuple[float, float, dict[str, float]]:
    """Start ``server``; the seconds from spawning gunicorn to the first ``/readyz`` 200, the wall-clock time of
    the spawn, and the CPU seconds its processes had used by then (``cpu_by_role``)."""
    began, wall = time.monotonic(), time.time()
    server.launch()
    deadline = began + within
    serves, read, last_probe = probing.always, 0, -PROBE_BEFORE
    while time.monotonic() < deadline:
        assert server.process is not None
        if server.process.poll() is not None:
            raise RuntimeError(f"{server.label}: gunicorn exited with {server.process.returncode}:\n{server.tail()}")
        if not serves:
            with open(server.log, "rb") as log:  # what was added since the last look (and a line it may have cut)
                log.seek(max(0, read - 200))
                serves, read = _SERVES.search(log.read()) is not None, log.tell()
        now = time.monotonic()
        if serves or now - last_probe >= PROBE_BEFORE:
            last_probe = now
            probing.sent += 1
            with suppress(OSError):
                if fetch(server.port, "/readyz", timeout=2.0).status == 200:
                    return time.monotonic() - began, wall, cpu_by_role(server.process.pid)
        time.sleep(PROBE_EVERY)
    raise RuntimeError(f"{server.label}: /readyz not 200 within {within:.0f} s:\n{server.tail()}")


def phases(log: Path, spawned: float) -> dict[str, float]:
    """The core's phases, in seconds after gunicorn was spawned (wall clock), from its JSON log lines."""
    seen: dict[str, float] = {}
    for line in log.read_text(errors="replace").splitlines():
        if not line.startswith("{"):
            continue
        try:
            entry = json.loads(line)
            at = datetime.fromisoformat(entry["time"]).timestamp() - spawned
            message = str(entry["message"])
        except (ValueError, KeyError, TypeError):
            continue
        for label, what, which in PHASES:
            if what.search(message) and (which == "last" or label not in seen):
                seen[label] = at
    return seen


def measure(plugins: int, keep: list[Server], probing: Probing, hooked: bool = False) -> Round:
    """One round with ``plugins`` trivial plugins (``hooked``: plugins with hooks of their own)."""
    with tempfile.TemporaryDirectory(prefix=f"bench-startup-{plugins}-") as tmp:
        server = plugins_service(plugins, Path(tmp), ready_within=READY_WITHIN,
                                 write=write_hooked if hooked else write_plugins)
        keep.append(server)
        try:
            seconds, spawned, cpu = ready(server, probing)
            server.stop()
            return Round(plugins, seconds, phases(server.log, spawned), cpu)
        finally:
            server.stop()
            keep.remove(server)


@contextmanager
def stopped_on_signal(servers: list[Server]) -> Iterator[None]:
    """SIGTERM or SIGINT stops every running server before this script exits."""
    def stop(signum: int, frame: FrameType | None) -> None:
        for server in list(servers):
            server.stop()
        sys.exit(128 + signum)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for server in list(servers):
            server.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def main() -> None:
    """Alternate rounds of N = 10 and N = 10,000; print the table, the ratio and the goals."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="one round of each size instead of five")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--sizes", default="10,10000", help="baseline,figure (default 10,10000)")
    parser.add_argument("--no-hooks", action="store_true",
                        help="skip the rounds of plugins with their own initialize, start and health_check")
    parser.add_argument("--probe-always", action="store_true",
                        help=f"probe /readyz every {PROBE_EVERY * 1e3:.0f} ms from the spawn (as before Dec 02)")
    args = parser.parse_args()
    rounds = args.rounds or (1 if args.quick else ROUNDS)
    base, big = (int(n) for n in args.sizes.split(","))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PLUGIN_HEALTH_")}
    print(f"Python {sys.version.split()[0]}, {os.cpu_count()} CPUs")
    print(f"gunicorn -c gunicorn.conf.py: {describe(gunicorn_settings(env))}")
    probing = {base: Probing(args.probe_always), big: Probing(args.probe_always)}
    how = (f"every {PROBE_EVERY * 1e3:.0f} ms" if args.probe_always else
           f"every {PROBE_BEFORE:.2f} s, every {PROBE_EVERY * 1e3:.0f} ms once the core logs that it serves")
    print(f"time from spawning gunicorn to the first /readyz 200 (probed {how}); {rounds} alternating round(s), "
          "medians\n")
    results: dict[int, list[Round]] = {base: [], big: []}
    hooked: list[Round] = []
    hooked_probing = Probing(args.probe_always)
    servers: list[Server] = []
    with stopped_on_signal(servers):
        for _ in range(rounds):
            for plugins in (base, big):
                found = measure(plugins, servers, probing[plugins])
                results[plugins].append(found)
                print(f"  round: {plugins:>6,} plugins  {fmt_time(found.ready)}", flush=True)
            if not args.no_hooks:
                hooked.append(measure(big, servers, hooked_probing, hooked=True))
                print(f"  round: {big:>6,} plugins with hooks of their own  {fmt_time(hooked[-1].ready)}", flush=True)
    median = {n: statistics.median(r.ready for r in rs) for n, rs in results.items()}
    ratio = median[big] / median[base]
    print(f"\n {'plugins':>8}  {'to /readyz 200':>14}  {'ratio':>6}  {'probes':>6}  per round")
    for n in (base, big):
        per = " ".join(fmt_time(r.ready) for r in results[n])
        print(f" {n:>8,}  {fmt_time(median[n]):>14}  {median[n] / median[base]:>6.2f}  {probing[n].sent:>6}  {per}")
    if hooked:
        own = statistics.median(r.ready for r in hooked)
        per = " ".join(fmt_time(r.ready) for r in hooked)
        print(f" {big:>8,}  {fmt_time(own):>14}  {own / median[base]:>6.2f}  {hooked_probing.sent:>6}  {per}"
              "  (plugins with their own initialize, start and health_check)")
    print(f" (probes: the /readyz requests sent, in all {rounds} round(s) of that size)")
    labels = [label for label, _, _ in PHASES]
    print("\nthe core's phases, from its log (seconds after gunicorn was spawned, median of the rounds)")
    print(f" {'plugins':>8}  " + "  ".join(f"{label:>16}" for label in labels))
    for n in (base, big):
        cells = []
        for label in labels:
            values = [r.phases[label] for r in results[n] if label in r.phases]
            cells.append(f"{statistics.median(values):>16.2f}" if values else f"{'-':>16}")
        print(f" {n:>8,}  " + "  ".join(cells))
    roles = [role for role, _ in ROLES]
    print("\nCPU seconds used by the first /readyz 200 (user + system, median of the rounds)")
    print(f" {'plugins':>8}  " + "  ".join(f"{role:>10}" for role in roles))
    for n in (base, big):
        print(f" {n:>8,}  " + "  ".join(f"{statistics.median(r.cpu[role] for r in results[n]):>10.2f}"
                                          for role in roles))
    if hooked:
        print(f" {big:>8,}  " + "  ".join(f"{statistics.median(r.cpu[role] for r in hooked):>10.2f}"
                                          for role in roles) + "  (with hooks of their own)")
    under = median[big] < GOAL_SECONDS
    within = ratio <= GOAL_RATIO
    print(f"\n{big:,} plugins: {fmt_time(median[big])} ({'met' if under else 'missed'}: under {GOAL_SECONDS:.0f} s);"
          f" {ratio:.2f}x the {base:,}-plugin start ({'met' if within else 'missed'}: at most {GOAL_RATIO:.0f}x)")
    report(f"start to /readyz 200, {big:,} plugins", fmt_time(median[big]),
           f"{fmt_time(median[base])} ({base:,} plugins)", ratio,
           goal=f"< {GOAL_SECONDS:.0f} s and <= {GOAL_RATIO:.0f}x: {'met' if under and within else 'missed'}")
    if hooked:
        report(f"start to /readyz 200, {big:,} plugins with their own initialize, start and health_check",
               fmt_time(own), f"{fmt_time(median[base])} ({base:,} plugins)", own / median[base])


if __name__ == "__main__":
    main()
