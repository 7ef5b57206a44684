"""The lock that makes one process the plugin host: a file lock on one machine, a lease in Redis across many.

A :class:`HostLock` (``flock``) is released by the kernel when its holder dies, however it dies. A
:class:`RedisLease` is a key set with ``NX`` and a time to live, renewed by the host's heartbeat; a host that
dies stops renewing, and a standby host takes the lease once it has expired. A host that finds its lease taken
by another (Redis lost it, say) must stop hosting: :meth:`renew` then answers False.
"""

from __future__ import annotations

import contextlib
import fcntl
import math
import threading
import time
import uuid
from pathlib import Path
from typing import IO, Protocol

import redis

from plugin_health.store import StateStore
from plugin_health.store.redis import RedisStore

#: Seconds a Redis lease lives without renewal.
LEASE = 3.0
_RENEW = """
if redis.call('get', KEYS[1]) == ARGV[1] then
    return redis.call('pexpire', KEYS[1], ARGV[2])
elseif redis.call('set', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
    return 1
end
return 0
"""


class Lock(Protocol):
    """What makes a process the one that hosts the plugins."""

    def acquire(self, timeout: float = 0.0, stop: threading.Event | None = None) -> bool:
        """Take it, waiting up to ``timeout`` seconds (``math.inf``: until ``stop`` is set)."""
        ...

    def renew(self) -> bool:
        """Keep it; False if it is no longer ours."""
        ...

    def release(self) -> None:
        """Give it back."""
        ...


def _wait(deadline: float, stop: threading.Event | None, pause: float) -> bool:
    """Pause before the next try; False when it is time to give up."""
    if time.monotonic() >= deadline:
        return False
    if stop is not None:
        return not stop.wait(pause)
    time.sleep(pause)
    return True


class HostLock:
    """An exclusive ``flock`` on a file beside the store."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._handle: IO[bytes] | None = None

    def acquire(self, timeout: float = 0.0, stop: threading.Event | None = None) -> bool:
        """Take the lock, waiting up to ``timeout`` seconds; False if another process holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+b")  # noqa: SIM115 - held open for as long as the lock is held
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if not _wait(deadline, stop, 0.05):
                    handle.close()
                    return False
                continue
            self._handle = handle
            return True

    def renew(self) -> bool:
        """A file lock is ours until we let it go."""
        return self._handle is not None

    def release(self) -> None:
        """Give the lock back (closing the file releases it)."""
        if self._handle is not None:
            self._handle.close()
            self._handle = None


def lock_is_free(path: Path) -> bool:
    """Whether no process holds the file lock at ``path`` (a host that died, even by ``kill -9``, holds none)."""
    try:
        handle = open(path, "rb")  # noqa: SIM115 - closed below, however the probe ends
    except FileNotFoundError:
        return True
    try:
        fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        handle.close()
    return True


class RedisLease:
    """A lease in Redis, renewed by the heartbeat; standby hosts wait for it."""

    def __init__(self, store: RedisStore, ttl: float = LEASE) -> None:
        self.store = store
        self.key = store.key("host-lease")
        self.token = uuid.uuid4().hex
        self.ttl_ms = int(ttl * 1000)
        self._held = False

    def acquire(self, timeout: float = 0.0, stop: threading.Event | None = None) -> bool:
        """Take the lease when it is free; with ``math.inf``, wait as a standby until then (or ``stop``)."""
        deadline = math.inf if timeout == math.inf else time.monotonic() + timeout
        while True:
            try:
                if self.store.client.set(self.key, self.token, nx=True, px=self.ttl_ms):
                    self._held = True
                    return True
            except redis.RedisError:
                pass  # Redis away: nobody can take it; try again
            if not _wait(deadline, stop, 0.25):
                return False

    def renew(self) -> bool:
        """Extend the lease; False if another host holds it now. While Redis is away, it stays ours."""
        if not self._held:
            return False
        try:
            kept = bool(self.store.client.eval(_RENEW, 1, self.key, self.token, self.ttl_ms))
        except redis.RedisError:
            return True  # nobody else can take it while Redis is away
        self._held = kept
        return kept

    def release(self) -> None:
        """Give the lease back, if it is still ours."""
        if not self._held:
            return
        self._held = False
        with contextlib.suppress(redis.RedisError):  # else it expires by itself
            self.store.client.eval(
                "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0",
                1, self.key, self.token,
            )


def lock_for(store: StateStore, path: Path | None) -> Lock | None:
    """The lock of whoever hosts the plugins of ``store``: a lease for Redis, ``path``'s lock, or None."""
    if isinstance(store, RedisStore):
        return RedisLease(store)
    return None if path is None else HostLock(path)
