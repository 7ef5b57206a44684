"""Real gunicorn on a free loopback port, started as the README says, and ways to look at its processes."""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Answer:
    """One HTTP response, read whole."""

    status: int
    headers: Mapping[str, str]
    body: bytes

    @property
    def text(self) -> str:
        """The body as text."""
        return self.body.decode()


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def process_table() -> dict[int, int]:
    """pid -> parent pid, for every process on the machine."""
    table = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            table[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    return table


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie does not)."""
    try:
        return "\nState:\tZ" not in Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False


def cmdline(pid: int) -> str:
    """The command line of ``pid`` ('' if it is gone)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


@dataclass
class Server:
    """A running gunicorn: its master process, port and logs."""

    process: subprocess.Popen[bytes]
    port: int
    log: Path
    run_dir: Path
    seen: set[int] = field(default_factory=set)

    def get(
        self,
        path: str,
        headers: Mapping[str, str] | None = None,
        method: str = "GET",
        body: str | None = None,
        timeout: float = 30.0,
    ) -> Answer:
        """One request on a new connection (so that the kernel spreads them over the workers)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request(method, path, body=body, headers=dict(headers or {}))
            response = conn.getresponse()
            return Answer(response.status, {k.lower(): v for k, v in response.getheaders()}, response.read())
        finally:
            conn.close()

    def descendants(self) -> set[int]:
        """Every live process below the master (workers, the host, plugin children); remembered."""
        table = process_table()
        found, frontier = set(), {self.process.pid}
        while frontier:
            children = {pid for pid, parent in table.items() if parent in frontier}
            found |= children
            frontier = children
        self.seen |= found
        return {pid for pid in found if alive(pid)}

    def host_pid(self) -> int | None:
        """The pid of the plugin host process (None between a host's death and its replacement)."""
        hosts = [pid for pid in self.descendants() if "plugin_health.runtime.core_main" in cmdline(pid)]
        assert len(hosts) <= 1, hosts
        return hosts[0] if hosts else None

    def workers(self) -> set[int]:
        """The gunicorn workers (children of the master that are not the host)."""
        table = process_table()
        return {pid for pid, parent in table.items()
                if parent == self.process.pid and alive(pid) and "gunicorn" in cmdline(pid)}

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM the master and wait for it; the exit status."""
        self.descendants()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                for pid in self.seen:
                    if alive(pid):
                        os.kill(pid, signal.SIGKILL)
        return self.process.returncode


def wait_for(condition: Callable[[], object], timeout: float, what: str) -> None:
    """Poll ``condition`` every 50 ms until it is true; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def start_gunicorn(tmp: Path, plugin_dir: Path, env: Mapping[str, str], workers: int = 3) -> Server:
    """``gunicorn -c gunicorn.conf.py wsgi:app`` from the repository root, ready to answer (stopped if it never is)."""
    server = spawn_gunicorn(tmp, plugin_dir, env, workers)

    def started() -> bool:
        assert server.process.poll() is None, server.log.read_text()
        return gunicorn_ready(server, workers)

    try:
        wait_for(started, 60, "gunicorn to start")
    except BaseException:
        server.stop()
        raise
    return server


def spawn_gunicorn(tmp: Path, plugin_dir: Path, env: Mapping[str, str], workers: int = 3,
                   session: bool = False) -> Server:
    """Like ``start_gunicorn``, but answers at once, before the server is ready (see ``gunicorn_ready``).

    The caller owns the server from its first moment: whatever happens while it starts, it can still be stopped.
    ``session``: in a session (and process group) of its own, so that a signal can go to the whole group.
    """
    port = free_port()
    log = tmp / "gunicorn.log"
    run_dir = tmp / "run"
    environ = {**os.environ, "PLUGIN_HEALTH_PLUGIN_PATH": str(plugin_dir), "PLUGIN_HEALTH_RUN_DIR": str(run_dir),
               **env}
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "-w", str(workers),
             "-b", f"127.0.0.1:{port}", "wsgi:app"],
            cwd=ROOT, env=environ, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=session,
        )
    return Server(process, port, log, run_dir)


def gunicorn_ready(server: Server, workers: int) -> bool:
    """Whether ``server`` answers ``/startupz`` with 200 and runs ``workers`` workers (children of the master
    whose command line names gunicorn and not a plugin_health process of its own)."""
    if server.process.poll() is not None:
        return False
    table = process_table()
    own = {pid for pid, parent in table.items() if parent == server.process.pid and alive(pid)}
    found = {pid for pid in own if "gunicorn" in cmdline(pid) and "plugin_health." not in cmdline(pid)}
    try:
        return len(found) == workers and server.get("/startupz", timeout=2.0).status == 200
    except OSError:
        return False
