"""The lock that makes one process the plugin host of an instance: a file lock beside the instance's store.

A :class:`HostLock` (``flock``) is released by the kernel when its holder dies, however it dies. (Every instance
hosts its own plugins, with a Redis store too; a singleton's lease across instances is
:mod:`plugin_health.coordination.leases`.)
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
from pathlib import Path
from typing import IO, Protocol


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
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)  # no file object: probes ask often (half the cost)
    except FileNotFoundError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)
    return True
