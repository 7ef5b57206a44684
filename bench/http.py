"""HTTP benchmark: the health routes under gunicorn with 1,000 plugins, as ratios to a bare Flask route.

Run from the repository root, in the project's venv, with ``wrk`` on ``PATH`` (Debian package ``wrk``)::

    python bench/http.py [--quick]

It takes about 2 minutes (``--quick``: one 2 s round per route and one worker probe, about 40 s). It writes
1,000 trivial plugins and a run directory into a temporary directory, then starts two gunicorn servers, each on
a free port of 127.0.0.1:

* the service: ``gunicorn -c gunicorn.conf.py -b 127.0.0.1:<port> wsgi:app``; its ``on_starting`` hook starts
  the plugin host, which loads the 1,000 plugins (health checks every 3,600 s, so none run during the
  measurements);
* the baseline: ``gunicorn -c gunicorn.conf.py -b 127.0.0.1:<port> bench._bare_app:app`` with
  ``PLUGIN_HEALTH_HOST_MODE=embedded``, so the same hook returns at once and starts nothing. Both servers thus
  run with exactly the same settings (the repo's ``gunicorn.conf.py``: sync workers, worker count, keepalive,
  timeouts, ``max_requests`` recycling); only the WSGI app differs. ``bench/_bare_app.py`` serves canned
  copies of the service's real answers (same body bytes, status, ``Content-Type``, ``ETag`` and
  ``Cache-Control``) fetched just before, so both servers put the same bytes on the wire.

For each route (one plugin's health, the list of all 1,000), plain and with ``If-None-Match: <the ETag of a
first GET>`` (the 304 path, checked to answer 304 before and after), it warms both servers up for 1 s, then
runs ``wrk -t2 -c16 -d4s --latency`` three times, alternating baseline and service (the machines are shared
and noisy: pairing each run with its neighbour cancels slow drifts; 4 s, long enough that the rounds together see
a few workers recycled by ``max_requests``, whose cold caches are part of the cost).
It prints the medians of requests/s and of wrk's mean and 99th-percentile latency, the workers gunicorn
booted during the runs (``max_requests`` recycling), each round's ratio and their median.

It also prints the time from starting gunicorn to ``/startupz`` answering 200, for the service with 1,000
plugins and for the bare app, and what a fresh worker pays (importing the app, then its first and later
requests, with Flask's test client in a child process). Both servers are stopped (SIGTERM to the master,
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
from dataclasses import dataclass
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


def check_304(servers: list[Server], path: str, etag: str, tries: int = 20) -> None:
    """Every one of ``tries`` conditional GETs (spread over the workers) answers 304."""
    for server in servers:
        statuses = {fetch(server.port, path, {"If-None-Match": etag}).status for _ in range(tries)}
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
    """One measured route: what is printed, the path, the request headers and the answer it expects."""

    title: str
    path: str
    headers: dict[str, str]
    reply: Reply


def measure(
    case: Case, bare: Server, real: Server, rounds: int, wrk: list[str]
) -> list[tuple[WrkResult, WrkResult]]:
    """Warm both servers up, then ``rounds`` alternating wrk runs: (baseline, service) per round."""
    etag = case.headers.get("If-None-Match")
    if etag:
        check_304([bare, real], case.path, etag)
    warm_up(bare, case.path, case.headers, WARMUP)
    warm_up(real, case.path, case.headers, WARMUP)
    pairs = [
        (run_wrk(bare, case.path, case.headers, wrk), run_wrk(real, case.path, case.headers, wrk))
        for _ in range(rounds)
    ]
    if etag:
        check_304([bare, real], case.path, etag)  # the ETag still held after the runs
    return pairs


def summary(results: list[WrkResult]) -> tuple[float, float, float, int]:
    """Median requests/s, median mean latency, median p99 latency, and workers booted over all rounds."""
    return (
        statistics.median(r.rps for r in results),
        statistics.median(r.latency_avg for r in results),
        statistics.median(r.latency_p99 for r in results),
        sum(r.boots for r in results),
    )


def print_case(case: Case, rounds: list[tuple[WrkResult, WrkResult]]) -> None:
    body = 0 if case.headers else len(case.reply.body)
    status = 304 if case.headers else case.reply.status
    print(f"\n{case.title} ({status}, {body:,} B)")
    print(f"  {'':<{LABEL}}{'req/s':>9}{'lat avg':>11}{'lat p99':>11}{'boots':>7}{'ratio':>8}  per round")
    bare = summary([b for b, _ in rounds])
    real = summary([r for _, r in rounds])
    ratios = [r.rps / b.rps for b, r in rounds]
    for label, (rps, avg, p99, boots), ratio, extra in (
        ("bare Flask route, same bytes (baseline)", bare, 1.0, ""),
        ("plugin-health", real, statistics.median(ratios), " ".join(f"{x:.2f}" for x in ratios)),
    ):
        line = f"  {label:<{LABEL}}{rps:>9,.0f}{fmt_time(avg):>11}{fmt_time(p99):>11}{boots:>7}{ratio:>8.2f}  {extra}"
        print(line.rstrip())
    bad = sum(r.bad_status + r.socket_errors for pair in rounds for r in pair)
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

        real = Server("service", "wsgi:app", real_env, work / "service.log")
        servers.append(real)
        real_startup = real.start()  # measured alone: nothing else runs yet
        real.wait_for_workers(workers)
        health_path, list_path = f"/v1/plugins/{PROBE}/health", "/v1/plugins/"
        health, listing = fetch(real.port, health_path), fetch(real.port, list_path)
        running = [entry["state"] for entry in json.loads(listing.body)].count("RUNNING")
        can(canned, "health", health)
        can(canned, "list", listing)

        bare = Server("bare", "bench._bare_app:app", bare_env, work / "bare.log")
        servers.append(bare)
        bare_startup = bare.start()
        bare.wait_for_workers(workers)
        for path, reply in ((health_path, health), (list_path, listing)):
            if not same_answer(reply, fetch(bare.port, path)):
                raise RuntimeError(f"the bare app's {path} differs from the service's")

        paths = [("health", health_path), ("list", list_path)]
        reader_env = {**real_env, "PLUGIN_HEALTH_HOST_MODE": "external"}  # what gunicorn's workers get
        costs = {
            "bare": worker_costs(bare_env, "bench._bare_app", paths, probes),
            "real": worker_costs(reader_env, "wsgi", paths, probes),
        }

        cases = [
            Case(f"GET {health_path}", health_path, {}, health),
            Case("GET /v1/plugins/", list_path, {}, listing),
            Case(f"GET {health_path}, If-None-Match", health_path, {"If-None-Match": health.headers["etag"]}, health),
            Case("GET /v1/plugins/, If-None-Match", list_path, {"If-None-Match": listing.headers["etag"]}, listing),
        ]
        results = [(case, measure(case, bare, real, rounds, wrk)) for case in cases]

    print(f"Python {sys.version.split()[0]}, {os.cpu_count()} CPUs, {PLUGINS:,} plugins ({running:,} RUNNING)")
    print(
        f"both servers: gunicorn -c gunicorn.conf.py, {describe(conf)}"
    )
    print(f"{' '.join(wrk[:4])} --latency, {rounds} rounds alternating baseline and service; columns are medians,")
    print(
        f"boots = workers gunicorn booted during the {rounds} runs, ratio = median of the rounds' req/s ratios"
    )
    for case, rounds in results:
        print_case(case, rounds)
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
