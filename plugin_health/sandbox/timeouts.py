"""What the inline timers share: the exception they raise, a call's deadline, and the no-raise zone.

A timer stops a call by raising :class:`SandboxTimeout` asynchronously, wherever the interpreter happens to
be. It must never land inside the sandbox's own bookkeeping (arming, disarming, restoring a lowered memory
limit): a half-done disarm could leave a timer armed or a limit lowered. The functions doing that
bookkeeping are marked with :func:`bookkeeping`; both timers check the interrupted stack with
:func:`in_bookkeeping` and, when it is inside one of them, try again a millisecond later.
"""

from __future__ import annotations

from collections.abc import Callable
from types import CodeType, FrameType
from typing import TypeVar

_F = TypeVar("_F", bound=Callable[..., object])

#: Seconds before a timer tries again when it found the thread in the sandbox's bookkeeping.
RETRY = 0.001
#: Seconds between repeated raises while an expired call has not ended (a plugin may swallow one).
REFIRE = 0.02
#: Shortest interval ever armed: ``setitimer(ITIMER_REAL, 0)`` would disarm instead of firing.
MIN_DELAY = 1e-5

_BOOKKEEPING: set[CodeType] = set()


class SandboxTimeout(BaseException):
    """Raised into a call that passed its deadline; a ``BaseException`` so ``except Exception`` cannot swallow it."""


class Deadline:
    """One guarded call's deadline (``perf_counter`` seconds) and that of the calls around it."""

    __slots__ = ("active", "at", "limit", "tid")

    def __init__(self, tid: int) -> None:
        self.tid = tid
        self.at = 0.0
        self.limit = 0.0  # min(at, the enclosing call's limit): when this call's timer must fire
        self.active = False


def bookkeeping(fn: _F) -> _F:
    """Mark ``fn`` as sandbox bookkeeping that an asynchronous timeout must never interrupt."""
    _BOOKKEEPING.add(fn.__code__)
    return fn


def in_bookkeeping(frame: FrameType | None) -> bool:
    """Whether ``frame`` or one of its callers is sandbox bookkeeping."""
    while frame is not None:
        if frame.f_code in _BOOKKEEPING:
            return True
        frame = frame.f_back
    return False
