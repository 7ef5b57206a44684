"""The core's side of the runners: start them, place plugins in them, call them under a hard deadline, blame.

A :class:`RunnerPool` keeps one shared runner for the inline plugins and one runner per process-isolated (or
quarantined) plugin. A runner answers one request at a time, so the call in flight is always known: when a runner
does not answer by the call's timeout plus :attr:`RunnerSettings.grace`, the pool kills its whole process group,
and when it dies by itself (a segfault, ``os._exit``, a signal) the pool sees it at once through a pidfd. Either
way the call in flight is blamed: its plugin is quarantined into a runner of its own from then on, and the pool
tells its owner (:attr:`RunnerPool.on_lost`) which other plugins lost their instance with that runner, so that they
can be brought back in a fresh one. Nothing here depends on anything the runner does or fails to do.

Each plugin is an actor (:class:`RunnerHandle`): its calls run one at a time, at most
:attr:`RunnerSettings.queue_limit` wait, and one more is refused at once with :class:`PluginBusyError`.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import logging
import math
import os
import queue
import secrets
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import Any

from plugin_health import metrics
from plugin_health.errors import InvalidHealthResultError, PluginBusyError, PluginNotRunningError
from plugin_health.health import HealthResult
from plugin_health.loader.handles import Placed
from plugin_health.loader.sources import PluginSource
from plugin_health.plugin import LIFECYCLE_METHODS, PluginContext
from plugin_health.runtime import wire
from plugin_health.sandbox.results import CRASHED, MEMORY, TIMEOUT, PluginSandboxResult, SandboxLimits, failed

logger = logging.getLogger(__name__)

#: Seconds before its caller gives up by which a call still waiting for its turn is refused (so the answer arrives).
_ANSWER_MARGIN = 0.5
#: How much one call's duration moves a plugin's typical duration (an exponential moving average).
_TYPICAL_WEIGHT = 0.2
#: Seconds between two looks at the runners' list by the thread that watches idle runners.
_WATCH_EVERY = 0.25
#: Seconds after a call's answer within which its runner's death is blamed on that call's plugin.
IDLE_BLAME = 0.1
#: Environment variables a runner never sees (the service's settings carry its secrets, such as the admin token).
_SCRUBBED_PREFIXES = ("PLUGIN_HEALTH_", "PROMETHEUS_MULTIPROC_DIR", "GUNICORN_")
#: Loads sent to the shared runner at once by ``RunnerPool.load_many`` (its lock is held while they run).
PIPELINE = 64
#: Seconds the reader of streamed loads lets answers gather when it finds none waiting, before it sleeps on the
#: socket (``RunnerProcess.answer``): a runner sending to a reader that sleeps there wakes it, once per answer (four
#: a plugin brought up with its load), which cost both processes more than the answers; after a pause, several
#: are read at once. 10,000 plugins: 4.3-5.2 s, was 4.8-6.1 s (the core alone, 4 runs each). Calls never wait so.
SETTLE = 0.0005
#: Seconds a runner whose line closed has to exit by itself (its guard wakes on its child's SIGCHLD at once).
_EXIT_PATIENCE = 0.5


@dataclass(frozen=True, slots=True)
class RunnerSettings:
    """How runners are run."""

    #: Seconds past a call's timeout before its runner is killed (the hard deadline).
    grace: float = 0.25
    #: Calls of one plugin that may wait while one runs; one more is refused at once.
    queue_limit: int = 16
    #: The largest message a runner may send, in bytes.
    max_message: int = wire.MAX_MESSAGE
    #: Seconds a call that has no timeout of its own may take before its runner is killed (the declared maximum).
    longest: float = 86_400.0
    #: Seconds a new runner has to boot (an interpreter's start, before any plugin code runs).
    boot_timeout: float = 10.0
    #: The limits of loading a plugin (importing it, before its own declaration is known).
    load_limits: SandboxLimits = field(default_factory=lambda: SandboxLimits(10.0, 512))


@dataclass(frozen=True, slots=True)
class RunnerLoss:
    """A runner that was killed or died: the plugin blamed for it, and the others that lost their instance."""

    culprit: str | None
    victims: tuple[str, ...]
    cause: str
    error_type: str = CRASHED
    error: str = ""


#: A source to load, and what to bring it up with in the same request (None: only load it).
_Load = tuple[PluginSource, Mapping[str, Any] | None]


class RunnerLostError(Exception):
    """Internal: the runner of a request is gone (``compiling``: while it compiled loads ahead, in no plugin's code)."""

    def __init__(self, error_type: str, message: str, compiling: bool = False) -> None:
        super().__init__(message)
        self.error_type = error_type
        self.message = message
        self.compiling = compiling


def scrubbed_environment(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment a runner gets: the service's own, less its settings and secrets."""
    source = os.environ if environ is None else environ
    return {k: v for k, v in source.items() if not k.startswith(_SCRUBBED_PREFIXES)}


def _death(code: int | None) -> str:
    if code is None:
        return "unknown exit status"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


class RunnerProcess:
    """One runner process (a guard and its serving child, in a process group of their own) and its socket."""

    def __init__(self, label: str, settings: RunnerSettings) -> None:
        self.label = label
        self.settings = settings
        # One request at a time, so the call in flight is always known; health checks and lifecycle calls go before
        # waiting tool calls, so a plugin's storm of slow tools cannot starve the checks of the others it shares with.
        self.lock = TurnLock()
        self._closing = threading.Lock()
        self.handles: dict[int, RunnerHandle] = {}
        self.dead: str | None = None
        self.ready = False  # until its first frame says it booted
        #: Whether the pool ever handed it to a load (a runner started ahead, never used, may be stopped).
        self.used = False
        #: The handle whose call was answered last, and when (monotonic): blamed for a death right after it.
        self.last: tuple[RunnerHandle | None, float] = (None, 0.0)
        ours, theirs = socket.socketpair()
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "plugin_health.runtime.runner", "--fd", str(theirs.fileno()),
                 "--max-message", str(settings.max_message), "--label", label],
                pass_fds=(theirs.fileno(),),
                env=scrubbed_environment(),
                stdin=subprocess.DEVNULL,
                process_group=0,
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self.sock = ours
        self.sock.setblocking(False)  # waits are the poll's, with the hard deadline; reads never block
        self._reader = wire.FrameReader(ours, settings.max_message)
        self.pgid = self.process.pid
        self._poll = select.poll()
        self._poll.register(ours, select.POLLIN)
        try:
            self.pidfd: int | None = os.pidfd_open(self.process.pid)
        except (AttributeError, OSError):  # pragma: no cover - Linux < 5.3: EOF on the socket still tells
            self.pidfd = None
        else:
            self._poll.register(self.pidfd, select.POLLIN)

    @property
    def pid(self) -> int:
        """The pid of the runner's guard (the leader of its process group)."""
        return self.process.pid

    def request(self, message: dict[str, Any], timeout: float | None) -> dict[str, Any]:
        """Send one request and wait for its answer; :class:`RunnerLostError` when the runner is lost meanwhile.

        The caller holds :attr:`lock`. ``timeout`` is the call's own; the runner is killed at ``timeout + grace``.
        """
        if self.dead is not None:
            raise RunnerLostError(CRASHED, self.dead)
        if not self.ready:
            self._await_boot()
        ident, frame = self._frame(message)
        timeout = self.settings.longest if timeout is None else timeout
        self._exchange(lambda: self._send(frame, time.monotonic() + timeout + self.settings.grace), timeout)
        return self._answer(ident, timeout)

    def request_many(self, messages: list[tuple[dict[str, Any], float | None]]) -> Iterator[dict[str, Any]]:
        """Send several requests at once, then yield their answers in order; :class:`RunnerLostError` at the one in
        flight when the runner is lost (the caller holds :attr:`lock` throughout).

        The runner answers one request at a time, in order, so the one in flight is always the first unanswered:
        each has its own hard deadline, its timeout plus the grace counted from the answer before it, and the ones
        after it never ran. Nothing waits between two requests, so the runner works while the core reads.
        """
        sent, _ = self.send_many(messages)
        for index, (ident, timeout) in enumerate(sent, 1):
            yield self._answer(ident, timeout, more=index < len(sent))

    def send_many(self, messages: list[tuple[dict[str, Any], float | None]]) -> tuple[list[tuple[int, float]], bool]:
        """Send several requests at once, without waiting for any answer (the caller holds :attr:`lock`, and reads
        each answer with :meth:`answer`, in order): each request's id and timeout, and whether they were sent. Not
        when the runner's end is closed (it died): the answers it sent before are still read, and the first one
        missing says whose request was in flight. :class:`ValueError` for a request that cannot be sent (none
        was), :class:`RunnerLostError` when the runner is lost otherwise (it did not start, or took no request
        within the first one's timeout plus the grace)."""
        if self.dead is not None:
            raise RunnerLostError(CRASHED, self.dead)
        if not self.ready:
            self._await_boot()
        # Their ids from one read of the system's random source (one read each was a tenth of the core's start).
        idents = _random_idents(len(messages))
        framed = [(*self._frame(message, ident), self.settings.longest if timeout is None else timeout)
                  for (message, timeout), ident in zip(messages, idents, strict=True)]
        first = framed[0][2] if framed else 0.0
        frames = b"".join(frame for _, frame, _ in framed)
        deadline = time.monotonic() + first + self.settings.grace

        def send() -> bool:
            try:
                self._send(frames, deadline)
            except wire.PeerClosedError:
                return False
            return True

        return [(ident, timeout) for ident, _, timeout in framed], self._exchange(send, first)

    def answer(self, ident: int, timeout: float, method: str | None = None, ahead: bool = False) -> dict[str, Any]:
        """The next answer, which must be to the request ``ident`` (sent by ``send_many``; a load that brings its
        plugin up has several, each naming its ``method``, which must be the one awaited), within ``timeout`` plus
        the grace from now; :class:`RunnerLostError` when the runner is lost meanwhile, or breaks the protocol.

        ``ahead``: ``ident`` is a load marked to be compiled ahead, so the runner may first say that it compiles the
        loads it took with it, and then that it is done (``Runner.compile_ahead``: ``{"compiling": ident}``, then
        ``{"compiled": ident}``); a runner lost between the two is lost compiling, in no plugin's code, and the
        error says so (``compiling``)."""
        answer = self._answer(ident, timeout, more=True, method=method, settle=SETTLE, marker=ahead)
        if ahead and answer.get("id") != ident:  # a marker
            if answer != {"compiling": ident}:
                raise self.broke("an answer that is not the request's")
            try:
                if self._answer(ident, timeout, more=True, settle=SETTLE, marker=True) != {"compiled": ident}:
                    raise self.broke("an answer while compiling ahead")
            except RunnerLostError as err:
                err.compiling = True
                raise
            answer = self._answer(ident, timeout, more=True, method=method, settle=SETTLE)
        return answer

    def _frame(self, message: dict[str, Any], ident: int | None = None) -> tuple[int, bytes]:
        # A random id the answer must carry back: an answer a plugin forged cannot pass for another call's.
        ident = secrets.randbits(62) if ident is None else ident
        try:
            return ident, wire.encode_request({**message, "id": ident}, self.settings.max_message)
        except (ValueError, wire.MessageTooLargeError) as err:
            raise ValueError(f"the request cannot be sent to the runner: {err}") from err

    def _answer(self, ident: int, timeout: float, more: bool = False, method: str | None = None,
                settle: float = 0.0, marker: bool = False) -> dict[str, Any]:
        """Wait for the next answer, which must be the request ``ident``'s (and, with ``method``, that phase's),
        until ``timeout`` plus the grace (``more``: answers to further requests may follow it; ``settle``: see
        :data:`SETTLE`; ``marker``: or a marker of compiling ahead, which ``answer`` reads)."""
        deadline = time.monotonic() + timeout + self.settings.grace
        answer: Any = self._exchange(
            lambda: self._reader.read(lambda: self._wait_readable(deadline, settle), more), timeout)
        if not isinstance(answer, dict) or answer.get("id") != ident:
            if marker and isinstance(answer, dict) and len(answer) == 1:
                return answer
            raise self.broke("an answer that is not the request's")
        if method is not None and answer.get("method") != method:
            raise self.broke("an answer to another phase")
        return answer

    def waiting(self) -> bool:
        """Whether the runner's next answer has arrived whole already (reading it waits for nothing)."""
        return self._reader.waiting()

    def riding(self, answer: dict[str, Any]) -> list[Any]:
        """The answers that ride in ``answer``'s frame (a bring-up's phases that ran no plugin code after it: its
        ``then``), taken out of it, in order (read each with :meth:`next_riding`)."""
        riding = answer.pop("then", [])
        if not isinstance(riding, list):
            raise self.broke("answers riding in another's frame that are no list")
        return riding

    def next_riding(self, riding: list[Any], method: str) -> dict[str, Any] | None:
        """The first of ``riding`` (taken out), which must be the answer of ``method``: None where it is the method's
        name alone, the answer of ``Plugin``'s own no-op (``known``)."""
        answer = riding.pop(0)
        if answer == method and type(answer) is str:
            return None
        if not isinstance(answer, dict) or answer.get("method") != method:
            raise self.broke("an answer to another phase")
        return answer

    def broke(self, what: str) -> RunnerLostError:
        """Kill the runner, which broke the protocol (``what`` it sent): the error to raise for it."""
        self.kill(f"it broke the protocol: {what}")
        return RunnerLostError(CRASHED, f"its runner broke the protocol ({what})")

    def _exchange(self, step: Callable[[], Any], timeout: float) -> Any:
        """Run one step of talking to the runner (a send or a read); a runner lost meanwhile is killed, reaped
        and told as :class:`RunnerLostError`."""
        try:
            return step()
        except TimeoutError:
            self.kill(f"no answer within {timeout:g} s + {self.settings.grace:g} s")
            raise RunnerLostError(TIMEOUT, f"call exceeded its timeout of {timeout:g} s and did not stop; "
                                           f"its runner was killed") from None
        except (_RunnerExited, wire.PeerClosedError):
            # Its line closes as it dies, a moment before its guard exits the way it ended: wait for that moment,
            # so that the death is told as it was (a SIGSEGV, an exit code), not as the SIGKILL of ``kill``.
            if self.dead is None:  # (not when it is being stopped: then it is killed at once)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.process.wait(_EXIT_PATIENCE)
            code = self.kill("it died")
            raise RunnerLostError(CRASHED, f"its runner died ({_death(code)})") from None
        except wire.WireError as err:
            code = self.kill(f"it broke the protocol: {err}")
            message_ = f"its runner broke the protocol ({type(err).__name__}; {_death(code)})"
            raise RunnerLostError(CRASHED, message_) from None

    def _await_boot(self) -> None:
        """Wait for the runner's first frame, which says it booted: a call's own deadline starts after that, so a
        slow start of an interpreter (a busy machine) is never a plugin's timeout."""
        deadline = time.monotonic() + self.settings.boot_timeout
        try:
            hello = self._reader.read(lambda: self._wait_readable(deadline))
        except TimeoutError:
            self.kill(f"it did not start within {self.settings.boot_timeout:g} s")
            problem = f"its runner did not start within {self.settings.boot_timeout:g} s"
            raise RunnerLostError(CRASHED, problem) from None
        except (_RunnerExited, wire.WireError):
            code = self.kill("it died while starting")
            raise RunnerLostError(CRASHED, f"its runner died while starting ({_death(code)})") from None
        if hello != {"ready": True}:
            self.kill("it broke the protocol while starting")
            raise RunnerLostError(CRASHED, "its runner broke the protocol while starting")
        self.ready = True

    def _wait_readable(self, deadline: float | None, settle: float = 0.0) -> None:
        """Until the socket has data (an answer), the runner dies (:class:`_RunnerExited`) or ``deadline``; with
        ``settle``, nothing waiting yet: that many seconds first, for more to gather."""
        sock = self.sock.fileno()
        if settle and not self._poll.poll(0):
            time.sleep(settle)
        while True:
            remaining = -1 if deadline is None else max(0, math.ceil((deadline - time.monotonic()) * 1000))
            events = self._poll.poll(remaining)
            if any(fd == sock for fd, _ in events):
                return
            if events:  # the guard exited, and no answer is waiting
                raise _RunnerExited
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError

    def _send(self, frame: bytes, deadline: float | None) -> None:
        """Write a whole frame to the non-blocking socket, waiting for room until ``deadline``. While it waits, what
        the runner sends is read (``FrameReader.fill``): a runner answering requests sent ahead may itself be waiting
        for room to send, and it reads no more requests until it has; neither would go on until the deadline."""
        view = memoryview(frame)
        while view:
            try:
                sent = self.sock.send(view)
            except BlockingIOError:
                remaining = -1 if deadline is None else max(0, math.ceil((deadline - time.monotonic()) * 1000))
                wait = None if remaining < 0 else remaining / 1000
                readable, writable, _ = select.select([self.sock], [self.sock], [], wait)
                if readable and not writable and not self._reader.fill():  # gone, or sending without end
                    writable = select.select([], [self.sock], [], wait)[1]
                elif readable:
                    continue
                if not writable:
                    raise TimeoutError from None
                continue
            except OSError as err:
                raise wire.PeerClosedError(f"cannot send: {err.strerror or err}") from None
            view = view[sent:]

    def kill(self, why: str) -> int | None:
        """Kill the whole process group (SIGKILL), reap it, and remember why; the guard's exit status."""
        if self.dead is None:
            self.dead = why
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pgid, signal.SIGKILL)
        code = self.process.wait()
        self._reap_group()
        self._close_descriptors()
        return code

    def stop(self, timeout: float = 1.0) -> None:
        """Close the runner's line (it exits at once) and make sure its whole group is gone."""
        if self.dead is None:
            self.dead = "stopped"
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pgid, signal.SIGKILL)  # and whatever its plugins forked
        self.process.wait()
        self._reap_group()
        self._close_descriptors()

    def _reap_group(self) -> None:
        """Reap members of the group that became our children (the core is a child subreaper)."""
        for _ in range(20):
            try:
                pid, _status = os.waitpid(-self.pgid, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                time.sleep(0.005)

    def _close_descriptors(self) -> None:
        self.sock.close()
        with self._closing:  # a call's kill and the pool's stop may race here: close the pidfd once
            pidfd, self.pidfd = self.pidfd, None
        if pidfd is not None:
            with contextlib.suppress(OSError):
                os.close(pidfd)


class TurnLock:
    """A lock whose urgent takers go before the others waiting (a runner's turns: health checks before tools)."""

    __slots__ = ("_cond", "_held", "_urgent")

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._held = False
        self._urgent = 0  # urgent takers waiting

    def acquire(self, blocking: bool = True, timeout: float = -1, urgent: bool = False) -> bool:
        """Take the lock; False if it could not be had (not ``blocking``, or within ``timeout`` seconds)."""
        deadline = None if timeout < 0 else time.monotonic() + timeout
        with self._cond:
            if urgent:
                self._urgent += 1
            try:
                while self._held or (not urgent and self._urgent):
                    if not blocking:
                        return False
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        return False
                    self._cond.wait(remaining)
                self._held = True
                return True
            finally:
                if urgent:
                    self._urgent -= 1

    def release(self) -> None:
        """Give the lock back; the next taker (urgent ones first) goes."""
        with self._cond:
            self._held = False
            self._cond.notify_all()

    def locked(self) -> bool:
        """Whether somebody holds it."""
        return self._held

    def __enter__(self) -> TurnLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class _Held:
    """Releases a lock acquired already when the block ends."""

    __slots__ = ("lock",)

    def __init__(self, lock: TurnLock) -> None:
        self.lock = lock

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        self.lock.release()


class _RunnerExited(Exception):
    """Internal: the runner's guard exited while a request waited."""


class RunnerHandle:
    """One plugin in a runner: an actor whose calls run one at a time, with a bounded queue."""

    def __init__(self, pool: RunnerPool, runner: RunnerProcess, slot: int, origin: str, limits: SandboxLimits) -> None:
        self.pool = pool
        self.runner = runner
        self.slot = slot
        self.origin = origin
        self.limits = limits
        self.name = ""
        self.lost = False
        self._actor = threading.Lock()
        self._counting = threading.Lock()
        self._waiting = 0  # calls running or waiting (the queue)
        self._typical = 0.0  # seconds a call of this plugin has lately taken (a moving average)

    @property
    def dedicated(self) -> bool:
        """Whether the plugin has its runner to itself."""
        return self.runner is not self.pool.shared_runner()

    @property
    def isolation(self) -> str:
        """Where it runs: ``inline`` (the shared runner) or ``process`` (a runner of its own)."""
        return "process" if self.dedicated else "inline"

    def call(
        self,
        method: str,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
        timeout: float | None = None,
        give_up_at: float | None = None,
    ) -> PluginSandboxResult:
        """Run ``method`` in the runner; :class:`PluginBusyError` when too many calls wait already.

        ``give_up_at`` (monotonic): past it the caller no longer waits, and the call is dropped before it runs.
        """
        if self.lost:
            raise PluginNotRunningError(self.name, "restarting: its runner was lost")
        with self._counting:
            if self._waiting > self.pool.settings.queue_limit or self._would_outwait(give_up_at):
                raise PluginBusyError(self.name, self.pool.settings.queue_limit)
            self._waiting += 1
        try:
            # A call waits its turn only as long as its caller waits, less a margin to answer in: then it is
            # refused (429), dropped unrun, while somebody still listens.
            if not self._actor.acquire(timeout=self._patience(give_up_at)):
                raise PluginBusyError(self.name, self.pool.settings.queue_limit)
            try:
                if give_up_at is not None and time.monotonic() > give_up_at:
                    raise PluginNotRunningError(self.name, "no longer awaited: the call was dropped")
                if self._would_end_unheard(give_up_at):
                    raise PluginBusyError(self.name, self.pool.settings.queue_limit)
                result, loss = self._call(method, args, kwargs, timeout, give_up_at)
            finally:
                self._actor.release()
        finally:
            with self._counting:
                self._waiting -= 1
        if loss is not None:  # told with no lock held: the owner moves plugins, which calls runners
            self.pool.tell(loss)
        self._typical += (result.duration_ms / 1000.0 - self._typical) * _TYPICAL_WEIGHT
        return result

    def _would_outwait(self, give_up_at: float | None) -> bool:
        """Whether the calls ahead of this one are likely to take longer than its caller waits: refused now, not
        late. Likely: as long as this plugin's calls have lately taken each (a moving average)."""
        if give_up_at is None or not self._waiting:
            return False
        return time.monotonic() + self._waiting * self._typical > give_up_at

    def _would_end_unheard(self, give_up_at: float | None) -> bool:
        """Whether a call starting now would likely end after its caller gave up (refused unrun, then)."""
        return give_up_at is not None and time.monotonic() + self._typical + _ANSWER_MARGIN > give_up_at

    def _patience(self, give_up_at: float | None) -> float:
        """Seconds a call may wait for its turn (-1: as long as it takes)."""
        if give_up_at is None:
            return -1
        return max(0.0, give_up_at - _ANSWER_MARGIN - time.monotonic())

    def _call(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any] | None,
              timeout: float | None, give_up_at: float | None = None) -> tuple[PluginSandboxResult, RunnerLoss | None]:
        started = time.perf_counter()
        request, timeout = self._request(method, args, kwargs, timeout)
        urgent = method in LIFECYCLE_METHODS
        if not self.runner.lock.acquire(timeout=self._patience(give_up_at), urgent=urgent):  # the runner is busy
            raise PluginBusyError(self.name, self.pool.settings.queue_limit)
        with _Held(self.runner.lock):
            if self.lost:
                raise PluginNotRunningError(self.name, "restarting: its runner was lost")
            if self._would_end_unheard(give_up_at):  # its turn in a shared runner came late
                raise PluginBusyError(self.name, self.pool.settings.queue_limit)
            try:
                answer = self.runner.request(request, timeout)
            except ValueError as err:
                return failed("UnencodableArgumentsError", str(err), _since(started)), None
            except RunnerLostError as err:
                return self._lost(method, err, started)
            self.runner.last = (self, time.monotonic())
            # Judged before the turn is given back: a runner that kept memory is killed and lost first.
            return self._result(method, answer, started)

    def _request(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any] | None,
                 timeout: float | None) -> tuple[dict[str, Any], float | None]:
        """The request that calls ``method``, and its timeout."""
        timeout = self.limits.timeout if timeout is None else timeout
        request: dict[str, Any] = {"op": "call", "slot": self.slot, "method": method, "timeout": timeout,
                                   "args": list(args), "kwargs": dict(kwargs or {})}
        if method == "initialize" and args and isinstance(args[0], PluginContext):
            request["args"] = []
            request["context"] = self._context(args[0])
        return request, timeout

    def _lost(self, method: str, err: RunnerLostError, started: float,
              who: str | None = None) -> tuple[PluginSandboxResult, RunnerLoss]:
        """The runner was lost during this plugin's call (``who``: its name, before the handle has one): it is
        blamed."""
        cause = f"plugin {who or self.name!r} {method}: {err.message}"
        loss = self.pool.lose(self.runner, self, cause, err.error_type, err.message)
        return failed(err.error_type, err.message, _since(started)), loss

    def _result(self, method: str, answer: dict[str, Any],
                started: float) -> tuple[PluginSandboxResult, RunnerLoss | None]:
        """A call's answer as its outcome (and the runner's loss, when it kept memory past the plugin's limit); the
        caller holds the runner's lock."""
        result = PluginSandboxResult(bool(answer.get("ok")), answer.get("result"), _text(answer.get("error")),
                                     _text(answer.get("error_type")), _since(started), answer.get("refused") is True)
        if answer.get("kept") and result.error_type == MEMORY:
            # The runner holds what the plugin leaked: only a new runner gives it back. Killed and lost before its
            # turn is given back, so that no call waiting for it lands in the dying runner and is blamed.
            self.runner.kill(result.error or "memory kept past its limit")
            cause = f"plugin {self.name!r} {method}: {result.error}"
            return result, self.pool.lose(self.runner, self, cause, MEMORY, result.error or "")
        if result.ok and method == "health_check" and answer.get(wire.HEALTH_RESULT) is True:
            result = _health_result(result)
        return result, None

    def uses_process_of(self, other: object) -> bool:
        """Whether ``other`` lives in the same runner (so ``context.plugins`` can hand its instance over)."""
        return isinstance(other, RunnerHandle) and other.runner is self.runner

    def _context(self, context: PluginContext) -> dict[str, Any]:
        plugins = {name: handle.slot for name, handle in context.plugins.items()
                   if isinstance(handle, RunnerHandle) and handle.runner is self.runner}
        return {"config": dict(context.config), "plugins": plugins, "fencing_token": context.fencing_token}

    def close(self) -> None:
        """Forget the instance (and stop a runner of its own)."""
        self.pool.release(self)


class _Placing:
    """Whether each source of a ``load_many`` runs apart, and the text to import it from (``apart``'s answers), asked
    once a source, a source sent back again included; its text is kept until its load is answered, so that the
    sources in flight hold at most :data:`PIPELINE` x 2 texts (10,000 plugins of 64 KiB would hold 640 MiB)."""

    __slots__ = ("_apart", "_decided", "_texts", "ahead")

    def __init__(self, apart: Callable[[PluginSource], tuple[bool, bytes | None]] | None) -> None:
        self._apart = apart
        #: Whether loads are marked to be compiled ahead (``RunnerPool._load_request``): no longer once a runner was
        #: lost compiling ahead.
        self.ahead = True
        self._decided: dict[int, bool] = {}  # by the source's id
        self._texts: dict[int, bytes | None] = {}

    def apart(self, load: _Load) -> bool:
        """Whether ``load``'s source runs apart (asked of ``apart`` the first time)."""
        key = id(load[0])
        found = self._decided.get(key)
        if found is None:
            found, self._texts[key] = (False, None) if self._apart is None else self._apart(load[0])
            self._decided[key] = found
        return found

    def text(self, source: PluginSource) -> bytes | None:
        """The text to import ``source`` from, as read when asked whether it runs apart (None: read it there)."""
        return self._texts.get(id(source))

    def loaded(self, source: PluginSource) -> None:
        """``source``'s load is answered: its text is not needed again."""
        self._texts.pop(id(source), None)


class _Outcomes:
    """The outcomes of streamed loads on their way to the thread that asked for them (``RunnerPool.load_many``),
    handed over in groups: those read from answers of the runner's that had arrived together, as one queue item,
    for the loader to take in one step (``PluginLoader.load``)."""

    __slots__ = ("_group", "_queue")

    def __init__(self, into: queue.SimpleQueue[list[Placed | Exception | None]]) -> None:
        self._queue = into
        self._group: list[Placed | Exception | None] = []

    def add(self, outcome: Placed | Exception | None) -> None:
        """Add the next outcome, in order (handed over with the group it joins)."""
        self._group.append(outcome)

    def hand_over(self) -> None:
        """Hand over what was added since the last time: before whatever may wait (the next answer not there yet, a
        load of its own, a runner to start), so that none is held back while the sender waits."""
        if self._group:
            self._queue.put(self._group)
            self._group = []

    def before_reading(self, runner: RunnerProcess) -> None:
        """``hand_over``, unless ``runner``'s next answer is there already (reading it waits for nothing)."""
        if self._group and not runner.waiting():
            self.hand_over()


class _Streamed(Iterator["Placed | None"]):
    """The outcomes of ``load_many``, in order, as their groups arrive; ``ready`` tells whether the next has arrived
    (taking it waits for nothing). Closing it (or reaching its end) stops the sending: what is in flight ends,
    nothing more is sent."""

    def __init__(self, answers: queue.SimpleQueue[list[Placed | Exception | None]], sender: threading.Thread,
                 count: int, stop: threading.Event) -> None:
        self._answers = answers
        self._sender = sender
        self._left = count
        self._stop = stop
        self._group: collections.deque[Placed | Exception | None] = collections.deque()

    def __next__(self) -> Placed | None:
        if not self._left:
            self._stop.set()
            raise StopIteration
        if not self._group:
            self._group.extend(self._next_group())
        outcome = self._group.popleft()
        if isinstance(outcome, Exception):
            self._left = 0
            self._stop.set()
            raise outcome
        self._left -= 1
        return outcome

    def ready(self) -> bool:
        """Whether the next outcome has arrived (``next`` waits for nothing)."""
        return bool(self._group) or not self._answers.empty()

    def close(self) -> None:
        """A caller that stops early: what is in flight ends, nothing more is sent."""
        self._stop.set()

    def _next_group(self) -> list[Placed | Exception | None]:
        """The sender's next outcomes. Each load it waits on has a hard deadline, but a sender that ended without a
        word (a ``BaseException`` it does not catch) would leave nobody to answer: that is an error, not a wait."""
        while True:
            try:
                return self._answers.get(timeout=_WATCH_EVERY)
            except queue.Empty:
                if not self._sender.is_alive() and self._answers.empty():
                    return [RuntimeError("the thread sending loads to the runner ended without their outcomes")]


def _random_idents(count: int) -> list[int]:
    """``count`` ids of 62 random bits each, as ``secrets.randbits(62)`` gives them, from one ``os.urandom``."""
    data = os.urandom(8 * count)
    return [int.from_bytes(data[i:i + 8], "big") >> 2 for i in range(0, 8 * count, 8)]


def _text(value: object) -> str | None:
    return None if value is None else str(value)


def _health_result(result: PluginSandboxResult) -> PluginSandboxResult:
    """A health check's answer whose result is a ``HealthResult``'s wire form, decoded and checked again (the core
    trusts no runner): the ``HealthResult``, or a failed call naming what is wrong with it."""
    try:
        return PluginSandboxResult(True, HealthResult.from_wire(result.result), duration_ms=result.duration_ms)
    except InvalidHealthResultError as err:
        return failed(type(err).__name__, str(err), result.duration_ms)


#: What ``absolute`` looks for in a path's text: a leading separator, and a ``..`` component.
_SEP, _UP = os.sep, f"{os.sep}.."


def absolute(path: PurePath) -> str:
    """``os.path.abspath(path)``. The text of a path object has no ``.`` component, no doubled separator but a leading
    pair (which ``abspath`` keeps too) and no trailing one: when it is absolute and has no ``..`` either, it is what
    ``abspath`` gives, without the normalising walk (a twenty-fifth of the load stream's work, a source at a time)."""
    text = str(path)
    if text.startswith(_SEP) and _UP not in text:
        return text
    return os.path.abspath(text)


def known(method: str) -> PluginSandboxResult:
    """The outcome of ``Plugin``'s own ``method`` (``initialize``, ``start``, ``health_check``), a no-op a runner
    answers without running it (its name alone, riding in a bring-up's frame): passed, in no time, with the no-op's
    result."""
    return PluginSandboxResult(True, True if method == "health_check" else None, None, None, 0.0)


#: The phases a plugin brought up with its load goes through, without and with its first health check: also the
#: answers riding in its load's frame when none of them ran plugin code (each the name of ``Plugin``'s own no-op).
_BRING_UP = (["initialize", "start"], ["initialize", "start", "health_check"])


def _since(started: float) -> float:
    return (time.perf_counter() - started) * 1000.0


class RunnerPool:
    """Every runner of one core, and where each plugin lives."""

    def __init__(self, settings: RunnerSettings | None = None,
                 on_lost: Callable[[RunnerLoss], None] | None = None) -> None:
        self.settings = settings if settings is not None else RunnerSettings()
        self.on_lost = on_lost
        #: Origins of the plugins that brought a runner down: each gets a runner of its own from then on.
        self.quarantined: set[str] = set()
        self._shared: RunnerProcess | None = None
        self._dedicated: set[RunnerProcess] = set()
        self._lock = threading.Lock()
        self._slots = itertools.count(1)
        self._closed = False
        self._watch: threading.Thread | None = None

    def shared_runner(self) -> RunnerProcess | None:
        """The runner of the inline plugins (None until one is needed)."""
        return self._shared

    def runners(self) -> list[RunnerProcess]:
        """Every live runner."""
        with self._lock:
            found = list(self._dedicated)
            if self._shared is not None:
                found.append(self._shared)
        return found

    def load(self, source: PluginSource, dedicated: bool, limits: SandboxLimits | None = None) -> Placed:
        """Import ``source`` in a runner (a shared one unless ``dedicated`` or quarantined) and instantiate it."""
        limits = limits if limits is not None else self.settings.load_limits
        own = dedicated or source.origin in self.quarantined
        runner = self._runner_for(source, own)
        handle, request = self._load_request(runner, source, limits)
        lost: RunnerLostError | None = None
        with runner.lock:
            try:
                answer = runner.request(request, limits.timeout)
            except RunnerLostError as err:
                lost = err
        if lost is not None:
            placed, loss = self._lost_loading(runner, source, lost)
            self.tell(loss)
            return placed
        return self._placed(handle, answer, own)

    def load_many(self, sources: list[PluginSource], limits: SandboxLimits | None = None,
                  ups: list[Mapping[str, Any] | None] | None = None,
                  apart: Callable[[PluginSource], tuple[bool, bytes | None]] | None = None,
                  ) -> Iterator[Placed | None]:
        """Load each source as ``load(source, False, limits)`` would, in order, the next ones while the caller
        handles one: a thread sends them to the shared runner :data:`PIPELINE` at a time, without waiting for each
        answer, so the runner never waits for the core nor the core for the runner. A source whose load brings
        the runner down is blamed (quarantined) as in ``load``; the ones sent after it never ran, and go to a new
        runner. The iterator's ``ready()`` tells whether its next outcome has arrived (the outcomes read from answers
        that arrived together are handed over together), and closing it stops the sending.

        ``ups`` (one per source, or None): ask the runner to bring the plugin up in the same request, as
        ``{"config": ..., "timeout": <the longest a phase may take>, "check": <also its first health check>}``; the
        runner does so only for a plugin that surely qualifies (its own checks, in
        ``plugin_health/runtime/runner.py``), and the outcomes of its ``initialize``, ``start`` and ``health_check``
        come back in ``Placed.up``, each held to the plugin's own timeout; a phase that brings the runner down is
        blamed on its plugin (``Placed.up_lost``), as a call is.

        ``apart``: whether a source runs apart (in a runner of its own), asked by the sending thread as it reaches
        each source, so that the first loads go out before the last source is read; such a source is not loaded
        here: None comes in its place, in order, and the caller loads it. With it comes the text to import the source
        from (the bytes read to tell, sent with the request: the runner imports what was scanned, and reads nothing;
        None: the runner reads the file)."""
        limits = limits if limits is not None else self.settings.load_limits
        answers: queue.SimpleQueue[list[Placed | Exception | None]] = queue.SimpleQueue()
        stop = threading.Event()
        work = list(zip(sources, ups if ups is not None else [None] * len(sources), strict=True))
        thread = threading.Thread(target=self._pipeline_loads, args=(work, limits, answers, stop, apart),
                                  name="plugin-health-loads", daemon=True)
        thread.start()
        return _Streamed(answers, thread, len(sources), stop)

    def _pipeline_loads(self, work: list[_Load], limits: SandboxLimits,
                        answers: queue.SimpleQueue[list[Placed | Exception | None]], stop: threading.Event,
                        apart: Callable[[PluginSource], tuple[bool, bytes | None]] | None) -> None:
        outcomes = _Outcomes(answers)
        try:
            self._send_loads(work, limits, outcomes, stop, apart)
        except Exception as err:  # noqa: BLE001 - a bug here must reach the caller waiting for answers, not hang it
            outcomes.add(err)
        finally:
            outcomes.hand_over()

    def _send_loads(self, work: list[_Load], limits: SandboxLimits, outcomes: _Outcomes, stop: threading.Event,
                    apart: Callable[[PluginSource], tuple[bool, bytes | None]] | None) -> None:
        pending = collections.deque(work)
        placing = _Placing(apart)
        while pending and not stop.is_set():
            if placing.apart(pending[0]):  # not for this pool's shared runner: the caller loads it
                pending.popleft()
                outcomes.add(None)
                continue
            outcomes.hand_over()  # what follows may wait: a load of its own, a runner to start, a loss to tell
            if pending[0][0].origin in self.quarantined:  # blamed before: a runner of its own
                outcomes.add(self.load(pending.popleft()[0], False, limits))
                continue
            runner = self._runner_for(pending[0][0], False)
            with runner.lock:
                loss = self._stream_loads(runner, pending, limits, outcomes, stop, placing)
            if loss is not None:
                outcomes.hand_over()
                self.tell(loss)

    def _stream_loads(self, runner: RunnerProcess, pending: collections.deque[_Load], limits: SandboxLimits,
                      outcomes: _Outcomes, stop: threading.Event, placing: _Placing) -> RunnerLoss | None:
        """Load ``pending`` sources in ``runner`` (the caller holds its lock), each outcome added to ``outcomes`` as
        it is read (handed over before a read that would wait): the next :data:`PIPELINE` requests are sent while the
        runner still works on the ones before, so that it never waits for the core. Ends when none is left, at a
        source that runs apart or was blamed before (it loads in a runner of its own), or when ``runner`` is lost: its
        loss then (to tell once the lock is given back), the source in flight blamed, and the ones sent after it back
        in ``pending``: they never ran."""
        inflight: collections.deque[tuple[PluginSource, Mapping[str, Any] | None, RunnerHandle, int, float, bool]] = (
            collections.deque())
        stop_sending = False
        try:
            while pending or inflight:
                if len(inflight) <= PIPELINE and pending and not stop.is_set() and not stop_sending:
                    chunk: list[_Load] = []
                    while (pending and len(chunk) < PIPELINE and pending[0][0].origin not in self.quarantined
                           and not placing.apart(pending[0])):
                        chunk.append(pending.popleft())
                    if chunk:
                        outcomes.hand_over()  # sending may wait for room, as long as the runner reads none
                        try:
                            chunk, requests, sent, delivered = self._send_loads_of(runner, chunk, limits, placing)
                        except RunnerLostError:
                            pending.extendleft(reversed(chunk))  # none of them was sent
                            raise
                        inflight.extend((one, up, handle, ident, timeout, request.get("ahead") is True)
                                        for (one, up), (handle, request), (ident, timeout)
                                        in zip(chunk, requests, sent, strict=True))
                        if not delivered:  # it died: what it answered is read, the first unanswered is blamed
                            stop_sending = True
                if not inflight:
                    return None
                source, up, handle, ident, timeout, ahead = inflight[0]
                outcomes.before_reading(runner)
                answer = runner.answer(ident, timeout, ahead=ahead)
                riding = runner.riding(answer)  # a broken one blames this source, still the first in flight
                inflight.popleft()
                placing.loaded(source)
                placed = self._placed(handle, answer, False, locked=True)
                loss: RunnerLoss | None = None
                if placed.handle is not None and answer.get("up") is True and up is not None:
                    placed, loss = self._brought_up(placed, handle, source, ident, up, riding, outcomes)
                outcomes.add(placed)
                if loss is not None:  # blamed on the plugin whose phase was in flight
                    pending.extendleft((one, up) for one, up, *_ in reversed(inflight))  # never ran: to a new runner
                    return loss
        except RunnerLostError as err:  # the source in flight (the first unanswered, or unsent) is blamed
            if err.compiling:
                # Lost compiling loads ahead, in no plugin's code: none is blamed. They load again in a fresh runner,
                # where none compiles ahead, so that a text that brings the compiler down does so in its own import,
                # and is blamed there.
                placing.ahead = False
                pending.extendleft((one, up) for one, up, *_ in reversed(inflight))
                return self.lose(runner, None, f"compiling loads ahead: {err.message}", err.error_type, err.message)
            culprit = inflight.popleft()[0] if inflight else pending.popleft()[0]
            pending.extendleft((one, up) for one, up, *_ in reversed(inflight))  # never ran: to a new runner
            placed, loss = self._lost_loading(runner, culprit, err)
            outcomes.add(placed)
            return loss
        return None

    def _send_loads_of(self, runner: RunnerProcess, chunk: list[_Load], limits: SandboxLimits,
                       placing: _Placing) -> tuple[
            list[_Load], list[tuple[RunnerHandle, dict[str, Any]]], list[tuple[int, float]], bool]:
        """Send the loads of ``chunk`` (``RunnerProcess.send_many``): the chunk as sent, each source's handle and
        request, each request's id and timeout, and whether they were delivered. A source whose ``up`` the requests
        cannot carry (a configuration of a type ``marshal`` refuses: a date, a ``str`` subclass) goes without it: its
        plugin comes up the usual way, which reports that configuration as its failure."""
        requests = [self._load_request(runner, one, limits, up, placing.text(one), placing.ahead) for one, up in chunk]
        try:
            return chunk, requests, *runner.send_many([(request, limits.timeout) for _, request in requests])
        except ValueError:
            if all(up is None for _, up in chunk):
                raise
        chunk = [(one, up if up is None or _carried(up, self.settings.max_message) else None) for one, up in chunk]
        requests = [self._load_request(runner, one, limits, up, placing.text(one), placing.ahead) for one, up in chunk]
        return chunk, requests, *runner.send_many([(request, limits.timeout) for _, request in requests])

    def _brought_up(self, placed: Placed, handle: RunnerHandle, source: PluginSource, ident: int,
                    up: Mapping[str, Any], riding: list[Any], outcomes: _Outcomes) -> tuple[Placed, RunnerLoss | None]:
        """Read the answers of a plugin the runner brings up with its load (the caller holds the runner's lock): its
        ``initialize``, then its ``start``, then (``up["check"]``) its first ``health_check``, each only if the one
        before passed; each held to the plugin's own timeout (the load's answer declared it) plus the grace, and
        judged as a call's answer is (a runner lost meanwhile, or killed for memory the plugin kept, blames it).
        The answers of phases that ran no plugin code ride in the frame before them (``riding``: the load's)."""
        runner = handle.runner
        phases = _BRING_UP[up.get("check") is True]
        if riding == phases:  # none ran plugin code (``Plugin``'s own no-ops), as most plugins' at start-up
            runner.last = (handle, time.monotonic())
            return Placed(placed.handle, placed.declaration, up=tuple([known(method) for method in phases])), None
        results: list[PluginSandboxResult] = []
        loss: RunnerLoss | None = None
        for method in phases:
            started = time.perf_counter()
            timeout = handle.limits.timeout if handle.limits.timeout is not None else self.settings.longest
            try:
                if riding:  # it ran no plugin code: its answer came in the frame before
                    answer = runner.next_riding(riding, method)
                else:
                    outcomes.before_reading(runner)
                    answer = runner.answer(ident, timeout, method)
                    riding = runner.riding(answer)
            except RunnerLostError as err:
                result, loss = handle._lost(method, err, started, who=source.name)
            else:
                runner.last = (handle, time.monotonic())
                result, loss = (known(method), None) if answer is None else handle._result(method, answer, started)
            results.append(result)
            if loss is not None or not result.ok or result.result is False:
                break
        # Made anew, not ``dataclasses.replace``d (a quarter of reading a bring-up): a placed handle has no failure.
        return Placed(placed.handle, placed.declaration, up=tuple(results),
                      up_lost=None if loss is None else loss.cause), loss

    def _load_request(self, runner: RunnerProcess, source: PluginSource, limits: SandboxLimits,
                      up: Mapping[str, Any] | None = None, text: bytes | None = None, ahead: bool = False,
                      ) -> tuple[RunnerHandle, dict[str, Any]]:
        """A handle for ``source`` in ``runner`` (a new slot) and the request that loads it there (and brings it up,
        with ``up``; ``text``: the source's bytes to import, as the core read them; ``ahead``: marked to be compiled
        ahead with the loads sent with it, if its text is short enough: see ``Runner.compile_ahead``)."""
        slot = next(self._slots)
        handle = RunnerHandle(self, runner, slot, source.origin, limits)
        # The path made absolute as text (the runner shares the core's working directory): ``Path.resolve()``'s walk
        # of every component was a sixth of the core's work while it loaded 10,000 plugins.
        raw: dict[str, Any] = {"name": source.name, "origin": source.origin,
                               "path": None if source.path is None else absolute(source.path),
                               "entry_point": source.entry_point}
        request = {"op": "load", "slot": slot, "timeout": limits.timeout, "memory_limit_mb": limits.memory_limit_mb,
                   "source": raw}
        if text is not None:
            raw["text"] = text
            if ahead and len(text) <= wire.AHEAD_TEXT:
                request["ahead"] = True
        if up is not None:
            request["up"] = dict(up)
        return handle, request

    def _lost_loading(self, runner: RunnerProcess, source: PluginSource,
                      lost: RunnerLostError) -> tuple[Placed, RunnerLoss]:
        """``runner`` was lost while it loaded ``source``: the source is blamed (quarantined) if the runner had booted,
        as its code may have brought it down; one lost before its first frame imported nothing, and the load only
        fails, saying so. The loss to tell (with no lock held), so that the runner's others are recovered."""
        if runner.ready:
            self.quarantined.add(source.origin)
        cause = f"loading {source.label}: {lost.message}"
        loss = self.lose(runner, None, cause, lost.error_type, lost.message)
        return Placed(None, phase="import", error_type=lost.error_type, error=lost.message), loss

    def _placed(self, handle: RunnerHandle, answer: dict[str, Any], own: bool, locked: bool = False) -> Placed:
        """What a load's answer gives: the handle (its instance kept in the runner) and the declaration, or the
        phase that failed. ``locked``: the caller holds the runner's lock."""
        runner = handle.runner
        with contextlib.nullcontext() if locked else runner.lock:
            if not answer.get("ok"):
                if own:
                    self._retire(runner)
                return Placed(None, phase=_text(answer.get("phase")) or "import",
                                   error_type=_text(answer.get("error_type")), error=_text(answer.get("error")))
            runner.handles[handle.slot] = handle
        declaration = answer.get("result")
        if not isinstance(declaration, dict):
            if locked:  # release() asks the runner to drop the instance: not with its lock held
                handle.lost = True
                runner.handles.pop(handle.slot, None)
            else:
                self.release(handle)
            return Placed(None, phase="declaration", error_type="ProtocolError", error="no declaration")
        limits = handle.limits
        timeout, memory = declaration.get("timeout"), declaration.get("memory_limit_mb")
        if timeout is not None or memory is not None:  # else its limits are the load's (frozen: shared as they are)
            handle.limits = SandboxLimits(_number(timeout, limits.timeout), _whole(memory, limits.memory_limit_mb))
        return Placed(handle, declaration)

    def call_many(self, handles: list[RunnerHandle], method: str,
                  args: list[tuple[Any, ...]]) -> list[PluginSandboxResult | None]:
        """Call ``method`` of several plugins of one runner (a lifecycle method, at start-up), the requests sent
        together and the answers read in order, so the runner never waits for the core; None for a plugin whose call
        did not run (busy, lost, in another runner, or after the one in flight when the runner was lost): call it
        on its own. A call that brings the runner down is blamed alone, as with ``RunnerHandle.call``."""
        results: list[PluginSandboxResult | None] = [None] * len(handles)
        runner = handles[0].runner if handles else None
        taken = [i for i, handle in enumerate(handles)
                 if handle.runner is runner and not handle.lost and handle._actor.acquire(blocking=False)]
        loss: RunnerLoss | None = None
        try:
            if runner is None or not taken:
                return results
            try:
                requests = [handles[i]._request(method, args[i], None, None) for i in taken]
            except ValueError:
                return results
            if runner.dead is not None:
                return results
            runner.lock.acquire(urgent=True)
            with _Held(runner.lock):
                started = time.perf_counter()
                replies = runner.request_many(requests)
                for i in taken:
                    handle = handles[i]
                    if handle.lost:  # its runner was lost meanwhile (memory kept by the one before)
                        break
                    try:
                        answer = next(replies)
                    except RunnerLostError as err:
                        results[i], loss = handle._lost(method, err, started)
                        break
                    except ValueError:
                        break
                    runner.last = (handle, time.monotonic())
                    results[i], loss = handle._result(method, answer, started)
                    started = time.perf_counter()
                    if loss is not None:
                        break
        finally:
            for i in taken:
                handles[i]._actor.release()
        if loss is not None:  # told with no lock held: the owner moves plugins, which calls runners
            self.tell(loss)
        return results

    def lose(self, runner: RunnerProcess, culprit: RunnerHandle | None, cause: str,
             error_type: str = CRASHED, error: str = "") -> RunnerLoss:
        """``runner`` is gone: blame ``culprit`` (quarantined from now on); every instance in it is lost."""
        if culprit is not None:
            self.quarantined.add(culprit.origin)
        victims = []
        for handle in list(runner.handles.values()):
            handle.lost = True
            if handle is not culprit and handle.name:
                victims.append(handle.name)
        runner.handles.clear()
        self._forget(runner)
        logger.warning("runner %s (pid %d) lost: %s", runner.label, runner.pid, runner.dead)
        metrics.observe_runner_lost(error_type)
        return RunnerLoss(culprit.name if culprit is not None else None, tuple(sorted(victims)), cause, error_type,
                          error)

    def tell(self, loss: RunnerLoss) -> None:
        """Tell the owner of a loss (call with no lock held)."""
        if self.on_lost is not None:
            self.on_lost(loss)

    def release(self, handle: RunnerHandle) -> None:
        """Forget ``handle``'s instance; a runner of its own stops."""
        runner = handle.runner
        handle.lost = True
        if runner.handles.pop(handle.slot, None) is None or runner.dead is not None:
            return
        if runner is not self._shared:
            self._retire(runner)
            return
        with runner.lock, contextlib.suppress(RunnerLostError, ValueError):
            runner.request({"op": "drop", "slot": handle.slot}, self.settings.load_limits.timeout)

    def close(self) -> None:
        """Stop every runner (their plugins should have been stopped first)."""
        with self._lock:
            self._closed = True
            runners = list(self._dedicated) + ([self._shared] if self._shared is not None else [])
            self._dedicated.clear()
            self._shared = None
        for runner in runners:
            for handle in runner.handles.values():
                handle.lost = True
            runner.stop()

    # -- placement and loss -------------------------------------------------------------------------------

    def start_shared(self) -> None:
        """Start the shared runner now, unless one runs, without waiting for it to boot (the first request to it
        waits): it boots while the caller does what comes before its first load (the core discovers its plugins)."""
        with self._lock:
            if not self._closed:
                self._shared_runner()

    def stop_unused_shared(self) -> None:
        """Stop the shared runner if no load was ever sent its way (``start_shared`` started it for plugins that
        all run apart, or for none). One handed to a load is kept: that load may be about to send to it."""
        with self._lock:
            runner = self._shared
            if runner is None or runner.used:
                return
            self._shared = None
        runner.stop()

    def _runner_for(self, source: PluginSource, own: bool) -> RunnerProcess:
        gone: RunnerProcess | None = None
        with self._lock:
            if own:
                self._watching()
                runner = RunnerProcess(f"plugin:{source.name}", self.settings)
                self._dedicated.add(runner)
                return runner
            shared = self._shared_runner()
            if not shared.used and shared.process.poll() is not None:
                # Started ahead and gone before any load (the idle watcher may not have seen it yet): sent a load, it
                # would fail that plugin for a death it did not cause (_lost_loading blames none, but the load fails).
                gone, self._shared = shared, None
                shared = self._shared_runner()
            shared.used = True
        if gone is not None:
            logger.warning("the shared runner died before its first load (%s); another was started",
                           _death(gone.process.returncode))
            gone.kill("it died before its first load")
        return shared

    def _shared_runner(self) -> RunnerProcess:
        """The shared runner, started if there is none or it died (the caller holds ``_lock``)."""
        self._watching()
        if self._shared is None or self._shared.dead is not None:
            self._shared = RunnerProcess("shared", self.settings)
        return self._shared

    def _watching(self) -> None:
        """Start the thread that notices idle runners dying, once (the caller holds ``_lock``)."""
        if self._watch is None:
            self._watch = threading.Thread(target=self._watch_idle, name="plugin-health-runners", daemon=True)
            self._watch.start()

    def _watch_idle(self) -> None:
        """Notice at once a runner that dies while no call is in flight (a call in flight notices it itself)."""
        while not self._closed:
            by_fd = {runner.pidfd: runner for runner in self.runners() if runner.pidfd is not None}
            if not by_fd:
                time.sleep(_WATCH_EVERY)
                continue
            try:
                readable, _, _ = select.select(list(by_fd), [], [], _WATCH_EVERY)
            except (OSError, ValueError):  # a pidfd closed meanwhile: look again
                continue
            for fd in readable:
                self._died_idle(by_fd[fd])

    def _died_idle(self, runner: RunnerProcess) -> None:
        if not runner.lock.acquire(blocking=False):
            return  # a call is in flight: it sees the death and blames itself
        try:
            if runner.dead is not None:
                return
            code = runner.kill("it died between calls")
            last, answered = runner.last
            # A plugin that brings its runner down on its way out of a call (it killed its guard, say) is answered
            # a moment before the runner dies: the death is blamed on it. Later, nobody can say whose it was.
            culprit = last if last is not None and time.monotonic() - answered < IDLE_BLAME else None
            who = f"after plugin {culprit.name!r} answered" if culprit is not None else "while idle"
            loss = self.lose(runner, culprit, f"its runner died {who} ({_death(code)})", CRASHED,
                             f"its runner died right after the call ({_death(code)})")
        finally:
            runner.lock.release()
        self.tell(loss)

    def _forget(self, runner: RunnerProcess) -> None:
        with self._lock:
            self._dedicated.discard(runner)
            if self._shared is runner:
                self._shared = None

    def _retire(self, runner: RunnerProcess) -> None:
        self._forget(runner)
        runner.stop()


def _carried(up: Mapping[str, Any], limit: int) -> bool:
    """Whether a load request can carry ``up`` (what ``marshal`` and a frame's size allow)."""
    try:
        wire.encode_request(dict(up), limit)
    except (ValueError, wire.MessageTooLargeError):
        return False
    return True


def _number(value: object, default: float | None) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) and value > 0 else default


def _whole(value: object, default: int | None) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else default
