"""Chaos and load: two plugin-health instances on one Redis, under fire, losing nothing.

Two service instances (each real gunicorn with 2 workers and a plugin host, ``max_requests`` low so workers
recycle under load) share one real ``redis-server``; one host leads, the other stands by. Plugins fail and
recover on a schedule, a tool crashes its process now and then, and halfway through the leading host is killed
with ``SIGKILL`` so that the standby takes over. Meanwhile a bounded load (``--requests`` at ``--concurrency``)
goes to both instances over loopback: the read routes, conditional reads, tool calls and operator actions.

The report: requests sent and answered, unexpected status codes (must be 0), connection errors (must be 0),
server processes lost (must be 0), transitions recorded in Redis against those the hosts counted (none lost),
and the memory growth of the service's processes. The exit status is 1 when a requirement failed.

Run: ``python tests/chaos/chaos.py --requests 20000 --concurrency 32`` (about a minute); tests/chaos runs a
short version.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import sys
import tempfile
import textwrap
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the real servers' helpers

from e2e.server import Server, alive, cmdline, process_table, start_gunicorn
from redis_server import RedisServer

TOKEN = "chaos-operator-token"
PLUGINS = {
    "steady": """
        critical = True
        @tool
        def echo(self, value):
            return value
    """,
    "flapper": """
        def health_check(self):
            return int(time.time() / 1.5) % 3 != 0  # fails one period in three, then recovers on restart
    """,
    "dependent": "requires = ('flapper',)\n",
    "crashy": """
        isolation = 'process'
        @tool
        def maybe_crash(self, n):
            if n % 7 == 0:
                os._exit(3)
            return n
    """,
    "napper": """
        timeout = 0.5
        @tool
        def nap(self, seconds):
            time.sleep(seconds)
            return seconds
    """,
    "toggle": "pass\n",
}
ENV = {
    "PLUGIN_HEALTH_ADMIN_TOKEN": TOKEN,
    "PLUGIN_HEALTH_HEALTH_INTERVAL": "0.2",
    "PLUGIN_HEALTH_FAILURE_THRESHOLD": "1",
    "PLUGIN_HEALTH_MAX_RESTARTS": "1000",
    "PLUGIN_HEALTH_RESTART_WINDOW": "1",
    "PLUGIN_HEALTH_BACKOFF_BASE": "0.1",
    "PLUGIN_HEALTH_BACKOFF_MAX": "0.4",
    "PLUGIN_HEALTH_HISTORY_LIMIT": "1000000",  # keep every transition, to count them
    "GUNICORN_CMD_ARGS": "--max-requests 300 --max-requests-jitter 100",
}
NAMES = sorted(PLUGINS)

#: What each kind of request may answer; anything else is unexpected.
EXPECTED: dict[str, set[int]] = {
    "list": {200}, "list-304": {200, 304}, "health": {200, 503}, "aggregate": {200, 503}, "livez": {200},
    "readyz": {200, 503}, "history": {200}, "metrics": {200}, "echo": {200}, "crash": {200, 502, 503},
    "nap": {200, 503, 504}, "restart": {200, 409}, "disable": {200, 409}, "enable": {200, 409},
}
MIX = [("list", 14), ("list-304", 8), ("health", 24), ("aggregate", 8), ("livez", 5), ("readyz", 5),
       ("history", 6), ("metrics", 2), ("echo", 12), ("crash", 6), ("nap", 3), ("restart", 2), ("disable", 2),
       ("enable", 3)]


@dataclass
class Tally:
    """What the load saw."""

    sent: int = 0
    answered: int = 0
    statuses: Counter[tuple[str, int]] = field(default_factory=Counter)
    unexpected: Counter[tuple[str, int]] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)


def write_plugins(directory: Path) -> None:
    """The plugins of the run."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, body in PLUGINS.items():
        (directory / f"{name}.py").write_text(
            "import os, time\nfrom plugin_health import Plugin, tool\n\nclass P(Plugin):\n"
            + textwrap.indent(textwrap.dedent(body), "    ")
        )


def request_for(kind: str, rng: random.Random, n: int) -> tuple[str, str, dict[str, str], str | None]:
    """Method, path, headers and body of one request of ``kind``."""
    auth = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    name = rng.choice(NAMES)
    return {
        "list": ("GET", "/v1/plugins/", {}, None),
        "list-304": ("GET", "/v1/plugins/", {"If-None-Match": '"stale-or-current"'}, None),
        "health": ("GET", f"/v1/plugins/{name}/health", {}, None),
        "aggregate": ("GET", "/v1/health", {}, None),
        "livez": ("GET", "/livez", {}, None),
        "readyz": ("GET", "/readyz", {}, None),
        "history": ("GET", f"/v1/plugins/{name}/history", {}, None),
        "metrics": ("GET", "/metrics", {}, None),
        "echo": ("POST", "/v1/plugins/steady/tools/echo", auth, json.dumps({"args": [n]})),
        "crash": ("POST", "/v1/plugins/crashy/tools/maybe_crash", auth, json.dumps({"args": [n]})),
        "nap": ("POST", "/v1/plugins/napper/tools/nap", auth, json.dumps({"args": [rng.choice([0.01, 0.9])]})),
        "restart": ("POST", "/v1/plugins/flapper/restart", auth, None),
        "disable": ("POST", "/v1/plugins/toggle/disable", auth, None),
        "enable": ("POST", "/v1/plugins/toggle/enable", auth, None),
    }[kind]


def load(servers: list[Server], requests: int, concurrency: int, tally: Tally, seed: int = 7) -> None:
    """Send ``requests`` requests over ``concurrency`` threads, alternating between the instances."""
    kinds = [kind for kind, weight in MIX for _ in range(weight)]
    etags: dict[int, str] = {}

    def one(n: int) -> None:
        rng = random.Random(seed * 1_000_003 + n)
        kind = rng.choice(kinds)
        server = servers[n % len(servers)]
        method, path, headers, body = request_for(kind, rng, n)
        if kind == "list-304" and n % len(servers) in etags:
            headers = {"If-None-Match": etags[n % len(servers)]}
        with tally.lock:
            tally.sent += 1
        try:
            answer = server.get(path, headers=headers, method=method, body=body)
        except OSError as err:
            with tally.lock:
                tally.errors[type(err).__name__] += 1
            return
        if kind == "list" and "etag" in answer.headers:
            etags[n % len(servers)] = answer.headers["etag"]
        with tally.lock:
            tally.answered += 1
            tally.statuses[(kind, answer.status)] += 1
            if answer.status not in EXPECTED[kind]:
                tally.unexpected[(kind, answer.status)] += 1

    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, range(requests)))


def rss_mib(pids: set[int]) -> float:
    """The resident memory of ``pids``, in MiB."""
    total = 0
    for pid in pids:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        match = re.search(r"VmRSS:\s+(\d+) kB", status)
        total += int(match.group(1)) if match else 0
    return total / 1024


def service_pids(servers: list[Server]) -> set[int]:
    """Every live process of the service: masters, workers, hosts and their children."""
    return {pid for s in servers for pid in s.descendants()} | {s.process.pid for s in servers}


def metric_sum(text: str, name: str) -> float:
    """The sum of every sample of ``name`` in a Prometheus exposition."""
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + "{"))


def leader(servers: list[Server]) -> int | None:
    """The pid of the leading host: a standby waits for the lease on its main thread alone, a leader runs its
    heartbeat, publisher and control threads beside it."""
    hosts = [pid for s in servers for pid in s.descendants() if "plugin_health.runtime.core_main" in cmdline(pid)]
    return next((pid for pid in hosts if _threads(pid) > 1), None)


def _threads(pid: int) -> int:
    try:
        match = re.search(r"Threads:\s+(\d+)", Path(f"/proc/{pid}/status").read_text())
    except OSError:
        return 0
    return int(match.group(1)) if match else 0


def run(requests: int, concurrency: int, work: Path) -> dict[str, object]:
    """The whole chaos run; the report as a mapping."""
    redis = RedisServer(work / "redis").start()
    plugins = work / "plugins"
    write_plugins(plugins)
    env = {**ENV, "PLUGIN_HEALTH_STORE_URL": redis.url}
    servers: list[Server] = []
    try:
        for i in range(2):
            directory = work / f"instance{i}"
            directory.mkdir()
            servers.append(start_gunicorn(directory, plugins, env, workers=2))
        masters = [s.process.pid for s in servers]
        time.sleep(1.0)
        before = rss_mib(service_pids(servers))
        tally = Tally()
        first_half = requests // 2
        started = time.monotonic()
        load(servers, first_half, concurrency, tally)
        killed = leader(servers)
        if killed is not None:
            os.kill(killed, signal.SIGKILL)  # the standby must take over; the dead one's master starts another
        load(servers, requests - first_half, concurrency, tally, seed=11)
        elapsed = time.monotonic() - started
        time.sleep(2.0)  # the last passing checks' times are published once a second
        after = rss_mib(service_pids(servers))
        # Transitions: what the hosts counted (each instance's /metrics sums its own processes, the dead host's
        # included) against what Redis holds (every transition of every plugin, the history is not capped here),
        # read after: plugins go on moving meanwhile, so Redis may hold a few more, never fewer.
        counted = sum(metric_sum(s.get("/metrics").text, "plugin_health_transitions_total") for s in servers)
        recorded = sum(len(json.loads(servers[0].get(f"/v1/plugins/{name}/history").body)) for name in NAMES)
        table = process_table()
        lost_masters = [pid for pid in masters if not alive(pid)]
        workers = [len([p for p, parent in table.items() if parent == s.process.pid and alive(p)
                        and "gunicorn" in cmdline(p)]) for s in servers]
        hosts = [len([p for p, parent in table.items() if parent == s.process.pid and alive(p)
                      and "plugin_health.runtime.core_main" in cmdline(p)]) for s in servers]
        lost = len(lost_masters) + sum(max(0, 2 - w) for w in workers) + sum(max(0, 1 - h) for h in hosts)
        recycled = sum(len(s.seen) for s in servers)
        return {
            "requests sent": tally.sent,
            "requests answered": tally.answered,
            "requests per second": round(tally.answered / elapsed),
            "unexpected status codes": sum(tally.unexpected.values()),
            "unexpected detail": {f"{k} {s}": c for (k, s), c in sorted(tally.unexpected.items())},
            "connection errors": sum(tally.errors.values()),
            "connection error detail": dict(tally.errors),
            "server processes lost": lost,
            "leading host killed": killed is not None,
            "processes seen (workers recycled included)": recycled,
            "transitions recorded in Redis": recorded,
            "transitions counted by the hosts": int(counted),
            "transitions lost": max(0, int(counted) - recorded),
            "service memory before (MiB)": round(before, 1),
            "service memory after (MiB)": round(after, 1),
            "memory growth (MiB)": round(after - before, 1),
            "statuses": {f"{k} {s}": c for (k, s), c in sorted(tally.statuses.items())},
        }
    finally:
        for server in servers:
            server.stop()
        redis.stop()


def failures(report: dict[str, object]) -> list[str]:
    """The requirements the report does not meet."""
    problems = []
    if report["requests answered"] != report["requests sent"]:
        problems.append("not every request was answered")
    for key in ("unexpected status codes", "connection errors", "server processes lost", "transitions lost"):
        if report[key]:
            problems.append(f"{key}: {report[key]}")
    return problems


def main() -> None:
    """Run, print the report, exit 1 if a requirement failed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="plugin-health-chaos-") as work:
        report = run(args.requests, args.concurrency, Path(work))
    width = max(len(k) for k in report)
    for key, value in report.items():
        if key != "statuses":
            print(f"{key:<{width}}  {value}")
    print("statuses by request kind:", json.dumps(report["statuses"]))
    print("REPORT", json.dumps(report))
    problems = failures(report)
    print("RESULT:", "pass" if not problems else "FAIL: " + "; ".join(problems))
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
