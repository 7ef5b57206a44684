"""Process mode: each plugin lives in a long-lived child process of its own, reached over a raw pipe.

Why this shape (see DESIGN.md, field notes): a pipe to a long-lived child costs about 70 us a call where a
``multiprocessing.Pool`` or pebble costs 180 us, notices a crash at once (EOF on the pipe) where a pool
notices it late or never, and a timeout is enforced with ``poll(timeout)`` then ``SIGKILL``. Children are
made by a ``forkserver``, never by forking the server itself, so they are safe to create from a threaded
server and their cost does not grow with the server's memory.

The child imports the plugin itself (classes and closures do not pickle; only method names and plain
arguments cross the pipe), caps its own memory with ``RLIMIT_DATA`` at its baseline after the import plus
``memory_limit_mb``, and exits when the server's end of the pipe closes, so it never outlives the server.
A call that passes its timeout gets the child killed and a fresh one started at once (the instance's state
is lost: a fresh import and instance); a child that dies under a call is reported as ``PluginCrashedError``
and replaced on the next call. ``close()``, garbage collection and interpreter exit kill and reap the child.
Create ProcessPlugins in the process that uses them (after gunicorn forks its workers), not before.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import pickle
import signal
import threading
import weakref
from multiprocessing.connection import Connection
from multiprocessing.context import ForkServerContext, SpawnContext
from multiprocessing.process import BaseProcess
from time import perf_counter
from typing import Any

from plugin_health.loader.sources import PluginSource
from plugin_health.sandbox import _child
from plugin_health.sandbox.results import (
    CRASHED,
    TIMEOUT,
    PluginSandboxResult,
    SandboxLimits,
    UnpicklableArgumentsError,
    UnpicklableResultError,
    describe,
    failed,
    timeout_message,
)

_context: ForkServerContext | SpawnContext
if "forkserver" in multiprocessing.get_all_start_methods():
    _context = multiprocessing.get_context("forkserver")
else:  # pragma: no cover - platforms without forkserver (Windows)
    _context = multiprocessing.get_context("spawn")
_preloaded = False

#: Seconds a child gets to exit by itself once its pipe is closed, before it is killed.
_GRACE = 0.5


class _Child:
    """One child process and the server's end of its pipe."""

    __slots__ = ("conn", "process", "ready")

    def __init__(self, process: BaseProcess, conn: Connection) -> None:
        self.process = process
        self.conn = conn
        self.ready = False


def _spawn(source: PluginSource, limits: SandboxLimits) -> _Child:
    global _preloaded
    if not _preloaded and isinstance(_context, ForkServerContext):
        # The forkserver imports the child's code once; each child then starts without importing it again.
        _context.set_forkserver_preload(["__main__", _child.__name__])
        _preloaded = True
    conn, child_conn = _context.Pipe(duplex=True)
    process = _context.Process(
        target=_child.serve,
        args=(child_conn, source, limits.memory_limit_mb),
        name=f"plugin-health:{source.name}",
        daemon=True,
    )
    try:
        process.start()
    except BaseException:
        conn.close()
        raise
    finally:
        child_conn.close()  # the child has its own copy; ours must go, or EOF would never be seen
    return _Child(process, conn)


def _reap(child: _Child, grace: float = 0.0) -> int | None:
    """Close the pipe, give the child ``grace`` seconds to exit, then SIGKILL it; return its exit code."""
    child.conn.close()
    process = child.process
    try:
        if grace:
            process.join(grace)
        if process.exitcode is None:
            process.kill()
            process.join()
        code = process.exitcode
        process.close()
    except ValueError:  # closed already, by a racing close()
        return None
    return code


def _close_all(slot: list[_Child]) -> None:
    while slot:
        _reap(slot.pop(), _GRACE)


def _death(code: int | None) -> str:
    if code is None:
        return "unknown exit status"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


class ProcessPlugin:
    """A plugin in a long-lived child process of its own; ``start``, ``call`` and ``close`` never raise."""

    def __init__(self, source: PluginSource, limits: SandboxLimits) -> None:
        self.source = source
        self.limits = limits
        self.metadata: dict[str, Any] | None = None
        self._lock = threading.Lock()
        self._slot: list[_Child] = []  # the current child, if any; shared with the finalizer
        weakref.finalize(self, _close_all, self._slot)  # also runs at interpreter exit

    def __repr__(self) -> str:
        return f"<ProcessPlugin {self.source.name!r} pid={self.pid}>"

    @property
    def pid(self) -> int | None:
        """The child's process id, or None when there is no child."""
        slot = self._slot
        return slot[0].process.pid if slot else None

    @property
    def alive(self) -> bool:
        """Whether the child process is running."""
        slot = self._slot
        try:
            return bool(slot) and slot[0].process.is_alive()
        except ValueError:  # closed concurrently
            return False

    def start(self) -> PluginSandboxResult:
        """Start the child (if needed) and return the plugin's metadata, or why it could not load."""
        started = perf_counter()
        with self._lock:
            problem = self._ensure_ready(started)
            if problem is not None:
                return problem
            return PluginSandboxResult(True, dict(self.metadata or {}), duration_ms=_since(started))

    def call(
        self,
        method: str,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
        timeout: float | None = None,
    ) -> PluginSandboxResult:
        """Call ``instance.<method>(*args, **kwargs)`` in the child, within ``timeout`` (default: the limit)."""
        started = perf_counter()
        if timeout is None:
            timeout = self.limits.timeout
        try:
            request = _child.dumps((method, tuple(args), dict(kwargs or {})))
        except (pickle.PicklingError, TypeError, AttributeError, ValueError, RecursionError) as exc:
            refused = f"the arguments of {method!r} cannot be sent to the plugin process: {describe(exc)}"
            return failed(UnpicklableArgumentsError.__name__, refused, _since(started))
        with self._lock:
            problem = self._ensure_ready(started)
            if problem is not None:
                return problem
            child = self._slot[0]
            try:
                child.conn.send_bytes(request)
                if not child.conn.poll(timeout):
                    self._replace_late(child)
                    return failed(TIMEOUT, timeout_message(timeout), _since(started))
                reply = child.conn.recv_bytes()
            except (EOFError, OSError):
                return self._crashed(child, f"during {method!r}", started)
        return _answer(reply, method, started)

    def close(self) -> None:
        """Stop the child and reap it (idempotent); a later ``start`` or ``call`` starts a new one."""
        if not self._lock.acquire(timeout=1.0):
            # A call is in progress: kill its child so that the call ends (as a crash) and frees the lock.
            for child in list(self._slot):
                with contextlib.suppress(ValueError):  # closed by the call meanwhile
                    child.process.kill()
            self._lock.acquire()
        try:
            _close_all(self._slot)
        finally:
            self._lock.release()

    def _ensure_ready(self, started: float) -> PluginSandboxResult | None:
        """Have a child that has imported the plugin; or say why not (the lock is held)."""
        slot = self._slot
        if slot and not slot[0].ready and not slot[0].process.is_alive():
            _reap(slot.pop())
        if not slot:
            try:
                slot.append(_spawn(self.source, self.limits))
            except OSError as exc:
                problem = f"cannot start the process of plugin {self.source.name!r}: {describe(exc)}"
                return failed(CRASHED, problem, _since(started))
        child = slot[0]
        if child.ready:
            return None
        timeout = self.limits.timeout
        try:
            if not child.conn.poll(timeout):
                _reap(slot.pop())
                problem = f"plugin {self.source.name!r} did not finish loading within {timeout:g} s"
                return failed(TIMEOUT, problem, _since(started))
            reply = pickle.loads(child.conn.recv_bytes())
        except (EOFError, OSError):
            return self._crashed(child, "while loading", started)
        if reply[0] == "ok":
            child.ready = True
            self.metadata = reply[1]
            return None
        _reap(slot.pop(), _GRACE)  # it exits by itself after reporting
        return failed(reply[1], reply[2], _since(started))

    def _replace_late(self, child: _Child) -> None:
        """Kill a child that passed its timeout and start its successor without waiting for it to load."""
        _reap(child)
        self._slot.clear()
        with contextlib.suppress(OSError):  # the next call tries again and reports it
            self._slot.append(_spawn(self.source, self.limits))

    def _crashed(self, child: _Child, when: str, started: float) -> PluginSandboxResult:
        if child in self._slot:
            self._slot.remove(child)
        code = _reap(child, _GRACE)
        problem = f"the process of plugin {self.source.name!r} died {when} ({_death(code)})"
        return failed(CRASHED, problem, _since(started))


def _since(started: float) -> float:
    return (perf_counter() - started) * 1000.0


def _answer(reply: bytes, method: str, started: float) -> PluginSandboxResult:
    try:
        message = pickle.loads(reply)
    except Exception as exc:  # noqa: BLE001 - unpickling runs whatever reducers the plugin's result names
        problem = f"the result of {method!r} cannot be unpickled in the server: {describe(exc)}"
        return failed(UnpicklableResultError.__name__, problem, _since(started))
    if message[0] == "ok":
        return PluginSandboxResult(True, message[1], duration_ms=_since(started))
    return failed(message[1], message[2], _since(started))
