"""``Supervisor``: turns sandbox outcomes into lifecycle triggers, runs health checks, restarts FAILED plugins.

The sandbox only returns results; the supervisor decides. Outcomes of tool calls and health checks go
through ``judge`` (crash: fail at once; ``failure_threshold`` failures in a row: fail; success: count reset).
A FAILED plugin is retried (``reset``, ``initialize``, ``start``) after an exponential backoff with jitter,
at most ``max_restarts`` times in ``restart_window`` seconds; the failure past that limit is recorded with
the reason ``restart limit reached`` and the plugin stays FAILED until an operator restarts it.

Work is kept in a heap of due times, so a tick costs O(log n) per due item, not O(plugins).
"""

from __future__ import annotations

import heapq
import logging
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

from plugin_health.errors import IllegalTransitionError, PluginError, UnknownPluginError
from plugin_health.health import HealthResult
from plugin_health.lifecycle import PluginLifecycleState, TransitionRecord, UnavailableReason
from plugin_health.loader.loader import ACTIVE, FirstCheck, PluginLoader
from plugin_health.sandbox import PluginSandboxResult
from plugin_health.supervision.policy import (
    RESTART_LIMIT_REACHED,
    Judgement,
    Verdict,
    backoff_delay,
    check_outcome,
    judge,
    may_restart,
    restarts_in_window,
)

logger = logging.getLogger(__name__)

RUNNING = PluginLifecycleState.RUNNING
FAILED = PluginLifecycleState.FAILED
#: Seconds a due item waits when the same plugin's previous item still runs.
BUSY_RETRY = 0.05
#: Stale items ``_due`` may hold before ``tick`` drops them all at once (when they are half of it or more).
COMPACT_AFTER = 256


class Loss(Protocol):
    """A process that ran plugins is gone: who is blamed, who else lost their instance, and why."""

    @property
    def culprit(self) -> str | None: ...
    @property
    def victims(self) -> tuple[str, ...]: ...
    @property
    def cause(self) -> str: ...
    @property
    def error_type(self) -> str: ...
    @property
    def error(self) -> str: ...


@dataclass(frozen=True, slots=True)
class SupervisionSettings:
    """The restart and health-check policy (DESIGN.md sections 5 and 8)."""

    failure_threshold: int = 3
    max_restarts: int = 5
    restart_window: float = 600.0
    backoff_base: float = 1.0
    backoff_max: float = 300.0
    health_interval: float = 30.0
    #: Threads that run due checks, restarts and recoveries side by side (0: on the ticking thread, in turn).
    workers: int = 0


@dataclass(slots=True)
class PluginWatch:
    """What the supervisor knows of one plugin."""

    consecutive_failures: int = 0
    restarts: int = 0
    restart_times: deque[float] = field(default_factory=deque)
    next_restart_at: float | None = None
    next_check_at: float | None = None
    last_check: datetime | None = None
    #: Its last health check did not fail (it passed or warned); None before the first one.
    last_check_ok: bool | None = None
    #: What its last health check found (a failed call: ``fail``, with the error as its output); None before any.
    last_result: HealthResult | None = None
    gave_up: bool = False
    recover_cause: str | None = None


class Supervisor:
    """Supervises the plugins of one loader; ``start()`` runs it on a background thread."""

    def __init__(
        self,
        loader: PluginLoader,
        settings: SupervisionSettings | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self.loader = loader
        self.manager = loader.manager
        self.settings = settings if settings is not None else SupervisionSettings()
        self._clock = clock
        self._jitter = jitter
        self._watches: dict[str, PluginWatch] = {}
        self._due: list[tuple[float, str, str]] = []
        #: Items of ``_due`` known to be stale (a first check's next one scheduled anew): ``tick`` drops them all at
        #: once when they are most of it (``_compact``) instead of popping them one by one.
        self._superseded = 0
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._listeners: list[Callable[[str, bool], None]] = []
        workers = self.settings.workers
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="plugin-health-due") if workers else None
        self._busy: set[str] = set()  # plugins whose due work runs now (one item per plugin at a time)
        self._idle = threading.Condition(self._lock)
        self.manager.subscribe(self._on_transition, self._on_transitions)
        for name in self.manager:
            self._on_transition(self.manager.last(name))

    # -- outcomes ---------------------------------------------------------------------------------------

    def watch(self, name: str) -> PluginWatch:
        """The supervision record of ``name`` (created on first use)."""
        with self._lock:
            return self._watch(name)

    def subscribe(self, listener: Callable[[str, bool], None]) -> None:
        """Call ``listener(name, urgent)`` whenever a plugin's counters or last check change.

        ``urgent`` is False when only the time of the last (passing) check moved on: news that can wait.
        """
        self._listeners.append(listener)

    def _changed(self, name: str, urgent: bool = True) -> None:
        for listener in self._listeners:
            listener(name, urgent)

    def record_outcome(self, name: str, result: PluginSandboxResult, what: str = "call") -> Verdict:
        """Apply one call's outcome to ``name``; may fail the plugin (DESIGN.md section 5)."""
        with self._lock:
            judgement, changed = self._count(self._watch(name), result)
        return self._counted(name, judgement, changed, result, what)

    def _count(self, watch: PluginWatch, result: PluginSandboxResult) -> tuple[Judgement, bool]:
        """Count one call's outcome into ``watch`` (the caller holds ``_lock``): the judgement, and whether the
        failure count changed."""
        judgement = judge(result.ok, result.error_type, watch.consecutive_failures, self.settings.failure_threshold)
        changed = watch.consecutive_failures != judgement.consecutive_failures
        watch.consecutive_failures = judgement.consecutive_failures
        return judgement, changed

    def _counted(self, name: str, judgement: Judgement, changed: bool, result: PluginSandboxResult,
                 what: str) -> Verdict:
        """What follows an outcome counted (``_count``), with no lock held: the news, or the plugin failed."""
        if changed and judgement.verdict is not Verdict.FAIL:
            self._changed(name)
        if judgement.verdict is Verdict.FAIL:
            if result.error_type == "PluginCrashedError":
                reason = f"{what} crashed"
            else:
                reason = f"{judgement.consecutive_failures} consecutive failures ({what})"
            self.fail(name, reason, result.error_type, result.error)
        return judgement.verdict

    def fail(self, name: str, reason: str, error_type: str | None, error: str | None) -> bool:
        """Stop ``name`` if it runs and move it to FAILED; False if it was no longer in a state that can fail."""
        if not self.manager.may(name, "fail"):
            return False
        try:
            self.loader.take_down(name, "fail", self.failure_reason(name, reason), error_type=error_type, error=error)
        except IllegalTransitionError:
            return False  # moved by another thread meanwhile
        return True

    def restarts_by_itself(self, name: str) -> bool:
        """Whether a FAILED ``name`` is restarted automatically (False: restarts are off, or its limit is reached)."""
        return self.settings.max_restarts > 0 and not self.watch(name).gave_up

    def failure_reason(self, name: str, reason: str) -> str:
        """``reason``, or ``restart limit reached`` when no automatic restart is left for ``name``."""
        with self._lock:
            watch = self._watch(name)
            now = self._clock()
            limit = self.settings.max_restarts
            if limit > 0 and not may_restart(watch.restart_times, now, self.settings.restart_window, limit):
                return RESTART_LIMIT_REACHED
        return reason

    # -- health checks -----------------------------------------------------------------------------------

    def check(self, name: str, result: PluginSandboxResult | None = None, at: datetime | None = None) -> bool:
        """Run ``name``'s health check now (or judge ``result``, the outcome of one that ended ``at``, or just now);
        whether it did not fail (``pass`` or ``warn``).

        ``warn`` counts no failure; False, a ``fail`` result, any value that means nothing, an exception or a
        timeout counts as one (``policy.check_outcome``).
        """
        if self.manager.state_of(name) is not RUNNING:
            return False
        if result is None:
            try:
                result = self.loader.call(name, "health_check")
            except PluginError:  # its instance is gone with its runner and comes back shortly: nothing was checked
                return False
        return self._checked(name, result, at, first=False)

    def _checked(self, name: str, result: PluginSandboxResult, at: datetime | None, first: bool,
                 judged: tuple[HealthResult, PluginSandboxResult] | None = None) -> bool:
        """Judge one health check's ``result`` (``check``), kept and counted in one hold of the lock; ``first``: a
        first check, after which the next one is due an interval from now (in the same hold when it passed: nothing
        can move the plugin between the two); ``judged``: its ``check_outcome``, if worked out already. Whether it
        did not fail."""
        found, outcome = check_outcome(result) if judged is None else judged
        with self._lock:
            watch = self._watch(name)
            before = watch.last_result
            watch.last_check = at if at is not None else datetime.now(UTC)
            watch.last_check_ok = outcome.ok
            watch.last_result = found
            judgement, changed = self._count(watch, outcome)
            passed = judgement.verdict is Verdict.HEALTHY
            if first and passed:
                self._next_check(name, watch)
        if self._counted(name, judgement, changed, outcome, "health check") is Verdict.HEALTHY:
            # Only the time of the last check (and what it measured) moved on, unless its status changed: a plugin
            # that starts or stops warning changes the aggregate status at once.
            moved = found.status != ("pass" if before is None else before.status)
            self._changed(name, urgent=moved)
        if first and not passed:  # due again an interval later, unless this failure failed the plugin
            with self._lock:
                self._next_check(name, self._watch(name))
        return outcome.ok

    def _next_check(self, name: str, watch: PluginWatch) -> None:
        """After a first check: the next one an interval from now, if ``name`` still runs (the caller holds
        ``_lock``; the one due now is skipped when popped)."""
        if watch.next_check_at is not None and self.manager.state_of(name) is RUNNING:
            self._superseded += 1  # the item due at the old time
            watch.next_check_at = self._clock() + self.settings.health_interval
            self._schedule(watch.next_check_at, name, "check")

    def check_many(self, names: list[str]) -> None:
        """The health checks of several RUNNING plugins now (the first ones, at start-up), the calls of those that
        share a runner sent together (``PluginLoader.call_many``); each judged as ``check`` does, and its next one
        scheduled an interval later. A check that did not run stays due, for ``tick``."""
        running = [name for name in names if self.manager.get_state(name) is RUNNING]
        for name, result in zip(running, self.loader.call_many(running, "health_check"), strict=True):
            if result is not None:
                self._first(name, result, None)

    def check_made(self, name: str, first: FirstCheck) -> None:
        """Judge the first check of ``name`` made as it came up with its load (``PluginLoader.judge_first``), as
        ``check_many`` judges the ones it makes; one that brought its runner down fails its plugin as a check in
        flight then would (``runner_lost``)."""
        if self.manager.get_state(name) is RUNNING:
            self._first(name, first.result, first)

    def check_made_if_passed(self, name: str, first: FirstCheck) -> bool:
        """``check_made`` of a first check made with a load that passed (``pass`` or ``warn``), judged now: judging
        it moves no plugin, and so calls into no runner. False, and nothing judged, for one that did not (judging
        it may stop its plugin: the caller judges it later, with ``check_made``)."""
        if first.lost is not None:
            return False
        judged = check_outcome(first.result)
        if not judged[1].ok:
            return False
        if self.manager.get_state(name) is RUNNING:
            self._checked(name, first.result, first.at, first=True, judged=judged)
        return True

    def _first(self, name: str, result: PluginSandboxResult, first: FirstCheck | None) -> None:
        """Judge a first check (``first``: made with the load), and schedule the next one an interval later."""
        if first is not None and first.lost is not None:
            self.fail(name, f"quarantined into a runner of its own: {first.lost}", result.error_type, result.error)
            return
        if self.manager.state_of(name) is RUNNING:  # as ``check`` asks
            self._checked(name, result, None if first is None else first.at, first=True)

    # -- restarts ------------------------------------------------------------------------------------------

    def restart(self, name: str, *, automatic: bool = True, why: str | None = None) -> PluginLifecycleState:
        """``reset`` (recording ``why``), (re)load if needed, ``initialize``, ``start``; an operator restart clears
        the limit."""
        with self._lock:
            watch = self._watch(name)
            if automatic:
                watch.restart_times.append(self._clock())
            else:
                watch.restart_times.clear()
                watch.gave_up = False
            watch.restarts += 1
            watch.next_restart_at = None
        state = self.loader.restart(name, lambda reason: self.failure_reason(name, reason), why)
        if state is FAILED and self.watch(name).gave_up:
            logger.warning("plugin %s: %s; it stays FAILED until an operator restarts it", name, RESTART_LIMIT_REACHED)
        return state

    # -- lost runners -----------------------------------------------------------------------------------------

    def runner_lost(self, loss: Loss) -> None:
        """A runner is gone: fail the RUNNING plugin it is blamed on; bring the others back in a fresh one."""
        if self._stopping:
            return  # shutting down: the loader stops what is left, and nothing is brought back
        culprit = loss.culprit
        if culprit is not None and culprit in self.manager and self.manager.state_of(culprit) is RUNNING:
            self.fail(culprit, f"quarantined into a runner of its own: {loss.cause}", loss.error_type, loss.error)
        now = self._clock()
        with self._lock:
            for name in loss.victims:
                self._watch(name).recover_cause = loss.cause
                self._schedule(now, name, "recover")

    def recover(self, name: str) -> None:
        """Bring back a plugin whose instance was lost with a runner it shared with a culprit."""
        with self._lock:
            watch = self._watch(name)
            cause, watch.recover_cause = watch.recover_cause, None
        if cause is None or name not in self.loader.registry:
            return
        if not getattr(self.loader.registry.get(name).handle, "lost", False):
            return  # loaded again already (by a restart or the dependency cascade)
        if self.manager.state_of(name) not in ACTIVE:
            return  # FAILED or UNAVAILABLE: whatever brings it up next loads it again
        reason = UnavailableReason.STOPPED.with_detail(f"its runner was lost ({cause})")
        try:
            self.manager.trigger(name, "make_unavailable", reason=reason)
            self.manager.trigger(name, "reset")
        except IllegalTransitionError:
            return  # moved by another thread meanwhile
        self.loader.bring_up(name)

    # -- scheduling ------------------------------------------------------------------------------------------

    def _watch(self, name: str) -> PluginWatch:
        watch = self._watches.get(name)
        if watch is None:
            watch = self._watches[name] = PluginWatch()
        return watch

    def _schedule(self, due: float, name: str, kind: str) -> None:
        item = (due, name, kind)
        heapq.heappush(self._due, item)
        if self._due[0] is item:  # only an earlier first item changes how long ``_run`` waits
            self._wake.notify()

    def _current(self, due: float, name: str, kind: str) -> bool:
        """Whether the item ``(due, name, kind)`` of ``_due`` is still to be done (the caller holds ``_lock``): an
        item scheduled anew since, or of a recovery no longer wanted, is stale, and skipped."""
        watch = self._watches.get(name)
        if watch is None:  # (a watch made now would hold nothing due)
            return False
        if kind == "check":
            return watch.next_check_at == due
        return watch.next_restart_at == due if kind == "restart" else watch.recover_cause is not None

    def _compact(self) -> None:
        """Drop every stale item of ``_due`` at once (the caller holds ``_lock``): after 10,000 plugins came up with
        their first checks, half of it was, and popping them one at a time took 17-33 ms of the end of a start."""
        self._due = [item for item in self._due if self._current(*item)]
        heapq.heapify(self._due)
        self._superseded = 0

    def _on_transition(self, record: TransitionRecord) -> None:
        self._on_transitions((record,))

    def _on_transitions(self, records: Sequence[TransitionRecord]) -> None:
        """``_on_transition`` of several records, in order, under one hold of the lock."""
        reset: list[str] = []
        with self._lock:
            watches = self._watches
            for record in records:
                watch = watches.get(record.plugin) or self._watch(record.plugin)
                counted = watch.consecutive_failures
                self._update(watch, record)
                if record.dest is RUNNING and counted:
                    reset.append(record.plugin)
        for name in reset:
            self._changed(name)  # the failure count went back to 0

    def _update(self, watch: PluginWatch, record: TransitionRecord) -> None:
        """Schedule what ``record`` makes due for ``watch``'s plugin (the caller holds ``_lock``)."""
        now = self._clock()
        if record.dest is RUNNING:
            watch.consecutive_failures = 0
            watch.next_check_at = now
            self._schedule(now, record.plugin, "check")
        elif record.dest is FAILED:
            watch.next_check_at = None
            window, limit = self.settings.restart_window, self.settings.max_restarts
            if limit == 0:
                return  # automatic restarts are off
            while watch.restart_times and now - watch.restart_times[0] >= window:
                watch.restart_times.popleft()
            if record.reason == RESTART_LIMIT_REACHED or not may_restart(watch.restart_times, now, window, limit):
                watch.gave_up = True
                return
            attempt = restarts_in_window(watch.restart_times, now, window)
            delay = backoff_delay(attempt, self.settings.backoff_base, self.settings.backoff_max, self._jitter())
            watch.next_restart_at = now + delay
            self._schedule(watch.next_restart_at, record.plugin, "restart")
        else:
            watch.next_check_at = None

    def tick(self) -> float | None:
        """Do everything that is due now; returns when the next item is due (None: nothing scheduled)."""
        while True:
            with self._lock:
                if self._superseded > COMPACT_AFTER and 2 * self._superseded >= len(self._due):
                    self._compact()
                if not self._due or self._due[0][0] > self._clock():
                    return self._due[0][0] if self._due else None
                due, name, kind = heapq.heappop(self._due)
                current = self._current(due, name, kind)
                if current and self._pool is not None:
                    watch = self._watch(name)
                    if name in self._busy:  # one item per plugin at a time: this one waits a moment
                        later = self._clock() + BUSY_RETRY
                        if kind == "check":
                            watch.next_check_at = later
                        elif kind == "restart":
                            watch.next_restart_at = later
                        heapq.heappush(self._due, (later, name, kind))
                        continue
                    self._busy.add(name)
            if not current:
                continue
            if self._pool is None:
                self._run_due(name, kind, due)
            else:
                self._pool.submit(self._run_busy, name, kind, due)

    def _run_busy(self, name: str, kind: str, due: float) -> None:
        try:
            self._run_due(name, kind, due)
        except Exception:  # one plugin's bookkeeping error must not end the supervision of the others
            logger.exception("supervising plugin %s (%s) failed", name, kind)
        finally:
            with self._lock:
                self._busy.discard(name)
                self._idle.notify_all()
                self._wake.notify()

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no due work runs (or ``timeout`` seconds); whether it is idle."""
        deadline = self._clock() + timeout
        with self._lock:
            while self._busy:
                remaining = deadline - self._clock()
                if remaining <= 0:
                    return False
                self._idle.wait(remaining)
        return True

    def _run_due(self, name: str, kind: str, due: float) -> None:
        try:
            state = self.manager.state_of(name)
        except UnknownPluginError:
            return
        if kind == "recover":
            self.recover(name)
        elif kind == "restart" and state is FAILED:
            self.restart(name)
        elif kind == "check" and state is RUNNING:
            self.check(name)
            with self._lock:
                watch = self._watch(name)
                if watch.next_check_at == due and self.manager.state_of(name) is RUNNING:
                    watch.next_check_at = due + self.settings.health_interval
                    self._schedule(watch.next_check_at, name, "check")

    # -- the background thread ---------------------------------------------------------------------------------

    def start(self) -> None:
        """Run ``tick`` on a daemon thread until ``stop``."""
        if self._thread is not None:
            return
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="plugin-health-supervisor", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the background thread (an item being worked on finishes first)."""
        with self._lock:
            self._stopping = True
            self._wake.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)

    def run_forever(self, max_wait: float = 0.25) -> None:
        """Run ``tick`` on the calling thread until ``request_stop`` (the host process's main loop).

        On the main thread, inline plugin calls get ``SIGALRM`` timeouts; waits are capped at ``max_wait``
        so that a stop requested by a signal handler (which must not take locks) is seen promptly.
        """
        self._run(max_wait)

    def request_stop(self) -> None:
        """Ask ``run_forever`` to return; safe in a signal handler (a plain store, no lock)."""
        self._stopping = True

    def _run(self, max_wait: float | None = None) -> None:
        while not self._stopped():
            self.tick()
            with self._lock:
                # When the next item is due, read again under the lock the wait is made under: one scheduled by
                # another thread since ``tick`` let go of it woke nobody (nobody was waiting yet).
                next_due = self._due[0][0] if self._due else None
                wait = None if next_due is None else max(0.0, next_due - self._clock())
                if max_wait is not None:
                    wait = max_wait if wait is None else min(wait, max_wait)
                if not self._stopping and (wait is None or wait > 0):
                    self._wake.wait(wait)

    def _stopped(self) -> bool:
        with self._lock:
            return self._stopping
