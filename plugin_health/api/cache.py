"""Cheap reads: answers cached per store version, with strong ETags and 304 for ``If-None-Match``."""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass

from flask import Response, request

from plugin_health.store import StateStore


@dataclass(frozen=True, slots=True)
class Cached:
    """One built answer and the store version it was built at."""

    version: int
    body: bytes
    status: int
    etag: str


class ResponseCache:
    """Answers keyed by route and arguments, rebuilt only when the store's version has moved."""

    def __init__(self, store: StateStore, size: int = 512) -> None:
        self._store = store
        self._size = size
        self._entries: OrderedDict[Hashable, Cached] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable, build: Callable[[], tuple[bytes, int]]) -> Cached:
        """The cached answer for ``key`` if still current, else ``build()`` it."""
        version = self._store.version()
        with self._lock:
            hit = self._entries.get(key)
            if hit is not None and hit.version == version:
                self._entries.move_to_end(key)
                return hit
        body, status = build()
        entry = Cached(version, body, status, hashlib.blake2b(body, digest_size=12).hexdigest())
        with self._lock:
            self._entries[key] = entry
            self._entries.move_to_end(key)
            while len(self._entries) > self._size:
                self._entries.popitem(last=False)
        return entry


def respond(entry: Cached, media_type: str) -> Response:
    """The cached answer (``media_type`` exactly as given), or 304 when the client already holds it."""
    if request.if_none_match.contains(entry.etag) or request.if_none_match.star_tag:
        response = Response(status=304)
    else:
        response = Response(entry.body, status=entry.status)
        response.headers["Content-Type"] = media_type
    response.set_etag(entry.etag)
    response.headers["Cache-Control"] = "no-cache"
    return response
