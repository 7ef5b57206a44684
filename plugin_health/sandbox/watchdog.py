"""Timeouts off the main thread (a threaded server): one shared watchdog thread and asynchronous exceptions.

``signal`` only works on the main thread, so a guarded call on another thread registers its deadline with a
single daemon thread shared by all of them (about 1 us per call, no thread per call). At the deadline the
watchdog raises :class:`~plugin_health.sandbox.timeouts.SandboxTimeout` into the late thread with
``PyThreadState_SetAsyncExc``, and again every few milliseconds until the call has ended.

Limits, honestly: an asynchronous exception is delivered between bytecodes, so it stops Python code (loops,
``except Exception: pass`` included) within a few milliseconds of the deadline, but not C code that holds
the GIL, nor a blocking call that releases it (``time.sleep``, socket reads): those are stopped when they
return to Python, if ever. Only process isolation stops everything.
"""

from __future__ import annotations

import ctypes
import heapq
import os
import sys
import threading
from itertools import count
from time import perf_counter

from plugin_health.sandbox.timeouts import REFIRE, RETRY, Deadline, SandboxTimeout, bookkeeping, in_bookkeeping

_raise_in = ctypes.PYFUNCTYPE(ctypes.c_int, ctypes.c_ulong, ctypes.py_object)(
    ("PyThreadState_SetAsyncExc", ctypes.pythonapi)
)
_clear_in = ctypes.PYFUNCTYPE(ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p)(
    ("PyThreadState_SetAsyncExc", ctypes.pythonapi)
)

_Entry = tuple[float, int, Deadline]


class Watchdog:
    """A heap of deadlines watched by one daemon thread, started on first use."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._heap: list[_Entry] = []
        self._seq = count()
        self._stacks: dict[int, list[Deadline]] = {}
        self._fired: set[int] = set()
        self._active = 0
        self._thread: threading.Thread | None = None

    @bookkeeping
    def watch(self, deadline: Deadline, timeout: float) -> None:
        """Watch a call on the current thread that must end within ``timeout`` seconds."""
        at = deadline.at = perf_counter() + timeout
        with self._lock:
            stack = self._stacks.setdefault(deadline.tid, [])
            deadline.limit = min(at, stack[-1].limit) if stack else at
            stack.append(deadline)
            deadline.active = True
            self._active += 1
            heap = self._heap
            if len(heap) > 2 * self._active + 1024:  # drop the entries of calls that have ended
                heap[:] = [entry for entry in heap if entry[2].active]
                heapq.heapify(heap)
            wake = not heap or at < heap[0][0]
            heapq.heappush(heap, (at, next(self._seq), deadline))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="plugin-health-watchdog", daemon=True)
                self._thread.start()
            elif wake:
                self._cond.notify()

    @bookkeeping
    def unwatch(self, deadline: Deadline) -> None:
        """Stop watching a call (idempotent); drop a timeout raised but not yet delivered."""
        if not deadline.active:
            return
        tid = deadline.tid
        with self._lock:
            deadline.active = False
            self._active -= 1
            stack = self._stacks.get(tid)
            if stack is not None:
                if deadline in stack:
                    stack.remove(deadline)
                if not stack:
                    del self._stacks[tid]
            if tid in self._fired:
                self._fired.discard(tid)
                _clear_in(tid, None)

    def expired_outside(self, deadline: Deadline, now: float) -> bool:
        """Whether a call enclosing ``deadline`` on its thread has passed its own deadline."""
        for outer in self._stacks.get(deadline.tid, ()):
            if outer is deadline:
                return False
            if now >= outer.at:
                return True
        return False

    def _run(self) -> None:
        with self._lock:
            while True:
                now = perf_counter()
                heap = self._heap
                while heap and heap[0][0] <= now:
                    _, _, deadline = heapq.heappop(heap)
                    if deadline.active:
                        heapq.heappush(heap, (now + self._fire(deadline), next(self._seq), deadline))
                self._cond.wait(heap[0][0] - now if heap else None)

    def _fire(self, deadline: Deadline) -> float:
        """Raise the timeout into the deadline's thread; return the seconds until trying again."""
        frame = sys._current_frames().get(deadline.tid)
        if frame is None:  # the thread is gone
            deadline.active = False
            self._active -= 1
            self._stacks.pop(deadline.tid, None)
            return 0.0
        if in_bookkeeping(frame):
            return RETRY
        if _raise_in(deadline.tid, SandboxTimeout):
            self._fired.add(deadline.tid)
        return REFIRE


_watchdog: Watchdog | None = None
_create_lock = threading.Lock()


def watchdog() -> Watchdog:
    """The process's watchdog."""
    global _watchdog
    if _watchdog is None:
        with _create_lock:
            if _watchdog is None:
                _watchdog = Watchdog()
    return _watchdog


def _reset_after_fork() -> None:
    global _watchdog, _create_lock
    _watchdog = None  # its thread does not exist in the child
    _create_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)
