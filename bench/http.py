"""HTTP benchmark: the health reads under gunicorn, as ratios to a bare Flask route, a raw WSGI callable and
py-healthcheck, with issue 13's goals.

Run from the repository root, in the project's venv, with ``wrk`` on ``PATH`` (Debian package ``wrk``)::

    python bench/http.py [--quick]

It takes about 5 minutes (``--quick``: one 2 s round per route and one worker probe, about 75 s). It writes
trivial plugins and run directories into a temporary directory, then starts five gunicorn servers, each on a free
port of 127.0.0.1 and each with the repo's ``gunicorn.conf.py`` (worker class, worker count, keepalive, timeouts,
``max_requests`` recycling), so that only the WSGI app differs:

* the service over 1,000 plugins: ``gunicorn -c gunicorn.conf.py -b 127.0.0.1:<port> wsgi:app``; its
  ``on_starting`` hook starts the plugin host, which loads the plugins (health checks every 3,600 s, so none run
  during the measurements); and the same over 10 and over 100 plugins, for ``/v1/health``;
* the baseline, ``bench._bare_app:app``, with ``PLUGIN_HEALTH_HOST_MODE=embedded`` (so the same hook starts
  nothing) and ``-k`` the service's worker class (which the config file would not pick in embedded mode): a bare
  Flask app serving canned copies of the service's real answers (same body bytes, status, ``Content-Type``,
  ``ETag``, ``Cache-Control`` and ``Vary``), fetched just before, and ``ok`` on ``/readyz`` and ``/livez``; the
  same app serves py-healthcheck's ``HealthCheck`` with 10 and 100 cached checks (``/healthcheck/<n>``);
* the floor, ``bench._bare_app:raw``, the same way: a raw WSGI callable that answers the canned health.

Each route is measured against its baseline: one plugin's health (200; and 304 with ``If-None-Match: <the ETag
of a first GET>``, checked to answer 304 before and after), the list of all 1,000 (200 and 304), ``/readyz`` and
``/livez`` against the bare Flask route (and the health also against the raw callable), ``/v1/health`` over 10
and 100 plugins against py-healthcheck with as many checks. It warms the servers up for 1 s, then runs
``wrk -t2 -c16 -d3s --latency`` five times, alternating baseline and contenders (the machines are shared and
noisy: pairing each run with its neighbour cancels slow drifts, and the median of five such ratios leaves out the
rounds another program disturbed; together the rounds see a few workers recycled by ``max_requests``, whose cold
caches are part of the cost). It prints the medians of
requests/s and of wrk's mean and 99th-percentile latency, the workers gunicorn booted during the runs, each
round's req/s ratio to the baseline and their median, the p99 ratio the same way, the CPU time the workers spent
a request (a figure the other programs on a shared machine disturb less than req/s), and issue 13's goal of each
figure with whether this run met it.

It also prints the time from starting gunicorn to ``/startupz`` answering 200, for the service with 1,000
plugins and for the bare app, and what a fresh worker pays (importing the app, then its first and later
requests, with Flask's test client in a child process). Every figure goes to ``python -m bench``'s table
through ``bench/_figures.py``. The servers are stopped (SIGTERM to the master, then SIGKILL of its process group)
however the run ends.

This module shadows the standard library's ``http`` for code run from ``bench/``, so it speaks HTTP over a
plain socket and never imports ``plugin_health`` (or anything that imports ``http``) itself; the server, client
and wrk helpers it shares with ``bench/scale.py`` live in ``bench/_serve.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Mapping
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
    run_wrk,
    servers_stopped,
    warm_up,
    worker_cpu,
    write_plugins,
)

PLUGINS = 1000
AGGREGATE_PLUGINS = (10, 100)  # /v1/health against py-healthcheck with as many checks
PROBE = "p00500"  # the plugin whose health is fetched
ROUNDS = 5  # alternating wrk runs against the baseline and the contenders, per route (the machine is noisy)
WRK = ["wrk", "-t2", "-c16", "-d3s", "--latency"]
LABEL = 52  # width of the figure column
WARMUP = ["wrk", "-t2", "-c16", "-d1s"]
QUICK_ROUNDS = 1  # --quick: one round of 2 s per route, one worker probe
QUICK_WRK = ["wrk", "-t2", "-c16", "-d2s", "--latency"]
#: Issue 13's goals: req/s at least this many times the bare Flask route's (py-healthcheck's for /v1/health), the
#: raw WSGI callable's, and p99 latency at most this many times the bare Flask route's.
GOAL_FLASK, GOAL_RAW, GOAL_HEALTHCHECK, GOAL_P99 = 1.0, 0.7, 1.2, 1.5
SERVICE = "plugin-health"


def can(directory: Path, key: str, reply: Reply) -> None:
    """Write a real answer where the bare app reads it."""
    (directory / f"{key}.body").write_bytes(reply.body)
    meta = {"status": reply.status, "content_type": reply.headers["content-type"], "etag": reply.headers["etag"]}
    (directory / f"{key}.json").write_text(json.dumps(meta))


def same_answer(real: Reply, bare: Reply) -> bool:
    """Same status, body bytes and the headers that matter."""
    keys = ("content-type", "content-length", "etag", "cache-control", "vary")
    return (real.status, real.body, [real.headers.get(k) for k in keys]) == (
        bare.status, bare.body, [bare.headers.get(k) for k in keys],
    )


def worker_costs(env: Mapping[str, str], module: str, paths: list[tuple[str, str]], runs: int = 3) -> dict[str, float]:
    """What a fresh worker pays, measured in child processes with Flask's test client (median of ``runs``).

    ``boot``: importing the WSGI module (for the service: ``create_app``); ``<key>.cold``: its first request
    on ``paths``, ``<key>.warm``: the median of the next 50.
    """
    code = WORKER_PROBE.format(module=module, paths=paths)
    samples: list[dict[str, float]] = []
    for _ in range(runs):
        out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=dict(env), check=True, capture_output=True)
        samples.append(json.loads(out.stdout))
    return {key: statistics.median(sample[key] for sample in samples) for key in samples[0]}


WORKER_PROBE = """
import json, statistics, time
began = time.perf_counter()
import {module} as target
out = {{"boot": time.perf_counter() - began}}
client = target.app.test_client()
for key, path in {paths!r}:
    began = time.perf_counter()
    status = client.get(path).status_code
    out[key + ".cold"] = time.perf_counter() - began
    assert status in (200, 503), (path, status)
    warm = []
    for _ in range(50):
        began = time.perf_counter()
        client.get(path)
        warm.append(time.perf_counter() - began)
    out[key + ".warm"] = statistics.median(warm)
print(json.dumps(out))
"""


@dataclass(frozen=True)
class Arm:
    """One server measured on a route: its label in the table, the path and the request headers."""

    label: str
    server: Server
    path: str
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Goal:
    """One of issue 13's goals on a case: the contender's req/s over the arm ``against``'s at least ``at_least``,
    or (``p99``) its p99 latency over the baseline's at most ``at_most``."""

    against: str
    at_least: float | None = None
    at_most: float | None = None


@dataclass(frozen=True)
class Case:
    """One measured route: its title, what the answer is (status, body bytes), its arms (the baseline first, then
    the contender: plugin-health) and goals."""

    title: str
    status: int
    size: int
    arms: list[Arm]
    goals: list[Goal] = field(default_factory=list)

    def arm(self, label: str) -> int:
        """The index of the arm labelled ``label``."""
        return next(i for i, arm in enumerate(self.arms) if arm.label == label)


@dataclass
class Measured:
    """What wrk measured for each arm (``runs[arm][round]``) and the workers' CPU seconds a request."""

    runs: list[list[WrkResult]]
    cpu: list[list[float]]

    def ratios(self, arm: int, against: int, p99: bool = False) -> list[float]:
        """Round by round, ``arm``'s req/s (or p99 latency) over ``against``'s."""
        if p99:
            return [a.latency_p99 / b.latency_p99 for a, b in zip(self.runs[arm], self.runs[against], strict=True)]
        return [a.rps / b.rps for a, b in zip(self.runs[arm], self.runs[against], strict=True)]


def check_304(arms: list[Arm], tries: int = 20) -> None:
    """Every one of ``tries`` conditional GETs (spread over the workers) of each arm answers 304."""
    for arm in arms:
        statuses = {fetch(arm.server.port, arm.path, arm.headers).status for _ in range(tries)}
        if statuses != {304}:
            raise RuntimeError(f"{arm.label}: If-None-Match on {arm.path} answered {sorted(statuses)}, not only 304")


def measure(case: Case, rounds: int, wrk: list[str]) -> Measured:
    """Warm the arms' servers up, then ``rounds`` alternating wrk runs of every arm."""
    if case.status == 304:
        check_304(case.arms)
    for arm in case.arms:
        warm_up(arm.server, arm.path, arm.headers, WARMUP)
    measured = Measured([[] for _ in case.arms], [[] for _ in case.arms])
    for _ in range(rounds):
        for i, arm in enumerate(case.arms):
            used = worker_cpu(arm.server)
            result = run_wrk(arm.server, arm.path, arm.headers, wrk)
            measured.runs[i].append(result)
            measured.cpu[i].append((worker_cpu(arm.server) - used) / result.requests)
    if case.status == 304:
        check_304(case.arms)  # the ETags still held after the runs
    return measured


def verdict(ratio: float, goal: Goal) -> str:
    """``>= 1x: met`` (or ``MISSED``): the goal and whether ``ratio`` meets it."""
    if goal.at_most is not None:
        return f"<= {goal.at_most:g}x: {'met' if ratio <= goal.at_most else 'MISSED'}"
    assert goal.at_least is not None
    return f">= {goal.at_least:g}x: {'met' if ratio >= goal.at_least else 'MISSED'}"


def print_case(case: Case, measured: Measured) -> None:
    """The case's table, its goals (met or missed), and its figures for ``python -m bench``."""
    print(f"\n{case.title} ({case.status}, {case.size:,} B)")
    print(f"  {'':<{LABEL}}{'req/s':>9}{'lat avg':>11}{'lat p99':>11}{'boots':>7}{'CPU/req':>9}{'ratio':>8}  per round")
    base, contender = case.arms[0], case.arm(SERVICE)
    rates = [statistics.median(r.rps for r in runs) for runs in measured.runs]
    p99s = [statistics.median(r.latency_p99 for r in runs) for runs in measured.runs]
    for i, arm in enumerate(case.arms):
        runs, ratios = measured.runs[i], measured.ratios(i, 0)
        rounds = " ".join(f"{x:.2f}" for x in ratios) if i else ""
        label = f"{arm.label} (baseline)" if i == 0 else arm.label
        line = (f"  {label:<{LABEL}}{rates[i]:>9,.0f}{fmt_time(statistics.median(r.latency_avg for r in runs)):>11}"
                f"{fmt_time(p99s[i]):>11}{sum(r.boots for r in runs):>7}"
                f"{fmt_time(statistics.median(measured.cpu[i])):>9}{statistics.median(ratios):>8.2f}  {rounds}")
        print(line.rstrip())
    for goal in case.goals:
        against = case.arm(goal.against)
        p99 = goal.at_most is not None
        ratios = measured.ratios(contender, against, p99=p99)
        ratio = statistics.median(ratios)
        label = f"goal: {'p99 latency' if p99 else 'req/s'} against {goal.against}"
        print(f"  {label:<{LABEL + 47}}{ratio:>8.2f}  {' '.join(f'{x:.2f}' for x in ratios)}  {verdict(ratio, goal)}")
    # The figures for python -m bench: each arm's req/s against the baseline, the contender's against the other arms
    # and its p99 (with their goals), and its CPU a request.
    goals = {(goal.against, goal.at_most is not None): goal for goal in case.goals}
    for i, arm in enumerate(case.arms[1:], start=1):
        ratio = statistics.median(measured.ratios(i, 0))
        goal = goals.get((base.label, False)) if i == contender else None
        report(case.title if i == contender else f"{case.title}: {arm.label}", f"{rates[i]:,.0f} req/s",
               f"{rates[0]:,.0f} req/s ({base.label})", ratio, goal="" if goal is None else verdict(ratio, goal))
    for (against_label, p99), goal in goals.items():
        against = case.arm(against_label)
        if against == 0 and not p99:
            continue  # reported above
        ratio = statistics.median(measured.ratios(contender, against, p99=p99))
        value, of = (fmt_time(p99s[contender]), fmt_time(p99s[against])) if p99 else (
            f"{rates[contender]:,.0f} req/s", f"{rates[against]:,.0f} req/s")
        report(f"{case.title}: {'p99 latency' if p99 else 'req/s'}", value, f"{of} ({against_label})", ratio,
               goal=verdict(ratio, goal))
    cpu_ratios = [a / b for a, b in zip(measured.cpu[contender], measured.cpu[0], strict=True)]
    report(f"{case.title}: worker CPU a request", fmt_time(statistics.median(measured.cpu[contender])),
           f"{fmt_time(statistics.median(measured.cpu[0]))} ({base.label})", statistics.median(cpu_ratios))
    bad = sum(r.bad_status + r.socket_errors for runs in measured.runs for r in runs)
    if bad:
        print(f"  !! {bad} responses >= 400 or socket errors during these runs")


def print_row(label: str, seconds: float, baseline: float, topic: str, base_label: str) -> None:
    print(f"  {label:<{LABEL}}{fmt_time(seconds):>9}{seconds / baseline:>37.2f}")
    if seconds != baseline:
        report(f"{topic}: {label}", fmt_time(seconds), f"{fmt_time(baseline)} ({base_label})", seconds / baseline)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="one 2 s round per route, one worker probe")
    quick = parser.parse_args().quick
    rounds, wrk, probes = (QUICK_ROUNDS, QUICK_WRK, 1) if quick else (ROUNDS, WRK, 3)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))  # stop the servers on SIGTERM too
    servers: list[Server] = []
    with tempfile.TemporaryDirectory(prefix="bench-http-") as tmp, servers_stopped(servers):
        work = Path(tmp)
        write_plugins(work / "plugins", PLUGINS)
        env = base_env()
        conf = gunicorn_settings(env)
        real_env = {
            **env,
            "PLUGIN_HEALTH_PLUGIN_PATH": str(work / "plugins"),
            "PLUGIN_HEALTH_RUN_DIR": str(work / "run"),
            "PLUGIN_HEALTH_HEALTH_INTERVAL": "3600",
        }
        canned = work / "canned"
        canned.mkdir()
        bare_env = {
            **env,
            "PLUGIN_HEALTH_HOST_MODE": "embedded",  # gunicorn.conf.py's on_starting then starts no plugin host
            "PLUGIN_HEALTH_RUN_DIR": str(work / "bare-run"),
            "BENCH_BARE_DIR": str(canned),
        }
        workers = int(str(conf["workers"]))
        worker_class = str(conf["worker_class"])  # the service's: the baselines are run with the same

        real = Server("service", "wsgi:app", real_env, work / "service.log")
        servers.append(real)
        real_startup = real.start()  # measured alone: nothing else runs yet
        real.wait_for_workers(workers)
        health_path, list_path = f"/v1/plugins/{PROBE}/health", "/v1/plugins/"
        health, listing = fetch(real.port, health_path), fetch(real.port, list_path)
        running = [entry["state"] for entry in json.loads(listing.body)].count("RUNNING")
        can(canned, "health", health)
        can(canned, "list", listing)

        bare = Server("bare", "bench._bare_app:app", bare_env, work / "bare.log", args=["-k", worker_class])
        raw_env = {**bare_env, "PLUGIN_HEALTH_RUN_DIR": str(work / "raw-run")}
        raw = Server("raw", "bench._bare_app:raw", raw_env, work / "raw.log", args=["-k", worker_class])
        for n in AGGREGATE_PLUGINS:
            (work / f"service-{n}").mkdir()
        small = {n: plugins_service(n, work / f"service-{n}") for n in AGGREGATE_PLUGINS}
        servers.extend([bare, raw, *small.values()])
        bare_startup = bare.start()
        for server in (bare, raw, *small.values()):
            if server is not bare:
                server.start()
            server.wait_for_workers(workers)
        for path, reply in ((health_path, health), (list_path, listing)):
            if not same_answer(reply, fetch(bare.port, path)):
                raise RuntimeError(f"the bare app's {path} differs from the service's")
        if not same_answer(health, fetch(raw.port, health_path)):
            raise RuntimeError("the raw WSGI callable's health differs from the service's")
        for path in ("/readyz", "/livez"):
            if fetch(real.port, path).body != fetch(bare.port, path).body:
                raise RuntimeError(f"the bare app's {path} differs from the service's")

        paths = [("health", health_path), ("list", list_path)]
        reader_env = {**real_env, "PLUGIN_HEALTH_HOST_MODE": "external"}  # what gunicorn's workers get
        costs = {
            "bare": worker_costs(bare_env, "bench._bare_app", paths, probes),
            "real": worker_costs(reader_env, "wsgi", paths, probes),
        }

        flask_route = f"bare Flask route, same bytes, {worker_class} workers"
        raw_label = f"raw WSGI callable, same bytes, {worker_class} workers"
        health_tag, list_tag = {"If-None-Match": health.headers["etag"]}, {"If-None-Match": listing.headers["etag"]}
        fast = [Goal(flask_route, at_least=GOAL_FLASK), Goal(flask_route, at_most=GOAL_P99)]
        cases = [
            Case(f"GET {health_path}", health.status, len(health.body),
                 [Arm(flask_route, bare, health_path), Arm(SERVICE, real, health_path),
                  Arm(raw_label, raw, health_path)], [*fast, Goal(raw_label, at_least=GOAL_RAW)]),
            Case(f"GET {health_path}, If-None-Match", 304, 0,
                 [Arm(flask_route, bare, health_path, health_tag), Arm(SERVICE, real, health_path, health_tag)], fast),
            Case("GET /readyz", 200, 2, [Arm(flask_route, bare, "/readyz"), Arm(SERVICE, real, "/readyz")], fast),
            Case("GET /livez", 200, 2, [Arm(flask_route, bare, "/livez"), Arm(SERVICE, real, "/livez")], fast),
            Case("GET /v1/plugins/", listing.status, len(listing.body),
                 [Arm(flask_route, bare, list_path), Arm(SERVICE, real, list_path)]),
            Case("GET /v1/plugins/, If-None-Match", 304, 0,
                 [Arm(flask_route, bare, list_path, list_tag), Arm(SERVICE, real, list_path, list_tag)]),
        ]
        for n, server in small.items():
            aggregate = fetch(server.port, "/v1/health")
            theirs = fetch(bare.port, f"/healthcheck/{n}")
            if (aggregate.status, theirs.status) != (200, 200) or len(json.loads(aggregate.body)["checks"]) != n:
                raise RuntimeError(f"/v1/health of {n} plugins: {aggregate.status}, py-healthcheck: {theirs.status}")
            healthcheck = f"py-healthcheck, {n} cached checks, {worker_class} workers"
            cases.append(Case(f"GET /v1/health, {n} plugins", 200, len(aggregate.body),
                              [Arm(healthcheck, bare, f"/healthcheck/{n}"), Arm(SERVICE, server, "/v1/health")],
                              [Goal(healthcheck, at_least=GOAL_HEALTHCHECK)]))
        results = [(case, measure(case, rounds, wrk)) for case in cases]

    print(f"Python {sys.version.split()[0]}, {os.cpu_count()} CPUs, {PLUGINS:,} plugins ({running:,} RUNNING); "
          f"/v1/health: {' and '.join(map(str, AGGREGATE_PLUGINS))} plugins")
    print(f"every server: gunicorn -c gunicorn.conf.py, {describe(conf)}")
    print(f"{' '.join(wrk[:4])} --latency, {rounds} rounds alternating the baseline and the others;")
    print("columns are medians, boots = workers gunicorn booted during the runs, CPU/req = worker CPU time a request,")
    print("ratio = median of the rounds' req/s ratios to the baseline; goal rows: issue 13's goals, the same way")
    for case, measured in results:
        print_case(case, measured)
    topic = "start to /startupz 200"
    print("\ngunicorn start to /startupz 200")
    print_row("bare Flask app (baseline)", bare_startup, bare_startup, topic, "bare Flask app")
    print_row(f"plugin-health, {PLUGINS:,} plugins", real_startup, bare_startup, topic, "bare Flask app")
    topic = "fresh worker"
    print(f"\nWhat a fresh worker pays: a child process, Flask's test client, no HTTP (median of {probes})")
    bare_boot = costs["bare"]["boot"]
    print_row("import the bare app (baseline)", bare_boot, bare_boot, topic, "import the bare app")
    print_row("import wsgi (create_app, opening the store)", costs["real"]["boot"], bare_boot, topic,
              "import the bare app")
    for key, _ in paths:
        warm = costs["bare"][f"{key}.warm"]
        base_label = f"{key}: a GET, bare app"
        print_row(f"{base_label} (baseline)", warm, warm, topic, base_label)
        print_row(f"{key}: first GET in a worker, bare app", costs["bare"][f"{key}.cold"], warm, topic, base_label)
        print_row(f"{key}: first GET in a worker (cache cold)", costs["real"][f"{key}.cold"], warm, topic, base_label)
        print_row(f"{key}: next GETs (cache warm)", costs["real"][f"{key}.warm"], warm, topic, base_label)


if __name__ == "__main__":
    main()
