"""Cheap reads: answers cached per store version, with strong ETags and 304 for ``If-None-Match`` (compared weakly).

An answer's ETag is a hash of its cache key and the store's version, not of its body: every worker gives the
same tag for the same version, and a 304 for a route whose key is always valid (the list, the aggregate) is
answered without building the body at all, even by a worker that has never built it.

Time alone can change an answer too: a RUNNING plugin turns stale when its ``stale_after`` passes, with no write
to the store. A build may therefore say until when its answer holds (epoch seconds, worked out from the snapshots
it read: see ``api.freshness``); the entry is rebuilt after that even if the version has not moved, and its ETag
carries that moment (``<hash>.<milliseconds>``), so a client's tag stops matching once it has passed, and any
worker can still check a tag without building: same version, a moment not yet passed, and the hash of both.

An answer of ``GZIP_MIN`` bytes or more goes gzip-compressed to a client that accepts it (``Accept-Encoding``),
compressed once per entry (the first time a client asks for it), not once per request. Each encoding is a
representation of its own with a strong ETag of its own (RFC 9110 8.8.3: the hash covers the encoding too), so
a 304 names the representation the client holds; every answer says ``Vary: Accept-Encoding``.
"""

from __future__ import annotations

import gzip
import hashlib
import itertools
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from flask import Response, request
from werkzeug.datastructures import ETags
from werkzeug.http import parse_accept_header, quote_etag

from plugin_health.store import StateStore

#: Headers a build adds to its answer (the list's ``Link``), kept with it in the cache.
Headers = tuple[tuple[str, str], ...]
#: What a build returns: the body and status, and optionally until when (epoch seconds) that answer holds at the
#: version it was built at (None: until the version moves), and headers of its own.
Built = tuple[bytes, int] | tuple[bytes, int, float | None] | tuple[bytes, int, float | None, Headers]

#: Answers this long or longer are gzip-compressed for a client that accepts it; below, the bytes saved do not pay
#: for the header and the work (and a body under one TCP segment gains nothing).
GZIP_MIN = 1024
#: zlib's fastest level: the list of 10,000 plugins (3.4 MB) shrinks about 20-fold in some 15 ms; level 6 saves a
#: few percent more at three times the time.
GZIP_LEVEL = 1
GZIP = "gzip"
IDENTITY = "identity"

#: How many of the tags of an ``If-None-Match`` are checked without building (browsers send one).
_TAGS_CHECKED = 4


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(slots=True, eq=False)
class Cached:
    """One built answer, the store version it was built at, the moment (epoch ms) it expires, if any, and its
    headers; its gzip-compressed body once a client has asked for it. Never changed after it is made, but for
    that body filled in once."""

    version: int
    body: bytes
    status: int
    etag: str
    expires_ms: int | None = None
    headers: Headers = ()
    gzip_etag: str = ""
    _gzipped: bytes | None = field(default=None, repr=False)
    #: The status line and header lists of the fast path's answers, by encoding (``api.fast``), once made.
    wsgi: dict[str, tuple[str, list[tuple[str, str]], bytes]] = field(default_factory=dict, repr=False)

    def holds(self, version: int) -> bool:
        """Whether this is still the answer at ``version`` (and now)."""
        return self.version == version and (self.expires_ms is None or _now_ms() < self.expires_ms)

    def gzipped(self) -> bytes:
        """The body gzip-compressed (at ``GZIP_LEVEL``, without a timestamp: the same bytes in every worker).

        Two threads may both compress a body nobody had asked for yet; they make the same bytes, so no lock.
        """
        if self._gzipped is None:
            self._gzipped = gzip.compress(self.body, compresslevel=GZIP_LEVEL, mtime=0)
        return self._gzipped

    def encoding(self) -> str:
        """How this answer goes to the current request's client: gzip when it is long enough and accepted."""
        return self.encoding_for(accepts_gzip)

    def encoding_for(self, gzip_ok: Callable[[], bool]) -> str:
        """How this answer goes to a client: gzip when it is long enough and ``gzip_ok()`` (asked only then)."""
        return GZIP if len(self.body) >= GZIP_MIN and gzip_ok() else IDENTITY

    def etag_of(self, encoding: str) -> str:
        """The strong ETag of this answer in ``encoding``."""
        return self.gzip_etag if encoding == GZIP else self.etag


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
    def etag(key: Hashable, version: int, expires_ms: int | None = None, encoding: str = IDENTITY) -> str:
        """The tag of the answer to ``key`` at ``version``, expiring at ``expires_ms``, in ``encoding`` (the same
        in every worker)."""
        coded = "" if encoding == IDENTITY else f"{encoding}:"
        if expires_ms is None:
            return hashlib.blake2b(f"{coded}{version}:{key!r}".encode(), digest_size=12).hexdigest()
        digest = hashlib.blake2b(f"{coded}{version}:{expires_ms}:{key!r}".encode(), digest_size=12).hexdigest()
        return f"{digest}.{expires_ms}"

    def respond(self, key: Hashable, build: Callable[[], Built], media_type: str, shortcut: bool = False) -> Response:
        """The answer to ``key``: 304 when the client holds the current one, else the cached or built body.

        ``shortcut``: ``key`` names an answer that always exists (no plugin name in it), so a matching
        ``If-None-Match`` is answered before anything is built.
        """
        if shortcut:
            version = self._store.version()
            held = self.held(key, version, request.if_none_match, accepts_gzip())
            if held is not None:
                return _not_modified(held)
            return respond(self.get(key, build, version), media_type)
        return respond(self.get(key, build), media_type)

    def held(self, key: Hashable, version: int, held: ETags, gzip_ok: bool) -> str | None:
        """The tag of ``held`` (an ``If-None-Match``) that is the current answer to ``key`` at ``version``, if one is.

        Weak comparison (RFC 9110 13.1.2, as ``If-None-Match`` requires): ``W/"tag"`` matches our strong ``"tag"``.
        The tag of either representation the client may get matches: the identity one always (the body may be too
        short to compress, and one held uncompressed is as current), the gzip one when it accepts gzip.
        """
        encodings = (IDENTITY, GZIP) if gzip_ok else (IDENTITY,)
        for tag in itertools.islice(itertools.chain(held, held.as_set(include_weak=True) - held.as_set()),
                                    _TAGS_CHECKED):
            if not tag:  # werkzeug may keep a None (typed str) for a malformed header
                continue
            _, dot, tail = tag.partition(".")
            if not dot:
                if any(tag == self.etag(key, version, None, encoding) for encoding in encodings):
                    return tag
            elif tail.isascii() and tail.isdigit() and len(tail) <= 15:
                expires_ms = int(tail)
                if _now_ms() < expires_ms and any(tag == self.etag(key, version, expires_ms, encoding)
                                                  for encoding in encodings):
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
            until = built[2] if len(built) >= 3 else None
            headers: Headers = built[3] if len(built) == 4 else ()
            expires_ms = None if until is None else math.floor(until * 1000)
            entry = Cached(version, built[0], built[1], self.etag(key, version, expires_ms), expires_ms, headers,
                           self.etag(key, version, expires_ms, GZIP))
            with self._lock:
                self._entries[key] = entry
                self._entries.move_to_end(key)
                while len(self._entries) > self._size:
                    self._entries.popitem(last=False)
        return entry

    def _current(self, key: Hashable, version: int) -> Cached | None:
        return self.peek(key, version)

    def peek(self, key: Hashable, version: int) -> Cached | None:
        """The cached answer for ``key`` if it holds at ``version`` (and now), else None: nothing is built."""
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


def accepts_gzip() -> bool:
    """Whether the current request's ``Accept-Encoding`` takes gzip (``gzip`` or ``*``, not at ``q=0``)."""
    return request.accept_encodings[GZIP] > 0


def takes_gzip(accept_encoding: str | None) -> bool:
    """Whether an ``Accept-Encoding`` header's value takes gzip, read as :func:`accepts_gzip` reads a request's."""
    return parse_accept_header(accept_encoding)[GZIP] > 0


def matching_tag(entry: Cached, encoding: str, held: ETags) -> str | None:
    """The tag of ``entry`` that ``held`` (an ``If-None-Match``) matches, compared weakly (``*`` too), if one does:
    the tag of the representation it would get, or the identity one (see ``ResponseCache.held``)."""
    for tag in dict.fromkeys((entry.etag_of(encoding), entry.etag)):
        if held.contains_weak(tag):
            return tag
    return None


def _not_modified(etag: str) -> Response:
    # Headers given whole to the constructor: each ``headers[...] = `` scans the list to replace (a third of a
    # cached read's Python time went to setting six headers one by one).
    return Response(status=304, headers=[("ETag", quote_etag(etag)), *ALWAYS])


#: Headers of every cached answer and 304.
ALWAYS = (("Cache-Control", "no-cache"), ("Vary", "Accept-Encoding"))


def respond(entry: Cached, media_type: str) -> Response:
    """The cached answer (``media_type`` exactly as given), gzip-compressed when it is long and the client accepts
    it, or 304 when the client already holds it (compared weakly, as RFC 9110 says of ``If-None-Match``:
    ``W/"tag"`` and ``*`` match too; the identity tag matches whatever the client accepts, see ``_held``)."""
    encoding = entry.encoding()
    if "HTTP_IF_NONE_MATCH" in request.environ:  # most reads carry none: no header to parse
        held = matching_tag(entry, encoding, request.if_none_match)
        if held is not None:
            return _not_modified(held)
    headers = [("Content-Type", media_type), *entry.headers, ("ETag", quote_etag(entry.etag_of(encoding))), *ALWAYS]
    if encoding == GZIP:
        headers.append(("Content-Encoding", GZIP))
        return Response(entry.gzipped(), status=entry.status, headers=headers)
    return Response(entry.body, status=entry.status, headers=headers)
