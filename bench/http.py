"""HTTP benchmark: the health routes under gunicorn with 1,000 plugins, as ratios to a bare Flask route.

Run from the repository root, in the project's venv, with ``wrk`` on ``PATH`` (Debian package ``wrk``)::

    python bench/http.py

It takes about 2 minutes. It writes 1,000 trivial plugins and a run directory into a temporary directory, then
starts two gunicorn servers, each on a free port of 127.0.0.1:

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
and noisy: pairing each run with its neighbour cancels slow drifts; 4 s, because under this load
``max_requests`` recycles the workers in waves about every 3 s, and a shorter run may catch one or none).
It prints the medians of requests/s and of wrk's mean and 99th-percentile latency, the workers gunicorn
booted during the runs (``max_requests`` recycling), each round's ratio and their median.

It also prints the time from starting gunicorn to ``/startupz`` answering 200, for the service with 1,000
plugins and for the bare app, and what a fresh worker pays (importing the app, then its first and later
requests, with Flask's test client in a child process). Both servers are stopped (SIGTERM to the master,
then SIGKILL of its process group) however the run ends.

This module shadows the standard library's ``http`` for code run from ``bench/``, so it speaks HTTP over a
plain socket and never imports ``plugin_health`` (or anything that imports ``http``) itself.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PLUGINS = 1000
PROBE = "p00500"  # the plugin whose health is fetched
ROUNDS = 3  # alternating wrk runs against the baseline and the service, per route (the machine is noisy)
WRK = ["wrk", "-t2", "-c16", "-d4s", "--latency"]
LABEL = 52  # width of the figure column
WARMUP = ["wrk", "-t2", "-c16", "-d1s"]
READY_WITHIN = 120.0  # seconds allowed for a server to answer /startupz with 200
STOP_WITHIN = 40.0  # seconds between SIGTERM and SIGKILL (the conf's graceful_timeout is 30)
PLUGIN_SOURCE = "from plugin_health import Plugin\nclass P(Plugin):\n    pass\n"
CONF_KEYS = ("workers", "worker_class", "keepalive", "timeout", "max_requests", "max_requests_jitter")


@dataclass(frozen=True)
class Reply:
    """One HTTP response: status, headers (names lower-cased) and body bytes."""

    status: int
    headers: dict[str, str]
    body: bytes


def fetch(port: int, path: str, headers: Mapping[str, str] | None = None, timeout: float = 10.0) -> Reply:
    """``GET path`` from 127.0.0.1:``port`` over a plain socket (HTTP/1.1, ``Connection: close``)."""
    lines = [f"GET {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        chunks = []
        while chunk := sock.recv(1 << 16):
            chunks.append(chunk)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    if not re.match(r"HTTP/1\.[01] \d{3}", status_line):
        raise ConnectionError(f"GET {path}: no HTTP response ({status_line[:40]!r})")  # an OSError: retried
    fields = {name.strip().lower(): value.strip() for name, _, value in (h.partition(":") for h in header_lines)}
    length = fields.get("content-length")
    if length is not None and int(length) != len(body):
        raise RuntimeError(f"GET {path}: {len(body)} body bytes, Content-Length says {length}")
    return Reply(int(status_line.split()[1]), fields, body)


class Server:
    """A gunicorn master started by this benchmark, in a process group of its own, logging to a file."""

    def __init__(self, label: str, app: str, env: Mapping[str, str], log: Path) -> None:
        self.label = label
        self.port = free_port()
        self.log = log
        self.command = [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "-b", f"127.0.0.1:{self.port}", app]
        self.env = dict(env)
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> float:
        """Start gunicorn; return the seconds until ``/startupz`` answered 200."""
        began = time.monotonic()
        with open(self.log, "wb") as out:
            self.process = subprocess.Popen(
                self.command, cwd=ROOT, env=self.env, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                start_new_session=True,
            )
        deadline = began + READY_WITHIN
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.label}: gunicorn exited with {self.process.returncode}:\n{self.tail()}")
            with contextlib.suppress(OSError):
                if fetch(self.port, "/startupz", timeout=2.0).status == 200:
                    return time.monotonic() - began
            time.sleep(0.05)
        raise RuntimeError(f"{self.label}: /startupz not 200 within {READY_WITHIN:.0f} s:\n{self.tail()}")

    def boots(self) -> int:
        """How many workers this master has booted so far (its log's ``Booting worker`` lines)."""
        return self.log.read_text(errors="replace").count("Booting worker")

    def wait_for_workers(self, count: int, within: float = 30.0) -> None:
        """Wait (bounded) until ``count`` workers have booted."""
        deadline = time.monotonic() + within
        while self.boots() < count and time.monotonic() < deadline:
            time.sleep(0.05)

    def tail(self, lines: int = 20) -> str:
        """The end of the server's log."""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        """SIGTERM to the master, wait, then SIGKILL to its whole process group (workers, plugin host)."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_WITHIN)
            except subprocess.TimeoutExpired:
                print(f"{self.label}: gunicorn did not stop within {STOP_WITHIN:.0f} s; killing it", file=sys.stderr)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)  # its group is ours alone (start_new_session)
        self.process.wait()


def free_port() -> int:
    """A port of 127.0.0.1 that nothing listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass(frozen=True)
class WrkResult:
    """What one wrk run measured."""

    rps: float
    latency_avg: float  # seconds
    latency_p99: float  # seconds
    requests: int
    bad_status: int  # responses with a status of 400 or more
    socket_errors: int
    boots: int  # workers gunicorn booted during the run


_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}


def _seconds(text: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()  # type: ignore[union-attr]
    return float(number) * _UNITS[unit]


def wrk_args(server: Server, path: str, headers: Mapping[str, str]) -> list[str]:
    """wrk's header flags and URL."""
    flags = [arg for name, value in headers.items() for arg in ("-H", f"{name}: {value}")]
    return [*flags, f"http://127.0.0.1:{server.port}{path}"]


def warm_up(server: Server, path: str, headers: Mapping[str, str]) -> None:
    """One second of the same load, unmeasured (fills every worker's cache)."""
    subprocess.run([*WARMUP, *wrk_args(server, path, headers)], check=True, capture_output=True)


def run_wrk(server: Server, path: str, headers: Mapping[str, str]) -> WrkResult:
    """Measure ``GET path`` with wrk and parse its report."""
    booted = server.boots()
    out = subprocess.run([*WRK, *wrk_args(server, path, headers)], check=True, capture_output=True, text=True).stdout
    booted = server.boots() - booted
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    avg = re.search(r"^\s+Latency\s+(\S+)", out, re.MULTILINE)
    p99 = re.search(r"^\s+99%\s+(\S+)", out, re.MULTILINE)
    total = re.search(r"(\d+) requests in", out)
    if rps is None or avg is None or p99 is None or total is None:
        raise RuntimeError(f"cannot parse wrk's report:\n{out}")
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return WrkResult(
        float(rps.group(1)), _seconds(avg.group(1)), _seconds(p99.group(1)), int(total.group(1)),
        int(bad.group(1)) if bad else 0, sum(int(n) for n in errors.groups()) if errors else 0, booted,
    )


def write_plugins(directory: Path, count: int) -> None:
    """``count`` trivial plugins, one module each (``p00000.py`` ...)."""
    directory.mkdir()
    for i in range(count):
        (directory / f"p{i:05d}.py").write_text(PLUGIN_SOURCE)


def base_env() -> dict[str, str]:
    """This environment without any PLUGIN_HEALTH_* setting or GUNICORN_CMD_ARGS (the same for both servers)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("PLUGIN_HEALTH_") and k != "GUNICORN_CMD_ARGS"}


def gunicorn_settings(env: Mapping[str, str]) -> dict[str, object]:
    """The settings gunicorn.conf.py resolves to in ``env`` (read in a child: it imports plugin_health)."""
    code = (
        "import json, runpy; c = runpy.run_path('gunicorn.conf.py'); "
        f"print(json.dumps({{k: c[k] for k in {CONF_KEYS!r}}}))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=dict(env), check=True, capture_output=True)
    settings: dict[str, object] = json.loads(out.stdout)
    return settings


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


@contextlib.contextmanager
def servers_stopped(servers: list[Server]) -> Iterator[None]:
    """Stop every server on the way out, whatever happens."""
    try:
        yield
    finally:
        for server in servers:
            server.stop()


def fmt_time(seconds: float) -> str:
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} us"
    if seconds < 1.0:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.2f} s"


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


def measure(case: Case, bare: Server, real: Server) -> list[tuple[WrkResult, WrkResult]]:
    """Warm both servers up, then ROUNDS alternating wrk runs: (baseline, service) per round."""
    etag = case.headers.get("If-None-Match")
    if etag:
        check_304([bare, real], case.path, etag)
    warm_up(bare, case.path, case.headers)
    warm_up(real, case.path, case.headers)
    rounds = [(run_wrk(bare, case.path, case.headers), run_wrk(real, case.path, case.headers)) for _ in range(ROUNDS)]
    if etag:
        check_304([bare, real], case.path, etag)  # the ETag still held after the runs
    return rounds


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
            "bare": worker_costs(bare_env, "bench._bare_app", paths),
            "real": worker_costs(reader_env, "wsgi", paths),
        }

        cases = [
            Case(f"GET {health_path}", health_path, {}, health),
            Case("GET /v1/plugins/", list_path, {}, listing),
            Case(f"GET {health_path}, If-None-Match", health_path, {"If-None-Match": health.headers["etag"]}, health),
            Case("GET /v1/plugins/, If-None-Match", list_path, {"If-None-Match": listing.headers["etag"]}, listing),
        ]
        results = [(case, measure(case, bare, real)) for case in cases]

    print(f"Python {sys.version.split()[0]}, {os.cpu_count()} CPUs, {PLUGINS:,} plugins ({running:,} RUNNING)")
    print(
        f"both servers: gunicorn -c gunicorn.conf.py, {conf['workers']} {conf['worker_class']} workers,"
        f" max_requests {conf['max_requests']} + jitter {conf['max_requests_jitter']},"
        f" keepalive {conf['keepalive']} (unused by sync)"
    )
    print(f"{' '.join(WRK[:4])} --latency, {ROUNDS} rounds alternating baseline and service; columns are medians,")
    print(
        f"boots = workers gunicorn booted during the {ROUNDS} runs, ratio = median of the rounds' req/s ratios"
    )
    for case, rounds in results:
        print_case(case, rounds)
    print("\ngunicorn start to /startupz 200")
    print_row("bare Flask app (baseline)", bare_startup, bare_startup)
    print_row(f"plugin-health, {PLUGINS:,} plugins", real_startup, bare_startup)
    print("\nWhat a fresh worker pays: a child process, Flask's test client, no HTTP (median of 3)")
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
