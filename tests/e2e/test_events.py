"""End to end: ``GET /v1/events`` under real gunicorn gevent workers, read over loopback sockets.

A transition arrives within a second of the action that made it, whichever worker serves the stream; a stream
sends heartbeats while idle and ends after its lifetime; a client resumes on a new connection (another worker,
maybe) with ``Last-Event-ID`` and misses nothing; forty open streams hold up no other request (each is a greenlet);
a worker that stops ends its streams at once; and ``flask plugins watch`` prints the same transitions the stream
sends, read from the same store. Every read has a socket timeout, so no test can hang.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from e2e.server import ROOT, Server, gunicorn_ready, wait_for

TOKEN = "events-operator-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
HEARTBEAT = 0.5
LIFETIME = 4.0
ENV = {"PLUGIN_HEALTH_ADMIN_TOKEN": TOKEN, "PLUGIN_HEALTH_EVENTS_HEARTBEAT": str(HEARTBEAT),
       "PLUGIN_HEALTH_EVENTS_LIFETIME": str(LIFETIME), "PLUGIN_HEALTH_HEALTH_INTERVAL": "1"}


@pytest.fixture(scope="module")
def server(tmp_module: Path, gunicorn_factory: Callable[..., Server]) -> Server:
    plugins = tmp_module / "plugins"
    plugins.mkdir()
    for name in ("core", "other"):
        (plugins / f"{name}.py").write_text(textwrap.dedent("""
            from plugin_health import Plugin

            class P(Plugin):
                pass
        """))
    started = gunicorn_factory(plugins, ENV, workers=2)
    assert "Using worker: gevent" in started.log.read_text()
    return started


class Events:
    """One ``GET /v1/events`` on a connection of its own, read block by block (each read times out)."""

    def __init__(self, server: Server, last_event_id: int | None = None, timeout: float = 10.0) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=timeout)
        headers = {"Accept": "text/event-stream"}
        if last_event_id is not None:
            headers["Last-Event-ID"] = str(last_event_id)
        self.conn.request("GET", "/v1/events", headers=headers)
        self.response = self.conn.getresponse()
        assert self.response.status == 200
        assert self.response.getheader("Content-Type") == "text/event-stream; charset=utf-8"

    def block(self) -> dict[str, str] | None:
        """The next block's fields (``comment`` for a comment), or None at the end of the stream."""
        fields: dict[str, str] = {}
        while True:
            line = self.response.readline()
            if not line:
                return None
            text = line.decode().rstrip("\n")
            if text == "":
                if fields:
                    return fields
                continue
            name, _, value = text.partition(":")
            fields["comment" if name == "" else name] = value.removeprefix(" ")

    def transitions(self, count: int) -> list[dict[str, Any]]:
        """The next ``count`` transitions (data, with the event id as ``id``)."""
        found: list[dict[str, Any]] = []
        while len(found) < count:
            block = self.block()
            assert block is not None, f"the stream ended after {found}"
            if block.get("event") == "transition":
                found.append({**json.loads(block["data"]), "id": int(block["id"])})
        return found

    def close(self) -> None:
        self.conn.close()


def act(server: Server, action: str, name: str = "core") -> None:
    answer = server.get(f"/v1/plugins/{name}/{action}", method="POST", headers=AUTH)
    assert answer.status == 200, answer.text


def instance_of(server: Server) -> str:
    instance: str = json.loads(server.get("/v1/cluster").body)["instance"]
    return instance


def test_a_transition_arrives_within_a_second(server: Server) -> None:
    for _ in range(4):  # new connections: the kernel spreads them over both workers
        stream = Events(server)
        try:
            assert "retry" in (stream.block() or {})
            acted = time.monotonic()
            act(server, "disable")
            [moved] = stream.transitions(1)
            assert time.monotonic() - acted < 1.0
        finally:
            stream.close()
        assert {k: moved[k] for k in ("plugin", "from", "to", "reason", "instance")} == {
            "plugin": "core", "from": "RUNNING", "to": "UNAVAILABLE", "reason": "disabled",
            "instance": instance_of(server)}
        act(server, "enable")


def test_heartbeats_while_idle_and_the_end_after_its_lifetime(server: Server) -> None:
    started = time.monotonic()
    stream = Events(server)
    blocks = []
    try:
        while (block := stream.block()) is not None:
            blocks.append((time.monotonic() - started, block))
    finally:
        stream.close()
    lasted = time.monotonic() - started
    beats = [when for when, block in blocks if block == {"comment": "heartbeat"}]
    assert LIFETIME / HEARTBEAT - 2 <= len(beats) <= LIFETIME / HEARTBEAT, blocks
    assert all(b - a < HEARTBEAT + 0.4 for a, b in zip([0.0, *beats], beats, strict=False)), beats
    assert blocks[-1][1] == {"comment": "the stream ends here; reconnect with Last-Event-ID"}
    assert LIFETIME <= lasted < LIFETIME + 2


def test_last_event_id_resumes_on_a_new_connection(server: Server) -> None:
    stream = Events(server)
    try:
        act(server, "disable", "other")
        [disabled] = stream.transitions(1)
    finally:
        stream.close()
    act(server, "enable", "other")  # while no stream is open
    resumed = Events(server, last_event_id=disabled["id"])
    try:
        missed = resumed.transitions(3)
    finally:
        resumed.close()
    assert [(m["plugin"], m["from"], m["to"]) for m in missed] == [
        ("other", "UNAVAILABLE", "LOADED"), ("other", "LOADED", "INITIALIZED"), ("other", "INITIALIZED", "RUNNING")]
    assert [m["id"] for m in missed] == list(range(disabled["id"] + 1, disabled["id"] + 4))


def test_open_streams_hold_up_no_other_request(server: Server) -> None:
    streams = [Events(server, timeout=5) for _ in range(40)]
    try:
        for stream in streams:
            assert "retry" in (stream.block() or {})
        took = []
        for _ in range(20):
            asked = time.monotonic()
            assert server.get("/readyz", timeout=5).status == 200
            took.append(time.monotonic() - asked)
        assert max(took) < 0.5, took
        act(server, "disable", "other")
        for stream in streams[::8]:  # and each still gets the news
            assert stream.transitions(1)[0]["plugin"] == "other"
    finally:
        for stream in streams:
            stream.close()
        act(server, "enable", "other")


def test_flask_plugins_watch_prints_what_the_stream_sends(server: Server, tmp_module: Path) -> None:
    """Both read the instance's store: the same transitions, the same entries."""
    stream = Events(server)
    try:
        act(server, "disable")
        [mark] = stream.transitions(1)  # the position to start from, for the stream and the command alike
    finally:
        stream.close()
    env = {**os.environ, "PLUGIN_HEALTH_PLUGIN_PATH": str(tmp_module / "plugins"),
           "PLUGIN_HEALTH_RUN_DIR": str(server.run_dir), "PLUGIN_HEALTH_INSTANCE": mark["instance"]}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    watch = subprocess.Popen(
        [sys.executable, "-m", "flask", "--app", "wsgi", "plugins", "watch", "--json", "--since", str(mark["id"]),
         "--count", "3", "--timeout", "30"], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)
    try:
        act(server, "enable")
        out, err = watch.communicate(timeout=40)
    finally:
        if watch.poll() is None:
            watch.kill()
            watch.wait()
    assert watch.returncode == 0, err
    printed = [json.loads(line) for line in out.splitlines()]
    resumed = Events(server, last_event_id=mark["id"])
    try:
        sent = resumed.transitions(3)
    finally:
        resumed.close()
    assert printed == [{k: v for k, v in entry.items() if k != "id"} for entry in sent]
    assert [(e["from"], e["to"]) for e in printed] == [("UNAVAILABLE", "LOADED"), ("LOADED", "INITIALIZED"),
                                                       ("INITIALIZED", "RUNNING")]


def test_a_stopping_worker_ends_its_streams_at_once(server: Server) -> None:
    """Recycled or shut down, a worker ends its streams within a look at the store, well before their lifetime
    (and gunicorn's graceful timeout): the clients reconnect to a worker that stays."""
    streams = [Events(server, timeout=5) for _ in range(4)]  # over both workers, as the kernel spreads them
    try:
        for stream in streams:
            assert "retry" in (stream.block() or {})
        workers = server.workers()
        assert len(workers) == 2
        stopped = time.monotonic()
        for pid in workers:
            os.kill(pid, signal.SIGTERM)  # what the master sends a worker it recycles
        for stream in streams:
            blocks = []
            while (block := stream.block()) is not None:
                blocks.append(block)
            assert blocks[-1] == {"comment": "the stream ends here; reconnect with Last-Event-ID"}
        assert time.monotonic() - stopped < 1.5
    finally:
        for stream in streams:
            stream.close()
    wait_for(lambda: gunicorn_ready(server, 2) and not server.workers() & workers, 30, "new workers")
    again = Events(server)  # and streams go on
    try:
        act(server, "disable", "other")
        assert again.transitions(1)[0]["plugin"] == "other"
    finally:
        again.close()
        act(server, "enable", "other")
