"""The list of 10,000 plugins: a page of 500 against the 10-plugin list, and the whole list's p99, gzip accepted.

Run from the repository root, in the project's venv, with ``wrk`` on ``PATH``::

    python bench/list.py [--quick] [--plugins 10000] [--page 500]

It takes about a minute (``--quick``: one 1 s wrk run per figure). It starts ``gunicorn -c gunicorn.conf.py
wsgi:app`` over 10 trivial plugins, then over 10,000 (each in a temporary directory, health checks every 3,600 s
so none run meanwhile), checks that the pages of 500 concatenate to the whole list and that gzip answers
decompress to it, and measures with ``wrk -t2 -c16 -d3s --latency`` (the best of two runs after a 1 s warm-up):

* ``GET /v1/plugins/`` over 10 plugins (the baseline), then ``GET /v1/plugins/?limit=500`` and the page after it
  (``?limit=500&continue=...``) over 10,000: requests/s, as a ratio to the baseline (goal: at least 0.5);
* ``GET /v1/plugins/`` over 10,000: its p99, against the goal of 100 ms;

each with ``Accept-Encoding: gzip`` (what browsers and HTTP libraries send), and once more without it, for
comparison. Each server is stopped before the next starts, however the run ends.

Like ``bench/scale.py`` it speaks HTTP through ``_serve`` over a plain socket and never imports ``plugin_health``.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import signal
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from _serve import (
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
)

WRK = ["wrk", "-t2", "-c16", "-d3s", "--latency"]
QUICK_WRK = ["wrk", "-t2", "-c16", "-d1s", "--latency"]
WARMUP = ["wrk", "-t2", "-c16", "-d1s"]
GZ = {"Accept-Encoding": "gzip"}
PAGE_GOAL = 0.5  # a page's requests/s against the 10-plugin list's
P99_GOAL = 0.100  # seconds, the whole list with gzip accepted


@dataclass
class Case:
    """One measured request: its label, path and headers, the size of its answer, and what wrk saw."""

    label: str
    path: str
    headers: dict[str, str]
    size: int = 0
    result: WrkResult | None = None


def serve(plugins: int, work: Path) -> Server:
    """A service over ``plugins`` trivial plugins (not started)."""
    work.mkdir()
    return plugins_service(plugins, work)


def pages_match(server: Server, page: int) -> tuple[int, int]:
    """Check that the pages of ``page`` concatenate to the whole list, gzip or not; the pages walked and the
    token after the first page."""
    whole = json.loads(fetch(server.port, "/v1/plugins/", timeout=120.0).body)
    packed = fetch(server.port, "/v1/plugins/", GZ, timeout=120.0)
    unpacked = json.loads(gzip.decompress(packed.body))
    if packed.headers.get("content-encoding") != "gzip" or [e["name"] for e in unpacked] != [e["name"] for e in whole]:
        raise RuntimeError("the gzip list is not the list")
    entries, path, walked = [], f"/v1/plugins/?limit={page}", 0
    while path:
        reply = fetch(server.port, path, GZ, timeout=120.0)
        entries += json.loads(gzip.decompress(reply.body) if reply.headers.get("content-encoding") else reply.body)
        walked += 1
        link = reply.headers.get("link")
        path = link[1:link.index(">")] if link else ""
    # Names, not whole entries: checks published meanwhile (the start's first ones) may change some fields.
    if [e["name"] for e in entries] != [e["name"] for e in whole]:
        raise RuntimeError("the pages do not concatenate to the list")
    return walked, len(whole)


def measure(server: Server, cases: list[Case], wrk: list[str], rounds: int) -> None:
    """Fill in each case's size and best wrk run."""
    for case in cases:
        reply = fetch(server.port, case.path, case.headers, timeout=120.0)
        if reply.status != 200:
            raise RuntimeError(f"GET {case.path} answered {reply.status}")
        case.size = len(reply.body)
        warm_up(server, case.path, case.headers, WARMUP)
        case.result = max((run_wrk(server, case.path, case.headers, wrk) for _ in range(rounds)),
                          key=lambda run: run.rps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="one 1 s wrk run per figure, not the best of two 3 s")
    parser.add_argument("--plugins", type=int, default=10_000, help="plugins of the big list (default 10,000)")
    parser.add_argument("--page", type=int, default=500, help="the page size (default 500)")
    args = parser.parse_args()
    wrk, rounds = (QUICK_WRK, 1) if args.quick else (WRK, 2)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    small = [Case("list, 10 plugins (baseline)", "/v1/plugins/", GZ),
             Case("list, 10 plugins, identity (baseline)", "/v1/plugins/", {})]
    with tempfile.TemporaryDirectory(prefix="bench-list-") as tmp:
        server = serve(10, Path(tmp, "small"))
        with servers_stopped([server]):
            server.start()
            measure(server, small, wrk, rounds)
        server = serve(args.plugins, Path(tmp, "big"))
        with servers_stopped([server]):
            startup = server.start()
            walked, total = pages_match(server, args.page)
            token = fetch(server.port, f"/v1/plugins/?limit={args.page}").headers["x-continue"]
            n = f"{args.plugins:,}"
            big = [Case(f"page of {args.page}, {n} plugins", f"/v1/plugins/?limit={args.page}", GZ),
                   Case(f"2nd page of {args.page}, {n} plugins", f"/v1/plugins/?limit={args.page}&continue={token}",
                        GZ),
                   Case(f"whole list, {n} plugins", "/v1/plugins/", GZ),
                   Case(f"page of {args.page}, {n} plugins, identity", f"/v1/plugins/?limit={args.page}", {}),
                   Case(f"whole list, {n} plugins, identity", "/v1/plugins/", {})]
            measure(server, big, wrk, rounds)
    conf = gunicorn_settings(base_env())
    print(f"Python {sys.version.split()[0]}, {os.cpu_count()} CPUs; gunicorn -c gunicorn.conf.py, {describe(conf)}")
    print(f"{' '.join(wrk[:5])}, the best of {rounds} run(s) after a 1 s warm-up; Accept-Encoding: gzip unless "
          f"'identity'; {n} plugins started in {fmt_time(startup)}; {walked} pages of {args.page} = the {total:,}")
    print()
    base = {"gzip": small[0], "identity": small[1]}
    print(f"  {'request':<44}{'body':>10}{'req/s':>9}{'p99':>11}{'ratio':>8}  goal")
    for case in small + big:
        assert case.result is not None
        ref = base["identity" if case.label.endswith("identity") or "identity" in case.label else "gzip"]
        assert ref.result is not None
        ratio = case.result.rps / ref.result.rps
        goal = ""
        if case.label.startswith("page") and not case.label.endswith("identity"):
            goal = f"page >= {PAGE_GOAL}x the 10-plugin list: {'met' if ratio >= PAGE_GOAL else 'MISSED'}"
        if case.label.startswith("whole") and not case.label.endswith("identity"):
            met = case.result.latency_p99 < P99_GOAL
            goal = (f"p99 < {P99_GOAL * 1000:.0f} ms: {'met' if met else 'MISSED'} "
                    f"({case.result.latency_p99 / P99_GOAL:.2f}x the goal)")
        print(f"  {case.label:<44}{case.size / 1e3:>8,.1f}kB{case.result.rps:>9,.0f}"
              f"{fmt_time(case.result.latency_p99):>11}{ratio:>8.2f}  {goal}")
        if case.result.bad_status or case.result.socket_errors:
            print(f"  !! {case.result.bad_status} responses >= 400, {case.result.socket_errors} socket errors")


if __name__ == "__main__":
    main()
