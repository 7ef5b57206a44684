"""``GET /metrics`` under gunicorn with 10 and 10,000 plugins: the time and size of a scrape, as ratios.

Run from the repository root, in the project's venv::

    python bench/metrics.py [--quick] [--sizes 10,10000] [--scrapes 30]

For each number of plugins it writes that many plugins (``p00000.py`` ...; each has a tool ``ping``, and every
tenth one a tool ``boom`` that raises), starts ``gunicorn -c gunicorn.conf.py`` with the repository's settings
(health checks every 3,600 s), waits for ``/startupz``, and by then every plugin has made three calls through the
sandbox (``initialize``, ``start``, its first ``health_check``), so its series exist. It then calls ``ping`` on
up to 100 plugins and ``boom`` on up to 10 (so that failed calls are counted too), GETs ``/metrics`` once to
warm a worker, and times ``--scrapes`` more GETs of it, one after another (each lands on whichever worker
accepts it: the figure is what Prometheus sees; a worker's first scrape reads every snapshot, its next ones only
after the store's version moved), then a third as many right after an operator restart of a plugin (the store's
version moved: the worker reads the snapshots again). It prints the median and p90 scrape time, the median right
after a restart, the body's size and its number of samples, each followed by its ratio to the first (smallest)
number of plugins.

Like ``bench/scale.py``, it speaks HTTP through ``_serve`` and never imports ``plugin_health``.
"""

from __future__ import annotations

import argparse
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from _serve import Server, base_env, describe, fetch, fmt_time, gunicorn_settings, plugins_service, servers_stopped

SIZES = (10, 10_000)
SCRAPES = 30
READY_WITHIN = 600.0
TOKEN = "bench-metrics"
PLUGIN = "from plugin_health import Plugin, tool\nclass P(Plugin):\n    @tool\n    def ping(self):\n        return 1\n"
FAILING = PLUGIN + "    @tool\n    def boom(self):\n        raise KeyError('x')\n"


@dataclass
class Row:
    """What one number of plugins measured."""

    plugins: int
    median: float = 0.0  # seconds a scrape
    p90: float = 0.0
    size: int = 0  # bytes of the last scrape
    samples: int = 0  # its sample lines
    moved: float = 0.0  # median seconds of a scrape right after the store's version moved


def write_plugins(directory: Path, count: int) -> None:
    """``count`` plugins with a tool ``ping``; every tenth also a failing tool ``boom``."""
    directory.mkdir()
    for i in range(count):
        (directory / f"p{i:05d}.py").write_text(FAILING if i % 10 == 0 else PLUGIN)


def post(server: Server, path: str, expect: int) -> None:
    """POST ``path`` with the operator token; it must answer ``expect``."""
    reply = fetch(server.port, path, {"Authorization": f"Bearer {TOKEN}"}, timeout=60.0, method="POST")
    if reply.status != expect:
        raise RuntimeError(f"POST {path} answered {reply.status}, not {expect}")


def measure(plugins: int, work: Path, scrapes: int) -> Row:
    """Start a service with ``plugins`` plugins, make some calls, time ``scrapes`` scrapes, stop it."""
    row = Row(plugins)
    server = plugins_service(plugins, work, TOKEN, READY_WITHIN, write_plugins)
    with servers_stopped([server]):
        server.start()
        step = max(1, plugins // 100)
        for i in range(0, plugins, step):
            post(server, f"/v1/plugins/p{i:05d}/tools/ping", 200)
        for i in range(0, min(plugins, 10 * step * 10), 10 * step):
            post(server, f"/v1/plugins/p{i:05d}/tools/boom", 502)
        fetch(server.port, "/metrics", timeout=120.0)
        times = []
        for _ in range(scrapes):
            began = time.perf_counter()
            reply = fetch(server.port, "/metrics", timeout=120.0)
            times.append(time.perf_counter() - began)
            if reply.status != 200:
                raise RuntimeError(f"GET /metrics answered {reply.status}")
        row.median = statistics.median(times)
        row.p90 = statistics.quantiles(times, n=10)[-1] if len(times) > 1 else times[0]
        row.size = len(reply.body)
        row.samples = sum(1 for line in reply.body.splitlines() if line and not line.startswith(b"#"))
        # The worst case of the workers' caches: each scrape after an operator restart of a plugin (the store's
        # version moved: the scraped worker reads the snapshots again).
        moved = []
        for _ in range(max(3, scrapes // 3)):
            post(server, "/v1/plugins/p00001/restart", 200)
            began = time.perf_counter()
            fetch(server.port, "/metrics", timeout=120.0)
            moved.append(time.perf_counter() - began)
        row.moved = statistics.median(moved)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="10 scrapes, not 30")
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)), help="numbers of plugins, comma-separated")
    parser.add_argument("--scrapes", type=int, default=None, help=f"scrapes timed per size (default {SCRAPES})")
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",")]
    scrapes = args.scrapes or (10 if args.quick else SCRAPES)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))  # stop the servers on SIGTERM too
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-metrics-") as tmp:
        conf = gunicorn_settings(base_env())
        for plugins in sizes:
            work = Path(tmp, str(plugins))
            work.mkdir()
            rows.append(measure(plugins, work, scrapes))

    print(f"Python {sys.version.split()[0]}, gunicorn -c gunicorn.conf.py, {describe(conf)}")
    print(f"GET /metrics, {scrapes} scrapes one after another after one to warm up; each value is followed by its "
          f"ratio to the {rows[0].plugins:,}-plugin row (the baseline)\n")
    base = rows[0]
    print(f"{'plugins':>8}{'scrape p50':>22}{'scrape p90':>22}{'p50, store moved':>22}{'body':>22}{'samples':>20}")
    for row in rows:
        print(f"{row.plugins:>8,}"
              f"{f'{fmt_time(row.median)} ({row.median / base.median:.2f})':>22}"
              f"{f'{fmt_time(row.p90)} ({row.p90 / base.p90:.2f})':>22}"
              f"{f'{fmt_time(row.moved)} ({row.moved / base.moved:.2f})':>22}"
              f"{f'{row.size / 1e3:,.1f} kB ({row.size / base.size:.2f})':>22}"
              f"{f'{row.samples:,} ({row.samples / base.samples:.2f})':>20}")


if __name__ == "__main__":
    main()
