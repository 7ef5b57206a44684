"""Cheap reads: answers cached per store version, with strong ETags and 304 for ``If-None-Match`` (compared weakly).

An answer's ETag is a hash of its cache key and the store's version, not of its body: every worker gives the
same tag for the same version, and a 304 for a route whose key is always valid (the list, the aggregate) is
answered without building the body at all, even by a worker that has never built it.

Time alone can change an answer too: a RUNNING plugin turns stale when its ``stale_after`` passes, with no write
to the store. A build may therefore say until when its answer holds (epoch seconds, worked out from the snapshots
it read: see ``api.freshness``); the entry is rebuilt after that even if the version has not moved, and its ETag
carries that moment (``<hash>.<milliseconds>``), so a client's tag stops matching once it has passed, and any
worker can still check a tag without building: same version, a moment not yet passed, and the hash of both.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from flask import Response, request

from plugin_health.store import StateStore

#: What a build returns: the body and status, and optionally until when (epoch seconds) that answer holds at the
#: version it was built at (None or absent: until the version moves).
Built = tuple[bytes, int] | tuple[bytes, int, float | None]

#: How many of the tags of an ``If-None-Match`` are checked without building (browsers send one).
_TAGS_CHECKED = 4


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True, slots=True)
class Cached:
    """One built answer, the store version it was built at, and the moment (epoch ms) it expires, if any."""

    version: int
    body: bytes
    status: int
    etag: str
    expires_ms: int | None = None

    def holds(self, version: int) -> bool:
        """Whether this is still the answer at ``version`` (and now)."""
        return self.version == version and (self.expires_ms is None or _now_ms() < self.expires_ms)


class _Gate:
    """One key's build lock, and how many threads hold or wait for it."""

    __slots__ = ("lock", "users")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.users = 0


class ResponseCache:
    """Answers keyed by route and arguments, rebuilt only when the store's version has moved."""

    def __init__(self, store: StateStore, size: int = 512) -> None:
        self._store = store
        self._size = size
        self._entries: OrderedDict[Hashable, Cached] = OrderedDict()
        self._gates: dict[Hashable, _Gate] = {}  # keys being built now
        self._lock = threading.Lock()

    @staticmethod
    def etag(key: Hashable, version: int, expires_ms: int | None = None) -> str:
        """The tag of the answer to ``key`` at ``version``, expiring at ``expires_ms`` (the same in every worker)."""
        if expires_ms is None:
            return hashlib.blake2b(f"{version}:{key!r}".encode(), digest_size=12).hexdigest()
        digest = hashlib.blake2b(f"{version}:{expires_ms}:{key!r}".encode(), digest_size=12).hexdigest()
        return f"{digest}.{expires_ms}"

    def respond(self, key: Hashable, build: Callable[[], Built], media_type: str, shortcut: bool = False) -> Response:
        """The answer to ``key``: 304 when the client holds the current one, else the cached or built body.

        ``shortcut``: ``key`` names an answer that always exists (no plugin name in it), so a matching
        ``If-None-Match`` is answered before anything is built.
        """
        if shortcut:
            version = self._store.version()
            held = self._held(key, version)
            if held is not None:
                return _not_modified(held)
            return respond(self.get(key, build, version), media_type)
        return respond(self.get(key, build), media_type)

    def _held(self, key: Hashable, version: int) -> str | None:
        """The tag of ``If-None-Match`` that is the current answer to ``key`` at ``version``, if one is.

        Weak comparison (RFC 9110 13.1.2, as ``If-None-Match`` requires): ``W/"tag"`` matches our strong ``"tag"``.
        """
        held = request.if_none_match
        for tag in itertools.islice(itertools.chain(held, held.as_set(include_weak=True) - held.as_set()),
                                    _TAGS_CHECKED):
            if not tag:  # werkzeug may keep a None (typed str) for a malformed header
                continue
            _, dot, tail = tag.partition(".")
            if not dot:
                if tag == self.etag(key, version):
                    return tag
            elif tail.isascii() and tail.isdigit() and len(tail) <= 15:
                expires_ms = int(tail)
                if _now_ms() < expires_ms and tag == self.etag(key, version, expires_ms):
                    return tag
        return None

    def get(self, key: Hashable, build: Callable[[], Built], version: int | None = None) -> Cached:
        """The cached answer for ``key`` if still current, else ``build()`` it.

        Threads of one worker that miss the same key build it one at a time: those that waited take the answer
        just built if the store has not moved since, instead of all building the same body at once (with 10,000
        plugins a cold build of the list takes 0.4 s, and such a herd after every change starved the worker).
        """
        if version is None:
            version = self._store.version()
        hit = self._current(key, version)
        if hit is not None:
            return hit
        with self._building(key) as waited:
            if waited:
                version = self._store.version()
                hit = self._current(key, version)
                if hit is not None:
                    return hit
            built = build()
            until = built[2] if len(built) == 3 else None
            expires_ms = None if until is None else math.floor(until * 1000)
            entry = Cached(version, built[0], built[1], self.etag(key, version, expires_ms), expires_ms)
            with self._lock:
                self._entries[key] = entry
                self._entries.move_to_end(key)
                while len(self._entries) > self._size:
                    self._entries.popitem(last=False)
        return entry

    def _current(self, key: Hashable, version: int) -> Cached | None:
        with self._lock:
            hit = self._entries.get(key)
            if hit is not None and hit.holds(version):
                self._entries.move_to_end(key)
                return hit
        return None

    @contextmanager
    def _building(self, key: Hashable) -> Iterator[bool]:
        """Hold ``key``'s build gate; yields whether another thread held it first (its answer may do)."""
        with self._lock:
            gate = self._gates.get(key)
            if gate is None:
                gate = self._gates[key] = _Gate()
            gate.users += 1
        waited = not gate.lock.acquire(blocking=False)
        if waited:
            gate.lock.acquire()
        try:
            yield waited
        finally:
            gate.lock.release()
            with self._lock:
                gate.users -= 1
                if not gate.users:
                    del self._gates[key]


def _not_modified(etag: str) -> Response:
    response = Response(status=304)
    response.set_etag(etag)
    response.headers["Cache-Control"] = "no-cache"
    return response


def respond(entry: Cached, media_type: str) -> Response:
    """The cached answer (``media_type`` exactly as given), or 304 when the client already holds it (compared
    weakly, as RFC 9110 says of ``If-None-Match``: ``W/"tag"`` and ``*`` match too)."""
    if request.if_none_match.contains_weak(entry.etag):
        return _not_modified(entry.etag)
    else:
        response = Response(entry.body, status=entry.status)
        response.headers["Content-Type"] = media_type
    response.set_etag(entry.etag)
    response.headers["Cache-Control"] = "no-cache"
    return response
