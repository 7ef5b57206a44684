"""Several instances: tool calls per second from one load generator against one instance, then against three.

Run from the repository root, in the project's venv, with ``wrk`` and ``redis-server`` on ``PATH``::

    python bench/cluster.py [--quick]

It starts a ``redis-server`` (no persistence) and three instances on it (``i1``, ``i2``, ``i3``; each
``gunicorn -c gunicorn.conf.py wsgi:app`` with the config's workers, its core and its own run directory), each on a
free port of 127.0.0.1, hosting one trivial plugin whose tool returns its argument. All three run during every
measurement; only where the load goes differs. The load generator is the same wrk command each time,
``wrk -t3 -c12 -d5s --latency`` posting ``{"args": [1]}`` to ``/v1/plugins/echo/tools/echo`` with the bearer
token; a Lua ``setup`` gives each of its three threads (4 connections each) its address: all three the same
instance (the baseline), or one instance each (round-robin over the three). 12 connections stay under the
plugin's queue limit (16), so no call is refused.

After a 1 s warm-up of each, the two are measured in alternating rounds (3 rounds of 5 s; ``--quick``: one of
3 s): the machine is shared and noisy, and pairing each run with its neighbour cancels slow drifts. It prints the
medians of calls/s and of wrk's 50th and 99th percentile latencies, and the ratio three / one (the median of the
rounds' ratios) as the figure. Everything it starts is stopped however the run ends (about 45 s; ``--quick`` 25).

Like ``bench/http.py``, it runs with ``bench/`` first on ``sys.path`` (whose ``http.py`` shadows the standard
library's), so it speaks HTTP with ``_serve``'s plain-socket client and Redis's protocol over a plain socket.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from _serve import Server, base_env, describe, fetch, fmt_time, free_port, gunicorn_settings, servers_stopped

TOKEN = "bench-cluster-token"
INSTANCES = 3
PATH = "/v1/plugins/echo/tools/echo"
BODY = json.dumps({"args": [1]})
PLUGIN = "from plugin_health import Plugin, tool\n\n\nclass Echo(Plugin):\n    name = 'echo'\n\n" \
         "    @tool\n    def echo(self, value):\n        return value\n"
THREADS, CONNECTIONS = 3, 12  # one wrk thread a port; under the plugin's queue limit (16)
ROUNDS, SECONDS = 3, 5
QUICK_ROUNDS, QUICK_SECONDS = 1, 3
LABEL = 44
SCRIPT = """wrk.method = "POST"
wrk.body = {body}
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer {token}"
local ports = {{{ports}}}
local started = 0
function setup(thread)
  thread.addr = wrk.lookup("127.0.0.1", tostring(ports[started % #ports + 1]))[1]
  started = started + 1
end
"""


@dataclass(frozen=True)
class Run:
    """What one wrk run measured."""

    calls: float  # a second
    p50: float  # seconds
    p99: float
    requests: int
    bad: int  # answers of 400 or more, and socket errors


@contextmanager
def redis_server(directory: Path) -> Iterator[int]:
    """A ``redis-server`` without persistence on a free loopback port (its port), killed on the way out."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not installed (apt-get install redis-server)")
    port = free_port()
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir",
         str(directory)], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while not _pong(port):
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.05)
        yield port
    finally:
        process.kill()
        process.wait()


def _pong(port: int) -> bool:
    with suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5) as conn:
        conn.sendall(b"PING\r\n")
        return conn.recv(16).startswith(b"+PONG")
    return False


def call(port: int) -> int:
    """One tool call over a plain socket; its status."""
    head = (f"POST {PATH} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n"
            f"Authorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\nContent-Length: {len(BODY)}\r\n\r\n")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head.encode() + BODY.encode())
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return int(answer.split(b" ", 2)[1])


def wrk(ports: Sequence[int], seconds: int, script: Path) -> Run:
    """One wrk run whose threads go to ``ports`` in turn."""
    script.write_text(SCRIPT.format(body=json.dumps(BODY), token=TOKEN, ports=", ".join(map(str, ports))))
    command = ["wrk", f"-t{THREADS}", f"-c{CONNECTIONS}", f"-d{seconds}s", "--latency", "-s", str(script),
               f"http://127.0.0.1:{ports[0]}{PATH}"]
    out = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 30)
    report = out.stdout
    found = {key: re.search(pattern, report, re.MULTILINE) for key, pattern in {
        "rps": r"Requests/sec:\s+([\d.]+)", "p50": r"^\s+50%\s+(\S+)", "p99": r"^\s+99%\s+(\S+)",
        "total": r"(\d+) requests in"}.items()}
    if out.returncode != 0 or not all(found.values()):
        raise RuntimeError(f"wrk failed ({out.returncode}):\n{report}{out.stderr}")
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", report)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", report)
    return Run(float(found["rps"].group(1)), seconds_of(found["p50"].group(1)),  # type: ignore[union-attr]
               seconds_of(found["p99"].group(1)), int(found["total"].group(1)),  # type: ignore[union-attr]
               (int(bad.group(1)) if bad else 0) + (sum(map(int, errors.groups())) if errors else 0))


def seconds_of(text: str) -> float:
    """wrk's ``1.23ms`` -> 0.00123."""
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()  # type: ignore[union-attr]
    return float(number) * {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}[unit]


def row(label: str, runs: list[Run], ratios: list[float]) -> str:
    """A printed row: medians, the median ratio, the rounds' ratios."""
    calls = statistics.median(r.calls for r in runs)
    p50, p99 = statistics.median(r.p50 for r in runs), statistics.median(r.p99 for r in runs)
    rounds = " ".join(f"{x:.2f}" for x in ratios) if len(ratios) > 1 else ""
    return (f"  {label:<{LABEL}}{calls:>9,.0f}{fmt_time(p50):>11}{fmt_time(p99):>11}"
            f"{statistics.median(ratios):>8.2f}  {rounds}").rstrip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"one round of {QUICK_SECONDS} s")
    quick = parser.parse_args().quick
    rounds, seconds = (QUICK_ROUNDS, QUICK_SECONDS) if quick else (ROUNDS, SECONDS)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))  # stop the servers on SIGTERM too
    servers: list[Server] = []
    with tempfile.TemporaryDirectory(prefix="bench-cluster-") as tmp, redis_server(Path(tmp)) as redis_port, \
            servers_stopped(servers):
        work = Path(tmp)
        (work / "plugins").mkdir()
        (work / "plugins" / "echo.py").write_text(PLUGIN)
        env = {**base_env(), "PLUGIN_HEALTH_PLUGIN_PATH": str(work / "plugins"), "PLUGIN_HEALTH_ADMIN_TOKEN": TOKEN,
               "PLUGIN_HEALTH_STORE_URL": f"redis://127.0.0.1:{redis_port}/0"}
        conf = gunicorn_settings(env)
        for number in range(1, INSTANCES + 1):
            run_dir = work / f"i{number}"
            server = Server(f"i{number}", "wsgi:app", {**env, "PLUGIN_HEALTH_RUN_DIR": str(run_dir),
                                                      "PLUGIN_HEALTH_INSTANCE": f"i{number}"}, work / f"i{number}.log")
            servers.append(server)
            server.start()
            server.wait_for_workers(int(str(conf["workers"])))
        for server in servers:
            status = call(server.port)
            if status != 200 or fetch(server.port, "/v1/plugins/echo/health").status != 200:
                raise RuntimeError(f"{server.label}: the tool call answered {status}:\n{server.tail()}")
        one, three = [servers[0].port], [s.port for s in servers]
        script = work / "load.lua"
        for ports in (one, three):
            wrk(ports, 1, script)  # warm-up: every worker's connections and caches
        measured: list[tuple[Run, Run]] = [(wrk(one, seconds, script), wrk(three, seconds, script))
                                           for _ in range(rounds)]

    print(f"Python {sys.version.split()[0]}, {os.cpu_count()} CPUs, {INSTANCES} instances on one redis-server, "
          "all running throughout")
    print(f"each: gunicorn -c gunicorn.conf.py, {describe(conf)}; one plugin, a tool that returns its argument")
    print(f"load: wrk -t{THREADS} -c{CONNECTIONS} -d{seconds}s --latency, POST {PATH} with the bearer token; "
          f"its threads all on one instance, or one on each; {rounds} alternating round(s), medians; "
          "ratio = calls/s against one instance's")
    print(f"\ntool calls\n  {'':<{LABEL}}{'calls/s':>9}{'p50':>11}{'p99':>11}{'ratio':>8}  per round")
    print(row("one instance (baseline)", [a for a, _ in measured], [1.0]))
    ratios = [b.calls / a.calls for a, b in measured]
    print(row(f"{INSTANCES} instances, round-robin", [b for _, b in measured], ratios))
    bad = sum(r.bad for pair in measured for r in pair)
    if bad:
        print(f"  !! {bad} answers >= 400 or socket errors during these runs")
        sys.exit(1)


if __name__ == "__main__":
    main()
