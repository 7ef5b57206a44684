"""``GET /v1/events``: this instance's transitions as they happen, as a stream of server-sent events.

Each event is ``event: transition``, ``id:`` the transition's sequence number in this instance's store, and
``data:`` its history entry (JSON, with ``instance``). A client that reconnects sends the last id it saw as
``Last-Event-ID`` (browsers' ``EventSource`` does it by itself) and gets every transition since that the store
still keeps; without one, a stream starts with the next transition. An idle stream sends a heartbeat comment every
``PLUGIN_HEALTH_EVENTS_HEARTBEAT`` seconds, and every stream ends after ``PLUGIN_HEALTH_EVENTS_LIFETIME`` seconds
(or as soon as its worker is stopping), telling the client to reconnect after ``RETRY_MS``: no connection holds a
worker for ever.

Workers never hear from the core: a stream follows the store (``plugin_health.store.feed``), asking every
``POLL`` seconds whether a newer transition was recorded, which costs an index look-up. Under gevent workers a
stream is a greenlet that sleeps between looks; with real threads (gthread workers, the development server) each
stream holds a thread, so a process serves fewer at once (``MAX_STREAMS``) and answers the next with a 503.
Browsers cannot send a bearer token with ``EventSource``, and details follow the same rule as every read:
error messages only for a caller who may see them.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Final

from flask import Blueprint, Response, current_app, request

from plugin_health.api.auth import details_visible
from plugin_health.api.plugins import transition_entries
from plugin_health.api.problems import Problem
from plugin_health.store.feed import BATCH, Feed

bp = Blueprint("events", __name__)

EVENT_STREAM: Final = "text/event-stream"
#: Seconds between two looks at the store for new transitions.
POLL: Final = 0.2
#: Milliseconds a client waits before it reconnects (the stream's ``retry:`` field).
RETRY_MS: Final = 1000
#: Milliseconds a client refused for want of a slot waits (``Retry-After`` of the 503, in seconds).
REFUSED_RETRY_MS: Final = 30_000
#: Streams one process serves at once: under gevent, a greenlet each; with threads, a thread each (gthread
#: workers have four: two stay free for every other request).
MAX_STREAMS: Final = {"green": 256, "threads": 2}
#: Digits of the longest ``Last-Event-ID`` taken (SQLite's sequence numbers are 64-bit: 18 digits never overflow).
MAX_ID_DIGITS: Final = 18


@dataclass(frozen=True, slots=True)
class Limits:
    """How a stream paces itself: heartbeat and lifetime (seconds), and the pause between looks at the store."""

    heartbeat: float
    lifetime: float
    poll: float = POLL


class _Slots:
    """Streams open in this process, at most ``MAX_STREAMS`` (per kind of worker) at once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.open = 0

    def full(self) -> bool:
        """Whether every slot is taken now."""
        return self.open >= MAX_STREAMS[worker_kind()]

    def held(self, stream: Iterator[str]) -> Iterator[str]:
        """``stream`` in a slot, taken when it starts and given back however it ends (its lifetime, the client gone
        and the response closed, the generator dropped): a response never sent holds none."""
        with self._lock:
            taken = self.open < MAX_STREAMS[worker_kind()]
            self.open += taken
        if not taken:  # another request took the last one since this one was let in: come back later
            yield f"retry: {REFUSED_RETRY_MS}\n: this process serves as many event streams as it can\n\n"
            return
        try:
            yield from stream
        finally:
            with self._lock:
                self.open -= 1


slots = _Slots()


def worker_kind() -> str:
    """``green`` in a process gevent has patched (its streams are greenlets), else ``threads``."""
    monkey = sys.modules.get("gevent.monkey")
    return "green" if monkey is not None and monkey.is_module_patched("threading") else "threads"


def last_event_id(value: str | None) -> int | None:
    """The position a client resumes from (``Last-Event-ID``), None for none (or empty); a 400 problem for a
    value that is no id of this stream."""
    if not value:
        return None
    if not (value.isascii() and value.isdigit() and len(value) <= MAX_ID_DIGITS):
        raise Problem(400, "Last-Event-ID must be the id of an event of this stream (a whole number)",
                      type_="invalid-request", errors={"Last-Event-ID": ["not an event id"]})
    return int(value)


def event_stream(
    feed: Feed,
    instance: str,
    visible: bool,
    limits: Limits,
    stopping: Callable[[], bool] = lambda: False,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] | None = None,
) -> Iterator[str]:
    """The text of the stream: each transition ``feed`` reads, as an event; heartbeats while idle; the end after
    ``limits.lifetime`` seconds or once ``stopping()``. ``sleep``: ``time.sleep`` as it is when the stream starts
    (gevent's, in a patched worker; a default bound when this module was imported could be the blocking one)."""
    sleep = time.sleep if sleep is None else sleep
    started = beat = clock()
    # The retry field first: a client that loses the stream comes back after a second, not its own default (3 s).
    yield f"retry: {RETRY_MS}\n: transitions of instance {instance} after {feed.position}\n\n"
    while True:
        batch = feed.read(BATCH)
        if batch:
            entries = transition_entries(((instance, record) for _, record in batch), visible)
            yield "".join(f"id: {seq}\nevent: transition\ndata: {json.dumps(entry, separators=(',', ':'))}\n\n"
                          for (seq, _), entry in zip(batch, entries, strict=True))
            beat = clock()
        now = clock()
        if now - started >= limits.lifetime or stopping():
            yield ": the stream ends here; reconnect with Last-Event-ID\n\n"
            return
        if len(batch) >= BATCH:
            continue  # more may wait behind a full batch
        if now - beat >= limits.heartbeat:
            yield ": heartbeat\n\n"
            beat = now
        # Wake for whatever comes first: the next look at the store, the next heartbeat, the end.
        sleep(max(0.0, min(limits.poll, beat + limits.heartbeat - now, started + limits.lifetime - now)))


@bp.get("/v1/events")
def events() -> Response:
    """This instance's transitions as server-sent events (``text/event-stream``), resumable with
    ``Last-Event-ID``."""
    after = last_event_id(request.headers.get("Last-Event-ID"))
    service = current_app.extensions["plugin_health"]
    feed = Feed(service.store, after)
    limits = Limits(service.settings.events_heartbeat, service.settings.events_lifetime)
    if slots.full():
        problem = Problem(503, "this process serves as many event streams as it can: poll, or retry later",
                          type_="too-many-streams")
        problem.headers["Retry-After"] = str(REFUSED_RETRY_MS // 1000)
        raise problem
    stream = event_stream(feed, service.instance, details_visible(), limits, service.stopping)
    response = Response(slots.held(stream), mimetype=EVENT_STREAM)
    response.headers["Cache-Control"] = "no-cache"
    response.headers["X-Accel-Buffering"] = "no"  # nginx: pass each event on at once
    return response
