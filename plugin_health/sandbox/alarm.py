"""Main-thread timeouts: one ``SIGALRM`` handler installed once, one ``ITIMER_REAL`` timer, a stack of deadlines.

Arming and disarming a guarded call is a ``setitimer`` each (about 1.2 us together); installing a handler per
call would cost 8.7 us, so the handler is installed on first use and stays. It raises
:class:`~plugin_health.sandbox.timeouts.SandboxTimeout` when the outermost expired deadline on the stack has
passed, and keeps raising every few milliseconds until that call has ended, so that a plugin swallowing one
does not escape.

Nesting: each deadline's ``limit`` is the earlier of its own deadline and its caller's limit, so an inner
call never extends an outer deadline; when an inner call ends, the timer is re-armed for the caller's
remaining time (at once if it has passed). A timer armed before the first guarded call by someone else
(with their own handler) is saved, honoured as an outer deadline, and re-armed with its remaining time,
handler restored, when the outermost guarded call ends.

Limits: a signal is handled between bytecodes, so a hang inside C code that holds the GIL (a huge
``sum(range(...))``) is stopped only when that C call returns; ``time.sleep`` and blocking lock waits are
interrupted. A plugin that installs its own ``SIGALRM`` handler disables the timeout of its own calls. Under
gevent, the alarm is process-wide and fires in whichever greenlet runs. Use process isolation for those.
"""

from __future__ import annotations

import importlib
import signal
from collections.abc import Callable
from time import perf_counter
from types import FrameType
from typing import Any

from plugin_health.sandbox.timeouts import (
    MIN_DELAY,
    REFIRE,
    RETRY,
    Deadline,
    SandboxTimeout,
    bookkeeping,
    in_bookkeeping,
)

_SIGALRM = signal.SIGALRM
_REAL = signal.ITIMER_REAL
_setitimer = signal.setitimer

# signal.getsignal() maps the handler through an enum lookup that fails (and costs 1.6 us) for a Python
# function; the C function underneath answers in 12 ns.
_raw_getsignal: Callable[[int], object] = getattr(importlib.import_module("_signal"), "getsignal", signal.getsignal)


class _Foreign:
    """A timer someone else armed before the outermost guarded call."""

    __slots__ = ("at", "interval")

    def __init__(self, at: float, interval: float) -> None:
        self.at = at
        self.interval = interval


_stack: list[Deadline] = []
_foreign: _Foreign | None = None
_replaced: Any = None  # a foreign Python handler we replaced, restored when the outermost call ends


@bookkeeping
def _on_alarm(signum: int, frame: FrameType | None) -> None:
    if not _stack:
        return  # the late alarm of a call that has already ended
    now = perf_counter()
    if in_bookkeeping(frame):
        _arm_next(now, RETRY)
        return
    if now >= _stack[-1].limit:  # this call's deadline or an enclosing one has passed
        _setitimer(_REAL, REFIRE)
        raise SandboxTimeout
    _arm_next(now, MIN_DELAY)  # early or stale: wait for the next deadline


@bookkeeping
def _arm_next(now: float, at_least: float) -> None:
    _setitimer(_REAL, max(_stack[-1].limit - now, at_least))


@bookkeeping
def _install() -> None:
    global _replaced
    previous = signal.signal(_SIGALRM, _on_alarm)
    if callable(previous) and not _stack:
        _replaced = previous


@bookkeeping
def push(deadline: Deadline, timeout: float) -> None:
    """Arm the timer for a call on the main thread that must end within ``timeout`` seconds."""
    global _foreign
    if _raw_getsignal(_SIGALRM) is not _on_alarm:
        _install()
    now = perf_counter()
    at = deadline.at = now + timeout
    stack = _stack
    if stack:
        outer = stack[-1].limit
        deadline.active = True
        if at < outer:
            deadline.limit = at
            stack.append(deadline)
            _setitimer(_REAL, max(timeout, MIN_DELAY))
        else:
            deadline.limit = outer
            stack.append(deadline)
        return
    deadline.limit = at
    deadline.active = True
    stack.append(deadline)
    remaining, interval = _setitimer(_REAL, max(timeout, MIN_DELAY))
    if remaining > 0.0:
        _foreign = _Foreign(now + remaining, interval)
        if remaining < timeout:
            deadline.limit = _foreign.at
            _setitimer(_REAL, remaining)


@bookkeeping
def pop(deadline: Deadline) -> None:
    """Disarm a call's timer and re-arm its caller's (idempotent)."""
    global _foreign, _replaced
    if not deadline.active:
        return
    deadline.active = False
    stack = _stack
    if stack and stack[-1] is deadline:
        stack.pop()
    elif deadline in stack:
        stack.remove(deadline)
    if stack:
        _setitimer(_REAL, max(stack[-1].limit - perf_counter(), MIN_DELAY))
        return
    _setitimer(_REAL, 0)
    if _replaced is not None:
        signal.signal(_SIGALRM, _replaced)
        _replaced = None
    foreign, _foreign = _foreign, None
    if foreign is not None:  # give the foreign timer back what is left of it (it fires at once if nothing)
        _setitimer(_REAL, max(foreign.at - perf_counter(), MIN_DELAY), foreign.interval)


def expired_outside(deadline: Deadline, now: float) -> bool:
    """Whether a call enclosing ``deadline`` on the main thread has passed its own deadline."""
    for outer in _stack:
        if outer is deadline:
            return False
        if now >= outer.at:
            return True
    return False
