"""End to end: clients that send slowly or sit idle cannot starve the workers (issue 10, item 7).

Real gunicorn with ``gunicorn.conf.py`` and a single worker, on a loopback port: 256 connections dribble the
head of a request one byte every 0.5 s for 10 s (each one the server drops is opened again, so 256 stay open)
while ``/readyz`` is asked every 0.1 s on fresh connections and must answer within 1 s every time, and tool calls
(a quick one, and one that waits 2 s in the core, on the same worker) still answer. With gthread workers (the
threads of a worker each held by a slow client) the probes wait for as long as the clients dribble.
"""

from __future__ import annotations

import json
import os
import selectors
import socket
import textwrap
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from e2e.server import Answer, Server
from plugin_health.store.sqlite import SQLiteStore

pytestmark = pytest.mark.slow

TOKEN = "e2e-slow-clients-token"
AUTH = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
SLOW_CLIENTS = 256
DRIBBLE_EVERY = 0.5  # seconds between two bytes of each slow client
DRIBBLE_FOR = 10.0  # seconds the slow clients go on
PROBE_EVERY = 0.1
PROBE_WITHIN = 1.0  # seconds /readyz may take, every time
HEAD = b"GET /readyz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Dribble: " + b"a" * 200  # never finished


@pytest.fixture(scope="module")
def server(tmp_module: Path, gunicorn_factory: object) -> Server:
    plugins = tmp_module / "plugins"
    plugins.mkdir()
    (plugins / "echo.py").write_text(textwrap.dedent("""
        import time
        from plugin_health import Plugin, tool

        class Echo(Plugin):
            timeout = 10.0

            @tool
            def ping(self, who):
                return f"pong {who}"

            @tool
            def wait(self, seconds):
                time.sleep(seconds)
                return seconds
    """))
    env = {"PLUGIN_HEALTH_ADMIN_TOKEN": TOKEN, "PLUGIN_HEALTH_HEALTH_INTERVAL": "3600"}
    made: Server = gunicorn_factory(plugins, env, workers=1)  # type: ignore[operator]
    return made


class Dribblers:
    """``count`` connections that each send one more byte of an unfinished request head every ``every`` seconds,
    on a thread, until stopped; a connection the server closes is opened again."""

    def __init__(self, port: int, count: int, every: float) -> None:
        self.port, self.count, self.every = port, count, every
        self.selector = selectors.DefaultSelector()
        self.sent: dict[socket.socket, int] = {}
        self.reopened = 0
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dribblers", daemon=True)

    def _open(self) -> None:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=5.0)
        sock.setblocking(False)
        self.selector.register(sock, selectors.EVENT_READ)
        self.sent[sock] = 0

    def _close(self, sock: socket.socket) -> None:
        self.selector.unregister(sock)
        del self.sent[sock]
        sock.close()

    def start(self) -> None:
        for _ in range(self.count):
            self._open()
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._stop.wait(self.every):
                for key, _ in self.selector.select(0):  # readable: the server closed it (or answered)
                    self._close(key.fileobj)  # type: ignore[arg-type]
                    self._open()
                    self.reopened += 1
                for sock, sent in list(self.sent.items()):
                    try:
                        sock.send(HEAD[sent % len(HEAD):][:1])
                        self.sent[sock] = sent + 1
                    except OSError:
                        self._close(sock)
                        self._open()
                        self.reopened += 1
        except BaseException as err:  # noqa: BLE001 - reported by the test, not lost on a thread
            self.errors.append(err)

    def halt(self) -> None:
        """Stop dribbling (the connections stay open): ``sent`` is only whole once the thread is done, since a
        dropped connection is closed then opened again."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10.0)

    def stop(self) -> None:
        self.halt()
        for sock in list(self.sent):
            self._close(sock)
        self.selector.close()


@pytest.fixture
def dribblers(server: Server) -> Iterator[Dribblers]:
    made = Dribblers(server.port, SLOW_CLIENTS, DRIBBLE_EVERY)
    try:
        made.start()
        yield made
    finally:
        made.stop()


def call_tool(server: Server, tool: str, args: list[object]) -> Answer:
    return server.get(f"/v1/plugins/echo/tools/{tool}", headers=AUTH, method="POST", body=json.dumps({"args": args}))


def test_slow_clients_do_not_starve_probes_or_tool_calls(server: Server, dribblers: Dribblers) -> None:
    began = time.monotonic()
    answers: dict[str, Answer | BaseException] = {}

    def call(key: str, tool: str, args: list[object]) -> None:
        try:
            answers[key] = call_tool(server, tool, args)
        except BaseException as err:  # noqa: BLE001 - asserted below
            answers[key] = err

    calls: list[threading.Thread] = []
    latencies: list[float] = []
    while time.monotonic() - began < DRIBBLE_FOR:
        elapsed = time.monotonic() - began
        if not calls and elapsed > 2.0:  # the slow clients all connected and dribbling by now
            calls = [threading.Thread(target=call, args=("wait", "wait", [2.0])),
                     threading.Thread(target=call, args=("ping", "ping", ["slow"]))]
            for thread in calls:
                thread.start()
        asked = time.monotonic()
        try:
            status = server.get("/readyz", timeout=PROBE_WITHIN * 3).status
        except TimeoutError:
            status = 0  # no answer at all: reported below with the slowest probe
        latencies.append(time.monotonic() - asked)
        assert status in (0, 200), status
        time.sleep(PROBE_EVERY)
    for thread in calls:
        thread.join(15.0)
    dribblers.halt()

    assert not dribblers.errors, dribblers.errors
    assert len(dribblers.sent) == SLOW_CLIENTS
    assert min(dribblers.sent.values()) >= 1  # every slow client was still dribbling at the end
    slowest = max(latencies)
    assert slowest < PROBE_WITHIN, (
        f"/readyz took {slowest:.3f} s with {SLOW_CLIENTS} slow clients ({len(latencies)} probes, "
        f"{dribblers.reopened} slow connections dropped by the server and opened again)"
    )
    assert len(latencies) >= DRIBBLE_FOR / (PROBE_EVERY + PROBE_WITHIN)
    ping, wait = answers.get("ping"), answers.get("wait")
    assert isinstance(ping, Answer), ping
    assert (ping.status, json.loads(ping.body)["result"]) == (200, "pong slow")
    assert isinstance(wait, Answer), wait
    assert (wait.status, json.loads(wait.body)["result"]) == (200, 2.0)


def test_a_slow_tool_call_does_not_hold_up_its_worker(server: Server) -> None:
    """The one worker waits for the core's answer on a cooperative socket: its other requests go on meanwhile."""
    result: list[Answer] = []
    caller = threading.Thread(target=lambda: result.append(call_tool(server, "wait", [1.5])))
    began = time.monotonic()
    caller.start()
    try:
        time.sleep(0.2)  # the call is in the core by now
        probes = []
        while caller.is_alive() and time.monotonic() - began < 1.2:
            asked = time.monotonic()
            assert server.get("/readyz", timeout=5.0).status == 200
            probes.append(time.monotonic() - asked)
    finally:
        caller.join(15.0)
    assert probes
    assert max(probes) < 0.5, probes
    assert [answer.status for answer in result] == [200]


def sqlite_descriptors(pid: int) -> int:
    """How many of ``pid``'s open files are the store's database, WAL or shared-memory file."""
    fds = Path(f"/proc/{pid}/fd")
    count = 0
    for fd in fds.iterdir():
        try:
            count += "state.sqlite3" in os.readlink(fd)
        except OSError:
            continue
    return count


def test_a_worker_keeps_a_few_sqlite_connections_however_many_clients_came(server: Server) -> None:
    paths = ["/readyz", "/v1/plugins/", "/v1/plugins/echo/health", "/v1/health"]
    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(lambda i: server.get(paths[i % len(paths)], timeout=10.0).status, range(2000)))
    assert set(statuses) <= {200}, sorted(set(statuses))
    (worker,) = server.workers()
    # Each connection is a file, its WAL and its shared memory: a bounded pool, not one per client connection.
    assert 0 < sqlite_descriptors(worker) <= 3 * SQLiteStore.KEEP_IDLE


def test_workers_boot_without_warnings(server: Server) -> None:
    log = server.log.read_text(errors="replace")
    assert "Using worker: gevent" in log
    assert "Warning" not in log, log
