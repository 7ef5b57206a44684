"""The memory guard of inline calls, and the memory cap of a plugin's child process.

What it can and cannot do (measured on Linux, Python 3.11):

* On the main thread, the guard lowers the process's soft ``RLIMIT_DATA`` (``RLIMIT_AS`` where there is no
  ``RLIMIT_DATA``) to the current usage plus the call's allowance for the duration of the call, and puts the
  old limit back when the call ends, however it ends. An allocation past the allowance then fails, Python
  raises ``MemoryError``, and the sandbox reports ``PluginMemoryError``; the server goes on. Arming and
  disarming costs about 1.5 us (one read of ``/proc/self/statm`` and two ``setrlimit`` calls).
* ``RLIMIT_DATA`` counts the heap and private writable mappings, not thread stacks or ``PROT_NONE``
  reservations, so it tracks what a plugin allocates far better than ``RLIMIT_AS`` (virtual size, which
  thread pools inflate by hundreds of MiB). It does not count file-backed shared mappings, memory a C
  extension obtains outside ``malloc``/``mmap`` accounting, or pages of memory that was already mapped.
* The limit is process-wide: while a guarded call runs, every thread of the process is held to it. That is
  why it is only ever lowered from the main thread (the sync worker of gunicorn, a CLI) and always restored.
* Off the main thread (a threaded server) nothing is lowered, because it would starve the other threads.
  The guard then only detects after the fact: the call is reported as ``PluginMemoryError`` when the memory
  it kept grew past the allowance, or when it raised the process's peak resident size by more than the
  allowance. A short spike that the process's peak had already covered is not seen, other threads'
  allocations can be counted against the call, and nothing stops the allocation itself: use
  ``isolation = "process"`` for a hard cap.
* In a child process (process isolation), :func:`cap_process` sets ``RLIMIT_DATA`` once, to the child's
  usage after the plugin is imported (its baseline) plus the allowance.
"""

from __future__ import annotations

import os
import resource
import threading

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_MIB = 1024 * 1024

#: The limit the guard lowers, and the field of /proc/self/statm that it counts.
if hasattr(resource, "RLIMIT_DATA"):
    LIMIT, _STATM_FIELD = resource.RLIMIT_DATA, 5  # data + stack pages
else:  # pragma: no cover - every Linux has RLIMIT_DATA
    LIMIT, _STATM_FIELD = resource.RLIMIT_AS, 0  # virtual size in pages

_statm_fd: int | None = None
_statm_lock = threading.Lock()


def _reset_after_fork() -> None:
    # An inherited descriptor of /proc/self/statm still describes the parent.
    global _statm_fd
    _statm_fd = None
    globals()["_statm_lock"] = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)


def _statm() -> list[bytes] | None:
    """The fields of /proc/self/statm (pages), read through a descriptor kept open; None if unavailable."""
    global _statm_fd
    fd = _statm_fd
    if fd is None:
        with _statm_lock:
            if _statm_fd is None:
                try:
                    _statm_fd = os.open("/proc/self/statm", os.O_RDONLY | os.O_CLOEXEC)
                except OSError:
                    return None
            fd = _statm_fd
    try:
        return os.pread(fd, 256, 0).split()
    except OSError:
        return None


def usage() -> int | None:
    """Bytes of the process that count against :data:`LIMIT`; None where /proc is not available."""
    fields = _statm()
    return None if fields is None else int(fields[_STATM_FIELD]) * _PAGE


def _resident() -> int:
    fields = _statm()
    return 0 if fields is None else int(fields[1]) * _PAGE


def _peak_resident() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


class MemoryGuard:
    """Guards one call: arm before it, disarm after it (idempotent), then read :attr:`exceeded`."""

    __slots__ = ("_peak", "_resident", "_saved", "_usage", "allowance", "exceeded", "limit_mb")

    def __init__(self, limit_mb: int) -> None:
        self.limit_mb = limit_mb
        self.allowance = limit_mb * _MIB
        self.exceeded = False
        self._saved: tuple[int, int] | None = None
        self._usage: int | None = None
        self._peak = 0
        self._resident = 0

    def arm(self, lower: bool) -> None:
        """Start guarding: lower the limit when ``lower`` (main thread only), else record a baseline."""
        current = usage()
        if current is None:
            return
        if lower:
            soft, hard = resource.getrlimit(LIMIT)
            target = current + self.allowance
            if soft != resource.RLIM_INFINITY:
                target = min(target, soft)  # a nested guard never loosens an outer one
            if hard != resource.RLIM_INFINITY:
                target = min(target, hard)
            resource.setrlimit(LIMIT, (target, hard))
            self._saved = (soft, hard)
        else:
            self._usage = current
            self._resident = _resident()
            self._peak = _peak_resident()

    def disarm(self) -> None:
        """Stop guarding: restore the limit, or measure what the call kept and peaked at."""
        saved, self._saved = self._saved, None
        if saved is not None:
            resource.setrlimit(LIMIT, saved)
            return
        before, self._usage = self._usage, None
        if before is None:
            return
        after = usage()
        if after is not None and after - before > self.allowance:
            self.exceeded = True
            return
        peak = _peak_resident()
        if peak > self._peak and peak - self._resident > self.allowance:
            self.exceeded = True


def cap_process(limit_mb: int, current: int | None = None, hard: int | None = None) -> int | None:
    """Cap this whole process at its current usage (``current``, a reading just taken, if given) plus ``limit_mb``
    MiB, under the hard limit (``hard``, if known); return the cap in bytes."""
    if current is None:
        current = usage()
    if current is None:
        return None
    if hard is None:
        _soft, hard = resource.getrlimit(LIMIT)
    target = current + limit_mb * _MIB
    if hard != resource.RLIM_INFINITY:
        target = min(target, hard)
    resource.setrlimit(LIMIT, (target, hard))
    return target
