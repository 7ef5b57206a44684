"""Inline mode, the fast path: run a plugin's function in the server's own process and thread, isolated.

``Sandbox.run`` never raises for anything the function does: every exception, ``SystemExit`` and
``KeyboardInterrupt`` included, becomes a failed :class:`PluginSandboxResult`. With a timeout, the call is
stopped by ``SIGALRM`` on the main thread (:mod:`.alarm`, nesting-safe) or by the shared watchdog thread
elsewhere (:mod:`.watchdog`, Python code only); with a memory limit, :mod:`.memory` caps or watches its
allocations. What inline mode cannot survive (a segfault, ``os._exit``, a hang in C code holding the GIL)
needs ``isolation = "process"``.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from time import perf_counter
from typing import Any

from plugin_health.sandbox import alarm
from plugin_health.sandbox.memory import MemoryGuard
from plugin_health.sandbox.results import (
    MEMORY,
    TIMEOUT,
    PluginSandboxResult,
    SandboxLimits,
    describe,
    failed,
    memory_message,
    timeout_message,
)
from plugin_health.sandbox.timeouts import Deadline, SandboxTimeout, bookkeeping
from plugin_health.sandbox.watchdog import watchdog

_main_ident = threading.main_thread().ident


def _after_fork() -> None:
    global _main_ident
    _main_ident = threading.main_thread().ident  # a fork from another thread makes that thread the main one


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)


class _Guard:
    """The timer and memory guard of one call."""

    __slots__ = ("deadline", "main", "memory", "timeout")

    def __init__(self, limits: SandboxLimits) -> None:
        tid = threading.get_ident()
        self.main = tid == _main_ident
        self.timeout = limits.timeout or 0.0
        self.deadline = None if limits.timeout is None else Deadline(tid)
        self.memory = None if limits.memory_limit_mb is None else MemoryGuard(limits.memory_limit_mb)

    @bookkeeping
    def arm(self) -> None:
        if self.memory is not None:
            self.memory.arm(lower=self.main)
        if self.deadline is not None:
            if self.main:
                alarm.push(self.deadline, self.timeout)
            else:
                watchdog().watch(self.deadline, self.timeout)

    @bookkeeping
    def disarm(self) -> None:
        if self.deadline is not None:
            if self.main:
                alarm.pop(self.deadline)
            else:
                watchdog().unwatch(self.deadline)
        if self.memory is not None:
            self.memory.disarm()

    @bookkeeping
    def classify(self, exc: BaseException) -> str | None:
        """Disarm, then say whether the sandbox ended the call (TIMEOUT, MEMORY) or the plugin did (None).

        A timeout that belongs to an enclosing call is re-raised for that call's sandbox to report.
        """
        self.disarm()
        if isinstance(exc, SandboxTimeout):
            deadline = self.deadline
            if deadline is None:
                raise exc  # this call has no timeout: an enclosing sandbox's expired
            now = perf_counter()
            if now < deadline.at:
                outer = alarm.expired_outside if self.main else watchdog().expired_outside
                if outer(deadline, now):
                    raise exc
            return TIMEOUT
        if isinstance(exc, MemoryError) and self.memory is not None:
            return MEMORY
        return None


class Sandbox:
    """Runs functions inline under :class:`SandboxLimits`."""

    __slots__ = ("limits",)

    def __init__(self, limits: SandboxLimits = SandboxLimits()) -> None:  # noqa: B008 - frozen, shared safely
        self.limits = limits

    def __repr__(self) -> str:
        return f"Sandbox({self.limits!r})"

    def run(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> PluginSandboxResult:
        """Call ``fn(*args, **kwargs)``; never raises for anything ``fn`` does."""
        limits = self.limits
        guard = None if limits.timeout is None and limits.memory_limit_mb is None else _Guard(limits)
        start = perf_counter()
        try:
            if guard is None:
                value = fn(*args, **kwargs)
            else:
                guard.arm()
                value = fn(*args, **kwargs)
                guard.disarm()
        except BaseException as exc:  # the isolation boundary: nothing the plugin raises escapes
            if guard is None:
                if isinstance(exc, SandboxTimeout):
                    raise  # an enclosing sandbox's timeout: that sandbox reports it
                stopped_by = None
            else:
                stopped_by = guard.classify(exc)
            duration = (perf_counter() - start) * 1000.0
            if stopped_by is TIMEOUT:
                return failed(TIMEOUT, timeout_message(limits.timeout), duration)
            if stopped_by is MEMORY:
                return failed(MEMORY, memory_message(limits.memory_limit_mb), duration)
            return PluginSandboxResult(False, None, describe(exc), type(exc).__name__, duration)
        duration = (perf_counter() - start) * 1000.0
        if guard is not None and guard.memory is not None and guard.memory.exceeded:
            return failed(MEMORY, memory_message(limits.memory_limit_mb), duration)
        return PluginSandboxResult(True, value, None, None, duration)


_default = Sandbox(SandboxLimits(timeout=10.0, memory_limit_mb=512))


def run_plugin_sandboxed(fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> PluginSandboxResult:
    """Run ``fn`` inline with the service defaults (10 s timeout, 512 MiB); never raises for what it does."""
    return _default.run(fn, *args, **kwargs)
