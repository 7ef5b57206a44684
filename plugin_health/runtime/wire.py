"""The wire between the core and its runners: length-prefixed frames, never pickle.

The core's requests are ``marshal`` frames (:func:`encode_request`): only the core writes them, only a runner
reads them. A runner's answers are JSON (:func:`frame_text`), which the core decodes with the standard library's
``json`` (:func:`decode`): no object hooks, so nothing in an answer can name code to run; integers exact however
long (JSON has no size for them; a 64-bit decoder would turn them into floats or refuse them); ``NaN`` and
``Infinity`` refused; and only frames up to a size the core chose. A frame that is too big, cut short or not JSON
is a :class:`WireError`: the core then treats the runner as broken (it ran plugin code, so a plugin may have
written to the descriptor).

A runner encodes its answers inside the call's sandbox, so a result whose encoding runs plugin code (a ``dict``
subclass's ``items``) is held to the call's timeout and memory limit.
"""

from __future__ import annotations

import json
import marshal
import socket
import struct
from collections.abc import Callable
from typing import Any

#: Frames are prefixed by their length as 4 bytes, big-endian.
_HEADER = struct.Struct(">I")
#: The default largest frame, in bytes (``PLUGIN_HEALTH_MAX_MESSAGE_BYTES``).
MAX_MESSAGE = 16 * 1024 * 1024
#: Bytes asked of ``recv`` at a time.
_CHUNK = 65536
#: The longest source text a runner compiles ahead (a load the core marks ``ahead``: see ``Runner.compile_ahead``):
#: a trivial plugin's is under 100 bytes; a text this short compiles in well under a millisecond, and its syntax
#: tree cannot be deep enough to strain the compiler.
AHEAD_TEXT = 8 * 1024
#: Member of a call's answer that marks its ``result`` as a ``HealthResult``'s wire form (``HealthResult.to_wire``):
#: set by a runner for a health check only, so that the core tells it from a plain dict the check returned (which
#: fails, naming its type). The core decodes it again (``HealthResult.from_wire``).
HEALTH_RESULT = "health_result"


class WireError(Exception):
    """A frame could not be sent, read or decoded."""


class MessageTooLargeError(WireError):
    """A message is larger than the frames allow."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"a message of {size} bytes is larger than the limit of {limit} bytes")
        self.size = size
        self.limit = limit


class PeerClosedError(WireError):
    """The other end closed the connection (or died)."""


def encode_request(message: Any, limit: int = MAX_MESSAGE) -> bytes:
    """One frame of a core's request to its runner, in ``marshal``'s format (the runner decodes it fast and with
    nothing to import; only the core writes requests, so nothing a plugin made is ever unmarshalled by the core).

    ``ValueError`` for a value marshal cannot carry, :class:`MessageTooLargeError` past ``limit``.
    """
    body = marshal.dumps(message)
    if len(body) > limit:
        raise MessageTooLargeError(len(body), limit)
    return _HEADER.pack(len(body)) + body


def frame_text(text: str, limit: int = MAX_MESSAGE) -> bytes:
    """One frame of JSON text already encoded (a runner's answer); :class:`MessageTooLargeError` past ``limit``."""
    body = text.encode()
    if len(body) > limit:
        raise MessageTooLargeError(len(body), limit)
    return _HEADER.pack(len(body)) + body


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


#: One decoder, made once: ``json.loads`` with an option makes a new one at each call, and guesses the encoding of
#: bytes first (together 60% of decoding an answer). UTF-8, as ``json.loads`` reads it (``surrogatepass``).
_decode_text = json.JSONDecoder(parse_constant=_no_constant).decode


def decode(body: bytes) -> Any:
    """The value of one frame's body (plain JSON values only); :class:`WireError` if it is not JSON."""
    try:
        return _decode_text(body.decode("utf-8", "surrogatepass"))
    except (ValueError, RecursionError) as err:  # JSONDecodeError, bad UTF-8, an integer past Python's digits
        raise WireError(f"a frame is not JSON ({err})") from None


def decode_request(body: bytes) -> Any:
    """A request of the core, read by its runner (see :func:`encode_request`)."""
    try:
        return marshal.loads(body)
    except (ValueError, EOFError, TypeError) as err:
        raise WireError(f"a request is not readable ({err})") from None


class FrameReader:
    """Reads one frame at a time from a socket (a non-blocking one: ``poll`` first only when nothing has arrived): a
    frame usually arrives in one ``recv``, header and body together, and a runner ahead of the core sends many at
    once (as the core sends a runner its loads). What arrived is kept in one buffer read from an offset: the bytes
    after a frame are not copied at each read (a ``recv`` of 64 KiB holds hundreds of answers, and copying the rest
    at each one made reading them quadratic). ``loads`` decodes a frame's body (answers' JSON by default)."""

    __slots__ = ("_buffer", "_start", "limit", "loads", "sock")

    def __init__(self, sock: socket.socket, limit: int, loads: Callable[[bytes], Any] = decode) -> None:
        self.sock = sock
        self.limit = limit
        self.loads = loads
        self._buffer = bytearray()  # what has arrived and was not read yet, from ``_start`` on
        self._start = 0

    def read(self, wait: Callable[[], None], more: bool = False) -> Any:
        """The next frame's value; ``wait()`` blocks until the socket is readable (or raises), called only when
        nothing is there to read (the answers of a runner ahead of the core are read without a poll each).
        ``more``: further frames are awaited (requests sent ahead), so bytes after this one are kept for the next
        read; otherwise nobody asked for them, and they are a broken protocol."""
        buffer = self._buffer
        need = -1
        while True:
            start = self._start
            have = len(buffer) - start
            if need < 0 and have >= _HEADER.size:
                (size,) = _HEADER.unpack_from(buffer, start)
                if size > self.limit:
                    raise MessageTooLargeError(size, self.limit)
                need = _HEADER.size + size
            if 0 <= need <= have:
                if have > need and not more:
                    raise WireError("bytes after the answer: nobody asked for them")
                with memoryview(buffer) as view:
                    body = view[start + _HEADER.size:start + need].tobytes()
                if have == need:
                    buffer.clear()
                    self._start = 0
                else:
                    self._start = start + need
                return self.loads(body)
            if start:  # a frame is cut: what was read goes, and the rest moves to the front, once
                del buffer[:start]
                self._start = 0
            try:  # what has arrived is read at once: ``wait()`` (a poll) only when nothing has
                chunk = self.sock.recv(max(_CHUNK, need - len(buffer)))
            except BlockingIOError:
                wait()
                continue
            except OSError as err:
                raise PeerClosedError(f"cannot read: {err.strerror or err}") from None
            if not chunk:
                raise PeerClosedError("the peer closed the connection")
            buffer += chunk

    def waiting(self) -> bool:
        """Whether a whole frame was read already and waits in the buffer: the next ``read`` returns it without a
        ``recv`` (a runner takes the requests that arrived together as one group)."""
        have = len(self._buffer) - self._start
        if have < _HEADER.size:
            return False
        size: int = _HEADER.unpack_from(self._buffer, self._start)[0]
        return have >= _HEADER.size + size

    def fill(self) -> int:
        """Read what has arrived into the buffer, for ``read`` to return later; how many bytes. A writer must not
        leave its peer blocked on the peer's own writes meanwhile (``RunnerProcess._send``). Nothing is read past
        ``limit`` bytes waiting (a peer that sends without end is not buffered without end: it stays blocked, and the
        writer's deadline ends it), nor when nothing has arrived or the connection broke (``read`` reports that)."""
        if len(self._buffer) - self._start >= self.limit + _HEADER.size:
            return 0
        try:
            chunk = self.sock.recv(_CHUNK)
        except OSError:  # nothing yet (non-blocking), or a broken connection
            return 0
        self._buffer += chunk
        return len(chunk)


def send(sock: socket.socket, frame: bytes) -> None:
    """Write one encoded frame; :class:`PeerClosedError` if the peer is gone."""
    try:
        sock.sendall(frame)
    except OSError as err:
        raise PeerClosedError(f"cannot send: {err.strerror or err}") from None
