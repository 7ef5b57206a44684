"""HTTP benchmark: the health routes under gunicorn with 1,000 plugins, as ratios to a bare Flask route, and
gevent workers (the default) against gthread workers (the previous default).

Run from the repository root, in the project's venv, with ``wrk`` on ``PATH`` (Debian package ``wrk``)::

    python bench/http.py [--quick]

It takes about 3 minutes (``--quick``: one 2 s round per route and one worker probe, about 1 minute). It writes
1,000 trivial plugins and a run directory into a temporary directory, then starts three gunicorn servers, each on
a free port of 127.0.0.1:

* the service: ``gunicorn -c gunicorn.conf.py -b 127.0.0.1:<port> wsgi:app``; its ``on_starting`` hook starts
  the plugin host, which loads the 1,000 plugins (health checks every 3,600 s, so none run during the
  measurements); its workers are of the class the config file picks (gevent);
* the service again, ``-k gthread`` (``gunicorn.conf.py``'s worker class before gevent: 4 threads a worker),
  with a run directory and plugin host of its own;
* the baseline: ``gunicorn -c gunicorn.conf.py -b 127.0.0.1:<port> bench._bare_app:app`` with
  ``PLUGIN_HEALTH_HOST_MODE=embedded``, so the same hook returns at once and starts nothing, and ``-k`` the
  service's worker class (which the config file would not pick in embedded mode). The service and the baseline
  thus run with exactly the same settings (the repo's ``gunicorn.conf.py``: worker class, worker count,
  keepalive, timeouts, ``max_requests`` recycling); only the WSGI app differs. ``bench/_bare_app.py`` serves canned
  copies of the service's real answers (same body bytes, status, ``Content-Type``, ``ETag`` and
  ``Cache-Control``) fetched just before, so both servers put the same bytes on the wire.

For each route (one plugin's health, the list of all 1,000), plain and with ``If-None-Match: <the ETag of a
first GET>`` (the 304 path, checked to answer 304 before and after), it warms the servers up for 1 s, then
runs ``wrk -t2 -c16 -d4s --latency`` three times, alternating baseline, service and gthread service (the
machines are shared
and noisy: pairing each run with its neighbour cancels slow drifts; 4 s, long enough that the rounds together see
a few workers recycled by ``max_requests``, whose cold caches are part of the cost).
It prints the medians of requests/s and of wrk's mean and 99th-percentile latency, the workers gunicorn
booted during the runs (``max_requests`` recycling), each round's ratio to the baseline and their median, and
the same for gevent against gthread (the service's req/s over the gthread service's, round by round), and the
CPU time the workers spent a request (the live workers' and those the master reaped: a figure the other programs
on a shared machine disturb less than req/s), gevent's over gthread's.

It also prints the time from starting gunicorn to ``/startupz`` answering 200, for the service with 1,000
plugins and for the bare app, and what a fresh worker pays (importing the app, then its first and later
requests, with Flask's test client in a child process). The servers are stopped (SIGTERM to the master,
then SIGKILL of its process group) however the run ends.

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
    run_wrk,
    servers_stopped,
    warm_up,
    worker_cpu,
    write_plugins,
)

PLUGINS = 1000
PROBE = "p00500"  # the plugin whose health is fetched
ROUNDS = 3  # alternating wrk runs against the baseline and the service, per route (the machine is noisy)
WRK = ["wrk", "-t2", "-c16", "-d4s", "--latency"]
LABEL = 52  # width of the figure column
WARMUP = ["wrk", "-t2", "-c16", "-d1s"]
QUICK_ROUNDS = 1  # --quick: one round of 2 s per route, one worker probe
QUICK_WRK = ["wrk", "-t2", "-c16", "-d2s", "--latency"]


def can(directory: Path, key: str, reply: Reply) -> None:
    """Write a real answer where the bare app reads it."""
    (directory / f"{key}.body").write_bytes(reply.body)
    meta = {"status": reply.status, "content_type": reply.headers["content-type"], "etag": reply.headers["etag"]}
    (directory / f"{key}.json").write_text(json.dumps(meta))


def same_answer(real: Reply, bare: Reply) -> bool:
    """Same status, body bytes and the headers that matter."""
    keys = ("content-type", "content-length", "etag", "cache-control")
    return (real.status, real.body, [real.headers.get(k) for k in keys]) == (
        bare.status, bare.body, [bare.headers.get(k) for k in keys],
    )


def check_304(servers: list[Server], path: str, etags: Mapping[str, str], tries: int = 20) -> None:
    """Every one of ``tries`` conditional GETs (spread over the workers) with a server's ETag answers 304."""
    for server in servers:
        statuses = {fetch(server.port, path, {"If-None-Match": etags[server.label]}).status for _ in range(tries)}
        if statuses != {304}:
            raise RuntimeError(f"{server.label}: If-None-Match on {path} answered {sorted(statuses)}, not only 304")


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
class Case:
    """One measured route: what is printed, the path, the answer it expects, and for a conditional GET the ETag
    to send each server (by label: each plugin host's answers have ETags of their own)."""

    title: str
    path: str
    reply: Reply
    etags: dict[str, str] = field(default_factory=dict)

    def headers(self, server: Server) -> dict[str, str]:
        """The request headers for ``server``."""
        return {"If-None-Match": self.etags[server.label]} if self.etags else {}


Round = tuple[WrkResult, WrkResult, WrkResult]  # baseline, service, service with gthread workers
Cpu = tuple[float, float, float]  # the same servers' worker CPU seconds a request


def measure(case: Case, servers: list[Server], rounds: int, wrk: list[str]) -> tuple[list[Round], list[Cpu]]:
    """Warm the servers (baseline, service, gthread service) up, then ``rounds`` alternating wrk runs; what wrk
    measured and the workers' CPU seconds a request, round by round."""
    if case.etags:
        check_304(servers, case.path, case.etags)
    for server in servers:
        warm_up(server, case.path, case.headers(server), WARMUP)
    results: list[Round] = []
    cpus: list[Cpu] = []
    for _ in range(rounds):
        runs = []
        for server in servers:
            used = worker_cpu(server)
            result = run_wrk(server, case.path, case.headers(server), wrk)
            runs.append((result, (worker_cpu(server) - used) / result.requests))
        results.append((runs[0][0], runs[1][0], runs[2][0]))
        cpus.append((runs[0][1], runs[1][1], runs[2][1]))
    if case.etags:
        check_304(servers, case.path, case.etags)  # the ETags still held after the runs
    return results, cpus


def summary(results: list[WrkResult]) -> tuple[float, float, float, int]:
    """Median requests/s, median mean latency, median p99 latency, and workers booted over all rounds."""
    return (
        statistics.median(r.rps for r in results),
        statistics.median(r.latency_avg for r in results),
        statistics.median(r.latency_p99 for r in results),
        sum(r.boots for r in results),
    )


def print_case(case: Case, rounds: list[Round], cpus: list[Cpu], worker_class: str) -> None:
    body = 0 if case.etags else len(case.reply.body)
    status = 304 if case.etags else case.reply.status
    print(f"\n{case.title} ({status}, {body:,} B)")
    print(f"  {'':<{LABEL}}{'req/s':>9}{'lat avg':>11}{'lat p99':>11}{'boots':>7}{'ratio':>8}  per round")
    bare, real, old = (summary([r[i] for r in rounds]) for i in range(3))
    to_bare = [r.rps / b.rps for b, r, _ in rounds]
    old_to_bare = [o.rps / b.rps for b, _, o in rounds]
    for label, (rps, avg, p99, boots), ratios in (
        (f"bare Flask route, same bytes, {worker_class} workers (baseline)", bare, [1.0]),
        ("plugin-health", real, to_bare),
        ("plugin-health, gthread workers (before)", old, old_to_bare),
    ):
        extra = " ".join(f"{x:.2f}" for x in ratios) if len(ratios) > 1 or label.startswith("plugin") else ""
        line = (f"  {label:<{LABEL}}{rps:>9,.0f}{fmt_time(avg):>11}{fmt_time(p99):>11}{boots:>7}"
                f"{statistics.median(ratios):>8.2f}  {extra}")
        print(line.rstrip())
    to_old = [r.rps / o.rps for _, r, o in rounds]
    label = f"{worker_class} against gthread workers (req/s)"
    print(f"  {label:<{LABEL}}{'':>38}{statistics.median(to_old):>8.2f}  {' '.join(f'{x:.2f}' for x in to_old)}")
    cpu_to_old = [real_cpu / old_cpu for _, real_cpu, old_cpu in cpus]
    real_cpu, old_cpu = (statistics.median(c[i] for c in cpus) for i in (1, 2))
    label = f"{worker_class} against gthread workers (CPU a request: {fmt_time(real_cpu)} against {fmt_time(old_cpu)})"
    ratios = " ".join(f"{x:.2f}" for x in cpu_to_old)
    print(f"  {label:<{LABEL + 38}}{statistics.median(cpu_to_old):>8.2f}  {ratios}")
    bad = sum(r.bad_status + r.socket_errors for round_ in rounds for r in round_)
    if bad:
        print(f"  !! {bad} responses >= 400 or socket errors during these runs")


def print_row(label: str, seconds: float, baseline: float) -> None:
    print(f"  {label:<{LABEL}}{fmt_time(seconds):>9}{seconds / baseline:>37.2f}")


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
        worker_class = str(conf["worker_class"])  # the service's: the baseline is run with the same

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
        servers.append(bare)
        bare_startup = bare.start()
        bare.wait_for_workers(workers)
        for path, reply in ((health_path, health), (list_path, listing)):
            if not same_answer(reply, fetch(bare.port, path)):
                raise RuntimeError(f"the bare app's {path} differs from the service's")

        old_env = {**real_env, "PLUGIN_HEALTH_RUN_DIR": str(work / "gthread-run")}
        old = Server("service, gthread", "wsgi:app", old_env, work / "gthread.log", args=["-k", "gthread"])
        servers.append(old)
        old.start()
        old.wait_for_workers(workers)
        old_health, old_listing = fetch(old.port, health_path), fetch(old.port, list_path)

        paths = [("health", health_path), ("list", list_path)]
        reader_env = {**real_env, "PLUGIN_HEALTH_HOST_MODE": "external"}  # what gunicorn's workers get
        costs = {
            "bare": worker_costs(bare_env, "bench._bare_app", paths, probes),
            "real": worker_costs(reader_env, "wsgi", paths, probes),
        }

        def etags(reply: Reply, old_reply: Reply) -> dict[str, str]:
            return {"bare": reply.headers["etag"], "service": reply.headers["etag"],
                    "service, gthread": old_reply.headers["etag"]}

        cases = [
            Case(f"GET {health_path}", health_path, health),
            Case("GET /v1/plugins/", list_path, listing),
            Case(f"GET {health_path}, If-None-Match", health_path, health, etags(health, old_health)),
            Case("GET /v1/plugins/, If-None-Match", list_path, listing, etags(listing, old_listing)),
        ]
        results = [(case, measure(case, [bare, real, old], rounds, wrk)) for case in cases]

    print(f"Python {sys.version.split()[0]}, {os.cpu_count()} CPUs, {PLUGINS:,} plugins ({running:,} RUNNING)")
    print(f"service and baseline: gunicorn -c gunicorn.conf.py, {describe(conf)}")
    print(f"service, gthread (before): the same with -k gthread, {describe({**conf, 'worker_class': 'gthread'})}")
    print(f"{' '.join(wrk[:4])} --latency, {rounds} rounds alternating baseline, service and gthread service;")
    print(
        f"columns are medians, boots = workers gunicorn booted during the {rounds} runs, ratio = median of the"
        " rounds' req/s ratios (CPU: worker CPU time a request, gevent's over gthread's)"
    )
    for case, (rounds_of_case, cpus) in results:
        print_case(case, rounds_of_case, cpus, worker_class)
    print("\ngunicorn start to /startupz 200")
    print_row("bare Flask app (baseline)", bare_startup, bare_startup)
    print_row(f"plugin-health, {PLUGINS:,} plugins", real_startup, bare_startup)
    print(f"\nWhat a fresh worker pays: a child process, Flask's test client, no HTTP (median of {probes})")
    bare_boot = costs["bare"]["boot"]
    print_row("import the bare app (baseline)", bare_boot, bare_boot)
    print_row("import wsgi (create_app, opening the store)", costs["real"]["boot"], bare_boot)
    for key, _ in paths:
        warm = costs["bare"][f"{key}.warm"]
        print_row(f"{key}: a GET, bare app (baseline)", warm, warm)
        print_row(f"{key}: first GET in a worker, bare app", costs["bare"][f"{key}.cold"], warm)
        print_row(f"{key}: first GET in a worker (cache cold)", costs["real"][f"{key}.cold"], warm)
        print_row(f"{key}: next GETs (cache warm)", costs["real"][f"{key}.warm"], warm)


if __name__ == "__main__":
    main()
