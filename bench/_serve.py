"""What the HTTP benchmarks share: gunicorn servers they start and stop, a plain-socket client, wrk runs.

``bench/http.py`` and ``bench/scale.py`` import it as ``_serve`` (they run as ``python bench/<name>.py``, which
puts ``bench/`` first on ``sys.path``). There ``bench/http.py`` shadows the standard library's ``http``, so this
module speaks HTTP over a plain socket and imports neither ``plugin_health`` nor anything that imports ``http``;
what needs them (gunicorn's resolved settings) is asked of a child process.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
READY_WITHIN = 120.0  # seconds allowed for a server to answer /startupz with 200
STOP_WITHIN = 40.0  # seconds between SIGTERM and SIGKILL (the conf's graceful_timeout is 30)
PLUGIN_SOURCE = "from plugin_health import Plugin\nclass P(Plugin):\n    pass\n"
CONF_KEYS = ("workers", "worker_class", "threads", "worker_connections", "keepalive", "timeout", "max_requests",
             "max_requests_jitter")


@dataclass(frozen=True)
class Reply:
    """One HTTP response: status, headers (names lower-cased) and body bytes."""

    status: int
    headers: dict[str, str]
    body: bytes


def fetch(
    port: int, path: str, headers: Mapping[str, str] | None = None, timeout: float = 10.0, method: str = "GET"
) -> Reply:
    """``GET path`` (or another bodiless ``method``) from 127.0.0.1:``port`` over a plain socket (HTTP/1.1,
    ``Connection: close``)."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Connection: close"]
    if method != "GET":
        lines.append("Content-Length: 0")
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


def free_port() -> int:
    """A port of 127.0.0.1 that nothing listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Server:
    """A gunicorn master started by a benchmark, in a process group of its own, logging to a file."""

    def __init__(
        self, label: str, app: str, env: Mapping[str, str], log: Path, ready_within: float = READY_WITHIN,
        args: Sequence[str] = (),
    ):
        """``args``: more gunicorn flags (``-k gthread``), after the config file's settings."""
        self.label = label
        self.port = free_port()
        self.log = log
        self.ready_within = ready_within
        self.command = [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "-b", f"127.0.0.1:{self.port}",
                        *args, app]
        self.env = dict(env)
        self.process: subprocess.Popen[bytes] | None = None

    def launch(self) -> None:
        """Spawn gunicorn (in a session of its own, logging to ``log``) and return at once."""
        with open(self.log, "wb") as out:
            self.process = subprocess.Popen(
                self.command, cwd=ROOT, env=self.env, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                start_new_session=True,
            )

    def start(self) -> float:
        """Start gunicorn; return the seconds until ``/startupz`` answered 200."""
        began = time.monotonic()
        self.launch()
        assert self.process is not None
        deadline = began + self.ready_within
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.label}: gunicorn exited with {self.process.returncode}:\n{self.tail()}")
            with contextlib.suppress(OSError):
                if fetch(self.port, "/startupz", timeout=2.0).status == 200:
                    return time.monotonic() - began
            time.sleep(0.05)
        raise RuntimeError(f"{self.label}: /startupz not 200 within {self.ready_within:.0f} s:\n{self.tail()}")

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

    def children(self) -> dict[int, str]:
        """The master's child processes now: pid -> command line (workers and the plugin host)."""
        if self.process is None:
            return {}
        found = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            with contextlib.suppress(OSError):
                ppid = int((entry / "stat").read_text().rpartition(")")[2].split()[1])
                if ppid == self.process.pid:
                    found[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
        return found

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


def worker_cpu(server: Server) -> float:
    """CPU seconds the server's workers have used so far: the live ones (the master's children but the plugin
    host) and those the master has reaped (recycled by ``max_requests``, counted in its children's times)."""
    if server.process is None:
        return 0.0
    ticks = 0
    with contextlib.suppress(OSError):
        fields = Path(f"/proc/{server.process.pid}/stat").read_text().rpartition(")")[2].split()
        ticks += int(fields[13]) + int(fields[14])  # cutime, cstime: children waited for
    for pid, command in server.children().items():
        if "plugin_health." in command:
            continue  # the plugin host
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
            ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


def rss(pid: int) -> int:
    """The resident set size of ``pid`` in bytes (0 if it is gone)."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


@contextlib.contextmanager
def servers_stopped(servers: list[Server]) -> Iterator[None]:
    """Stop every server on the way out, whatever happens."""
    try:
        yield
    finally:
        for server in servers:
            server.stop()


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


def warm_up(server: Server, path: str, headers: Mapping[str, str], command: Sequence[str]) -> None:
    """The same load, unmeasured (fills every worker's cache)."""
    subprocess.run([*command, *wrk_args(server, path, headers)], check=True, capture_output=True)


def run_wrk(server: Server, path: str, headers: Mapping[str, str], command: Sequence[str]) -> WrkResult:
    """Measure ``GET path`` with ``command`` (wrk and its flags, ``--latency`` among them) and parse its report."""
    booted = server.boots()
    out = subprocess.run([*command, *wrk_args(server, path, headers)], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{server.label}: wrk exited with {out.returncode}: {out.stdout}{out.stderr}\n"
                           f"the server's log ends:\n{server.tail()}")
    report = out.stdout
    booted = server.boots() - booted
    rps = re.search(r"Requests/sec:\s+([\d.]+)", report)
    avg = re.search(r"^\s+Latency\s+(\S+)", report, re.MULTILINE)
    p99 = re.search(r"^\s+99%\s+(\S+)", report, re.MULTILINE)
    total = re.search(r"(\d+) requests in", report)
    if rps is None or avg is None or p99 is None or total is None:
        raise RuntimeError(f"cannot parse wrk's report:\n{report}")
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", report)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", report)
    return WrkResult(
        float(rps.group(1)), _seconds(avg.group(1)), _seconds(p99.group(1)), int(total.group(1)),
        int(bad.group(1)) if bad else 0, sum(int(n) for n in errors.groups()) if errors else 0, booted,
    )


def write_plugins(directory: Path, count: int) -> None:
    """``count`` trivial plugins, one module each (``p00000.py`` ...)."""
    directory.mkdir()
    for i in range(count):
        (directory / f"p{i:05d}.py").write_text(PLUGIN_SOURCE)


def plugins_service(
    plugins: int, work: Path, token: str | None = None, ready_within: float = 600.0,
    write: Callable[[Path, int], None] = write_plugins,
) -> Server:
    """A service (not started) over ``plugins`` plugins that ``write`` puts in ``work`` (trivial ones by default);
    health checks never due, so that what is measured is the reads; ``token``: the operator token, if the benchmark
    takes actions."""
    write(work / "plugins", plugins)
    env = {**base_env(), "PLUGIN_HEALTH_PLUGIN_PATH": str(work / "plugins"), "PLUGIN_HEALTH_RUN_DIR": str(work / "run"),
           "PLUGIN_HEALTH_HEALTH_INTERVAL": "3600"}
    if token is not None:
        env["PLUGIN_HEALTH_ADMIN_TOKEN"] = token
    return Server(f"service, {plugins:,} plugins", "wsgi:app", env, work / "service.log", ready_within)


def base_env() -> dict[str, str]:
    """This environment without any PLUGIN_HEALTH_* setting or GUNICORN_CMD_ARGS."""
    return {k: v for k, v in os.environ.items() if not k.startswith("PLUGIN_HEALTH_") and k != "GUNICORN_CMD_ARGS"}


def gunicorn_settings(env: Mapping[str, str]) -> dict[str, object]:
    """The settings gunicorn.conf.py resolves to in ``env`` (read in a child: it imports plugin_health)."""
    code = (
        "import json, runpy; c = runpy.run_path('gunicorn.conf.py'); "
        f"print(json.dumps({{k: c[k] for k in {CONF_KEYS!r}}}))"
    )
    with tempfile.TemporaryDirectory(prefix="bench-conf-") as metrics:
        # Given a metrics directory, the conf leaves alone the one it would empty (./run/metrics by default).
        child_env = {**env, "PROMETHEUS_MULTIPROC_DIR": metrics}
        out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=child_env, check=True, capture_output=True)
    settings: dict[str, object] = json.loads(out.stdout)
    return settings


def workers_of(conf: Mapping[str, object]) -> str:
    """``5 gevent workers x 1000 connections`` or ``5 gthread workers x 4 threads``, from gunicorn's resolved
    settings."""
    per = {"gthread": f" x {conf['threads']} threads", "gevent": f" x {conf.get('worker_connections')} connections"}
    return f"{conf['workers']} {conf['worker_class']} workers{per.get(str(conf.get('worker_class')), '')}"


def describe(conf: Mapping[str, object]) -> str:
    """The resolved gunicorn settings that shape a benchmark's load, in a few words."""
    keepalive = " (unused by sync)" if conf.get("worker_class") == "sync" else ""
    return (
        f"{workers_of(conf)}, max_requests {conf['max_requests']} + jitter {conf['max_requests_jitter']},"
        f" keepalive {conf['keepalive']} s{keepalive}"
    )


def fmt_time(seconds: float) -> str:
    """Seconds in the unit that reads best."""
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} us"
    if seconds < 1.0:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.2f} s"
