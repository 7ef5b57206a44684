"""A TCP proxy on loopback that the tests can cut and restore: a network partition between a client and Redis.

While cut, no byte crosses in either direction and no connection is closed: the peers wait, and time out, as
across a real partition. :meth:`TcpProxy.restore` closes the connections that lived through the cut (a real
network's broken sessions end in resets, sooner or later) and forwards new ones again.
"""

from __future__ import annotations

import contextlib
import ipaddress
import select
import socket
import threading
import time
from collections.abc import Callable

#: Connections open at once; one more is closed as soon as it is accepted.
MAX_LINKS = 32
#: Seconds a thread waits for bytes before it looks whether the proxy is closing.
_POLL = 0.05


def _close(sock: socket.socket) -> None:
    """Close ``sock``, waking a thread blocked on it (``shutdown`` does, ``close`` alone may not)."""
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()


class _Link:
    """One accepted connection and its connection to the target (None if it was accepted during a cut)."""

    def __init__(self, client: socket.socket, upstream: socket.socket | None) -> None:
        self.client = client
        self.upstream = upstream
        self.severed = threading.Event()  # set by a cut: bytes are swallowed from then on
        self.closed = threading.Event()

    def close(self) -> None:
        """Close both ends."""
        self.closed.set()
        _close(self.client)
        if self.upstream is not None:
            _close(self.upstream)


class TcpProxy:
    """Forwards connections from a free loopback port to ``target_host:target_port``, until it is cut."""

    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        if not ipaddress.ip_address(target_host).is_loopback:
            raise ValueError(f"a test proxy forwards to loopback only, not {target_host!r}")
        self.target = (target_host, target_port)
        self._listener = socket.socket()
        self._listener.bind(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._links: list[_Link] = []
        self._threads: list[threading.Thread] = []
        self._guard = threading.Lock()
        self._cut = False
        self._stopping = threading.Event()
        self._acceptor: threading.Thread | None = None

    @property
    def redis_url(self) -> str:
        """A Redis URL through the proxy."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> TcpProxy:
        """Listen and forward."""
        self._listener.listen(16)
        self._acceptor = threading.Thread(target=self._accept, name=f"tcp-proxy-{self.port}", daemon=True)
        self._acceptor.start()
        return self

    def cut(self) -> None:
        """Partition: no byte crosses any more, either way, on open and new connections; nothing is closed."""
        with self._guard:
            self._cut = True
            for link in self._links:
                link.severed.set()

    def restore(self) -> None:
        """Heal: new connections are forwarded; those that lived through the cut are closed."""
        with self._guard:
            self._cut = False
            severed = [link for link in self._links if link.severed.is_set()]
        for link in severed:
            link.close()

    def close(self) -> None:
        """Stop everything, close every socket, and wait (a second or so at most) for the threads."""
        self._stopping.set()
        if self._acceptor is not None:
            self._acceptor.join(timeout=1.0)  # no new connection after this
        _close(self._listener)
        with self._guard:
            links, threads = list(self._links), list(self._threads)
        for link in links:
            link.close()
        deadline = time.monotonic() + 1.0
        for thread in threads:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))

    def __enter__(self) -> TcpProxy:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _spawn(self, target: Callable[..., None], *args: object) -> None:
        thread = threading.Thread(target=target, args=args, name=f"tcp-proxy-{self.port}", daemon=True)
        with self._guard:
            self._threads = [t for t in self._threads if t.is_alive()]
            self._threads.append(thread)
        thread.start()

    def _readable(self, sock: socket.socket) -> bool:
        """Wait a moment for ``sock`` to have bytes (or EOF); False when there is nothing yet."""
        try:
            ready, _, _ = select.select([sock], [], [], _POLL)
        except (OSError, ValueError):  # closed by another thread
            return True
        return bool(ready)

    def _accept(self) -> None:
        while not self._stopping.is_set():
            if not self._readable(self._listener):
                continue
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            self._admit(client)

    def _admit(self, client: socket.socket) -> None:
        with self._guard:
            self._links = [link for link in self._links if not link.closed.is_set()]
            cut, full = self._cut, len(self._links) >= MAX_LINKS
        if full or self._stopping.is_set():
            _close(client)
            return
        upstream = None
        if not cut:
            try:
                upstream = socket.create_connection(self.target, timeout=1.0)
            except OSError:
                _close(client)  # the target is down: so is the connection through the proxy
                return
            upstream.settimeout(None)
        link = _Link(client, upstream)
        with self._guard:
            if self._cut:
                link.severed.set()
            self._links.append(link)
        self._spawn(self._pump, link, client, upstream)
        if upstream is not None:
            self._spawn(self._pump, link, upstream, client)

    def _pump(self, link: _Link, source: socket.socket, sink: socket.socket | None) -> None:
        """Copy bytes from ``source`` to ``sink`` until either closes; while severed, swallow them."""
        while not self._stopping.is_set() and not link.closed.is_set():
            if not self._readable(source):
                continue
            try:
                data = source.recv(65536)
            except OSError:
                data = b""
            if not data:
                if not link.severed.is_set():
                    link.close()  # an end closed: so does the other; across a cut, the other never hears of it
                return
            if link.severed.is_set() or sink is None:
                continue
            try:
                sink.sendall(data)
            except OSError:
                link.close()
                return
