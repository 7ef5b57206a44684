"""``GET /v1/events``: transitions as server-sent events, resumable, with heartbeats and a bounded lifetime.

The stream's pacing is tested on a simulated clock (``event_stream`` with a fake ``clock`` and ``sleep``), the
route in-process through Flask's test client against an app that hosts its plugins; tests/e2e/test_events.py runs
it under real gunicorn gevent workers.
"""

from __future__ import annotations

import json
import textwrap
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from plugin_health import create_app
from plugin_health.api import events
from plugin_health.api.events import Limits, event_stream
from plugin_health.app import EXTENSION, Service
from plugin_health.lifecycle import PluginLifecycleState, TransitionRecord
from plugin_health.store import MemoryStore, PluginSnapshot
from plugin_health.store.feed import Feed

S = PluginLifecycleState
TOKEN = "t0ken-for-tests"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SECRET = "password=hunter2"
PLUGINS = {
    "core": "critical = True\n",
    "broken": f"def initialize(self, context):\n    raise RuntimeError({SECRET!r})\n",
}


# --- the stream's pacing, on a simulated clock ---------------------------------------------------------------


class Clock:
    """Simulated time: ``sleep`` moves it on and runs what was scheduled for the moments it passes."""

    def __init__(self) -> None:
        self.now = 0.0
        self.at: list[tuple[float, Any]] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds
        for when, action in [entry for entry in self.at if entry[0] <= self.now]:
            self.at.remove((when, action))
            action()


def record(store: MemoryStore, name: str, source: S | None, dest: S, trigger: str, error: str | None = None) -> None:
    store.put(PluginSnapshot(name, dest, datetime.now(UTC)),
              TransitionRecord.now(name, source, dest, trigger, reason="r" if error else None,
                                   error_type="ValueError" if error else None, error=error))


def parse(text: str) -> list[dict[str, str]]:
    """The blocks of a stream: each a dict of its fields (``comment`` for a comment line)."""
    blocks = []
    for block in text.split("\n\n"):
        if not block:
            continue
        fields: dict[str, str] = {}
        for line in block.split("\n"):
            name, _, value = line.partition(":")
            fields["comment" if name == "" else name] = value.removeprefix(" ")
        blocks.append(fields)
    return blocks


def run(store: MemoryStore, clock: Clock, limits: Limits, **kwargs: Any) -> list[tuple[float, dict[str, str]]]:
    """Every block of a stream of ``store`` with the moment (simulated) it was sent."""
    feed = Feed(store, kwargs.pop("after", None))
    sent = []
    for chunk in event_stream(feed, "i1", kwargs.pop("visible", False), limits, clock=clock, sleep=clock.sleep,
                              **kwargs):
        sent += [(clock.now, block) for block in parse(chunk)]
    return sent


def test_the_stream_yields_a_transition_made_after_it_started() -> None:
    store, clock = MemoryStore(), Clock()
    record(store, "core", None, S.LOADED, "load")  # before: not news
    clock.at.append((1.0, lambda: record(store, "core", S.LOADED, S.INITIALIZED, "initialize")))
    sent = run(store, clock, Limits(heartbeat=10, lifetime=2))
    transitions = [(when, block) for when, block in sent if block.get("event") == "transition"]
    assert len(transitions) == 1
    when, block = transitions[0]
    assert 1.0 <= when <= 1.0 + events.POLL
    assert block["id"] == str(store.last_seq()) == "2"
    assert json.loads(block["data"]) == {
        "plugin": "core", "from": "LOADED", "to": "INITIALIZED", "trigger": "initialize", "reason": None,
        "error_type": None, "error": None, "at": store.history("core")[-1].at.isoformat(), "instance": "i1"}


def test_the_stream_starts_with_retry_and_ends_after_its_lifetime() -> None:
    store, clock = MemoryStore(), Clock()
    sent = run(store, clock, Limits(heartbeat=100, lifetime=5))
    assert sent[0][1]["retry"] == str(events.RETRY_MS)
    when, last = sent[-1]
    assert last == {"comment": "the stream ends here; reconnect with Last-Event-ID"}
    assert when == pytest.approx(5.0)


def test_an_idle_stream_sends_heartbeats() -> None:
    store, clock = MemoryStore(), Clock()
    sent = run(store, clock, Limits(heartbeat=1, lifetime=5.05))
    beats = [when for when, block in sent if block == {"comment": "heartbeat"}]
    assert len(beats) == 5
    assert all(b - a == pytest.approx(1.0, abs=events.POLL) for a, b in zip([0.0, *beats], beats, strict=False))


def test_events_count_as_signs_of_life() -> None:
    store, clock = MemoryStore(), Clock()
    for moment in (0.5, 1.0, 1.5, 2.0):
        clock.at.append((moment, lambda: record(store, "core", None, S.LOADED, "load")))
    sent = run(store, clock, Limits(heartbeat=1, lifetime=3.5))
    last = max(when for when, block in sent if block.get("event") == "transition")
    assert last == pytest.approx(2.0, abs=events.POLL)
    # No heartbeat while events flow; the first one a second after the last event.
    assert [when for when, block in sent if block == {"comment": "heartbeat"}] == [pytest.approx(last + 1.0)]


def test_the_stream_ends_when_its_worker_stops() -> None:
    store, clock = MemoryStore(), Clock()
    sent = run(store, clock, Limits(heartbeat=1, lifetime=300), stopping=lambda: clock.now >= 2)
    assert sent[-1] == (pytest.approx(2.0, abs=events.POLL), {"comment": "the stream ends here; reconnect with "
                                                                         "Last-Event-ID"})


def test_resuming_replays_what_was_missed_in_order_in_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(events, "BATCH", 2)
    store, clock = MemoryStore(), Clock()
    for trigger in ("a", "b", "c", "d", "e"):
        record(store, "core", None, S.LOADED, trigger)
    sent = run(store, clock, Limits(heartbeat=10, lifetime=1), after=2)
    assert [(b["id"], json.loads(b["data"])["trigger"]) for _, b in sent if "id" in b] == [
        ("3", "c"), ("4", "d"), ("5", "e")]


def test_error_messages_only_for_callers_who_may_see_them() -> None:
    store = MemoryStore()
    for visible in (False, True):
        clock = Clock()
        clock.at.append((0.5, lambda: record(store, "x", S.RUNNING, S.FAILED, "fail", error=SECRET)))
        [data] = [json.loads(b["data"]) for _, b in run(store, clock, Limits(10, 1), visible=visible) if "data" in b]
        assert (data["error_type"], data["error"]) == ("ValueError", SECRET if visible else None)


# --- the route -----------------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def no_stream_left_open() -> Iterator[None]:
    """Every stream a test opened gave its slot back."""
    yield
    assert events.slots.open == 0


@pytest.fixture
def app(tmp_path: Path) -> Iterator[Flask]:
    for name, body in PLUGINS.items():
        (tmp_path / f"{name}.py").write_text(
            "from plugin_health import Plugin\n\nclass P(Plugin):\n" + textwrap.indent(body, "    "))
    app = create_app({"plugin_path": str(tmp_path), "store_url": "memory://", "health_interval": 3600,
                      "admin_token": TOKEN, "max_restarts": 0, "events_heartbeat": 0.3, "events_lifetime": 2})
    yield app
    app.extensions[EXTENSION].shutdown()


class Stream:
    """An open stream of the test client, read block by block."""

    def __init__(self, response: TestResponse) -> None:
        self.response = response
        self.chunks = iter(response.response)
        self.pending: list[dict[str, str]] = []

    def next(self) -> dict[str, str] | None:
        """The next block, or None once the stream has ended."""
        while not self.pending:
            chunk = next(self.chunks, None)
            if chunk is None:
                return None
            self.pending = parse(chunk.decode() if isinstance(chunk, bytes) else chunk)
        return self.pending.pop(0)

    def transitions(self, count: int) -> list[dict[str, Any]]:
        """The next ``count`` transitions (their data, with the event id as ``id``)."""
        found: list[dict[str, Any]] = []
        while len(found) < count:
            block = self.next()
            assert block is not None, f"the stream ended after {found}"
            if block.get("event") == "transition":
                found.append({**json.loads(block["data"]), "id": int(block["id"])})
        return found

    def close(self) -> None:
        self.response.close()


def connect(client: FlaskClient, **headers: str) -> Stream:
    response = client.get("/v1/events", headers=headers, buffered=False)
    assert response.status_code == 200
    stream = Stream(response)
    assert "retry" in (stream.next() or {})  # the stream has started: what follows is news
    return stream


def test_the_route_streams_a_transition_made_after_connecting(client: FlaskClient, app: Flask) -> None:
    stream = connect(client)
    try:
        assert stream.response.mimetype == "text/event-stream"
        assert stream.response.headers["Cache-Control"] == "no-cache"
        assert client.post("/v1/plugins/core/disable", headers=AUTH).status_code == 200
        [moved] = stream.transitions(1)
    finally:
        stream.close()
    service: Service = app.extensions[EXTENSION]
    assert {k: moved[k] for k in ("plugin", "from", "to", "trigger", "instance")} == {
        "plugin": "core", "from": "RUNNING", "to": "UNAVAILABLE", "trigger": "make_unavailable",
        "instance": service.instance}
    assert moved["reason"] == "disabled"
    assert moved["id"] == service.store.last_seq()
    assert moved["at"] == service.store.history("core")[-1].at.isoformat()


def test_last_event_id_resumes_with_what_was_missed(client: FlaskClient) -> None:
    stream = connect(client)
    client.post("/v1/plugins/core/disable", headers=AUTH)
    [disabled] = stream.transitions(1)
    stream.close()
    client.post("/v1/plugins/core/enable", headers=AUTH)  # while no stream is open
    resumed = connect(client, **{"Last-Event-ID": str(disabled["id"])})
    try:
        missed = resumed.transitions(3)
    finally:
        resumed.close()
    assert [(m["from"], m["to"]) for m in missed] == [("UNAVAILABLE", "LOADED"), ("LOADED", "INITIALIZED"),
                                                      ("INITIALIZED", "RUNNING")]
    assert [m["id"] for m in missed] == list(range(disabled["id"] + 1, disabled["id"] + 4))


def test_heartbeats_and_the_end_of_a_stream(client: FlaskClient) -> None:
    started = time.monotonic()
    stream = connect(client)
    blocks = []
    while (block := stream.next()) is not None:
        blocks.append((time.monotonic() - started, block))
    lasted = time.monotonic() - started
    stream.close()  # what a server does with a response it has sent whole
    beats = [when for when, block in blocks if block == {"comment": "heartbeat"}]
    assert 4 <= len(beats) <= 7, blocks  # every 0.3 s for 2 s
    assert blocks[-1][1] == {"comment": "the stream ends here; reconnect with Last-Event-ID"}
    assert 2.0 <= lasted < 3.0


def test_error_details_follow_the_token(client: FlaskClient) -> None:
    for headers, shown in (({}, None), (AUTH, SECRET)):
        stream = connect(client, **headers)
        try:
            client.post("/v1/plugins/broken/restart", headers=AUTH)  # fails in initialize again
            failed = [t for t in stream.transitions(2) if t["to"] == "FAILED"]  # reset, then fail
        finally:
            stream.close()
        assert [(t["error_type"], t["error"]) for t in failed] == [("RuntimeError", shown)]


@pytest.mark.parametrize("bad", ["x", "-1", "1.5", "1 2", "9" * 19])
def test_a_bad_last_event_id_is_400(client: FlaskClient, bad: str) -> None:
    response = client.get("/v1/events", headers={"Last-Event-ID": bad})
    assert response.status_code == 400
    assert response.mimetype == "application/problem+json"
    assert response.get_json()["errors"] == {"Last-Event-ID": ["not an event id"]}


def test_an_id_ahead_of_the_store_replays_what_it_holds(client: FlaskClient, app: Flask) -> None:
    """A client of a store made anew (its ids restarted): everything this store holds is news to it."""
    service: Service = app.extensions[EXTENSION]
    stream = connect(client, **{"Last-Event-ID": str(service.store.last_seq() + 1000)})
    try:
        replayed = stream.transitions(service.store.last_seq())
    finally:
        stream.close()
    assert [t["id"] for t in replayed] == list(range(1, service.store.last_seq() + 1))


def test_streams_per_process_are_bounded_and_given_back(client: FlaskClient, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(events.MAX_STREAMS, "threads", 2)
    first, second = connect(client), connect(client)
    refused = client.get("/v1/events")
    assert refused.status_code == 503
    assert refused.headers["Retry-After"] == "30"
    assert refused.get_json()["type"].endswith("/too-many-streams")
    first.close()
    third = connect(client)  # a closed stream gives its slot back
    second.close()
    third.close()
    assert events.slots.open == 0


def test_a_slot_is_held_from_the_first_chunk_to_the_end_however_it_comes() -> None:
    """A response never sent holds none; one that ends, is closed, or is dropped gives it back."""
    held = events.slots.held(iter(["a", "b"]))
    assert events.slots.open == 0  # not started
    assert next(held) == "a"
    assert events.slots.open == 1
    assert list(held) == ["b"]
    assert events.slots.open == 0  # ended
    closed = events.slots.held(iter(["a", "b"]))
    next(closed)
    closed.close()  # what a WSGI server does with the response, the client gone
    assert events.slots.open == 0
    dropped = events.slots.held(iter(["a", "b"]))
    next(dropped)
    del dropped
    assert events.slots.open == 0


def test_a_stream_let_in_as_the_last_slot_went_is_told_to_come_back_later(
    client: FlaskClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(events.MAX_STREAMS, "threads", 1)
    first = connect(client)
    monkeypatch.setattr(events.slots, "full", lambda: False)  # as if it had been let in a moment earlier
    late = client.get("/v1/events", buffered=False)
    try:
        assert late.status_code == 200
        assert late.get_data(as_text=True) == (
            "retry: 30000\n: this process serves as many event streams as it can\n\n")
    finally:
        late.close()
        first.close()


def test_a_service_shut_down_ends_its_streams(client: FlaskClient, app: Flask) -> None:
    stream = connect(client)
    app.extensions[EXTENSION].shutdown()
    started = time.monotonic()
    while stream.next() is not None:
        pass
    stream.close()
    assert time.monotonic() - started < 1.0


def test_the_openapi_document_describes_the_stream(client: FlaskClient) -> None:
    operation = client.get("/openapi.json").get_json()["paths"]["/v1/events"]["get"]
    assert operation["responses"]["200"]["content"]["text/event-stream"]["schema"]["properties"]["event"] == {
        "type": "string", "enum": ["transition"]}
    assert [p["name"] for p in operation["parameters"]] == ["Last-Event-ID"]
    assert set(operation["responses"]) >= {"200", "400", "503"}
