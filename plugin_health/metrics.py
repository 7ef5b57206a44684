"""Prometheus metrics, right under several gunicorn workers and the plugin host (served by ``api.scrape``).

Counted where they happen: transitions and sandbox calls in the process that hosts the plugins, HTTP
requests in each worker. Under gunicorn, its configuration (``serving/gunicorn_conf.py``) sets
``PROMETHEUS_MULTIPROC_DIR`` before anything is imported, so every process (workers and host) writes its counts to
files there, and any worker's
``/metrics`` sums them all (prometheus_client's multiprocess mode). How many plugins are in each state is not
counted at all: it is read from the store when scraped, so it is the same from every worker. No web framework is
imported here: the core counts its transitions and calls with this module, and never loads Flask.

Series are bounded by states, routes and plugins, never by plugins x methods x outcomes (10,000 plugins made
30,000 call series, 2.6 MB and 0.6 s a scrape). Calls are counted without the plugin, by ``call`` (the lifecycle
method, or ``tool``) and ``outcome`` (``ok``, ``error``, ``timeout``, ``memory``, ``crash``):
``plugin_health_sandbox_calls_total``. What a user needs per plugin is which ones fail:
``plugin_health_plugin_failed_calls_total``, a plugin's calls that did not end ``ok``, one series per plugin from
its first failure and none for a plugin whose calls all succeed (10,000 series at 0 cost 130-380 ms a scrape,
merged from the core's file by every scrape). Which plugins are unwell, and why, is
``plugin_health_plugin_unhealthy``: read from the store like the states, one series per unhealthy plugin and none
for a healthy one (``deploy/prometheus`` alerts on it).
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections import Counter as Tallies
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar, cast

from prometheus_client import Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from plugin_health.lifecycle import PluginLifecycleState, TransitionRecord, UnavailableReason
from plugin_health.sandbox import PluginSandboxResult
from plugin_health.sandbox.results import CRASHED, MEMORY, TIMEOUT
from plugin_health.store.base import PluginSnapshot, is_healthy, is_stale

if TYPE_CHECKING:
    from plugin_health.service import Service

TRANSITIONS = Counter(
    "plugin_health_transitions", "Lifecycle transitions of every plugin", ["from_state", "to_state", "trigger"]
)
CALLS = Counter(
    "plugin_health_sandbox_calls", "Calls into plugin code through the sandbox, by call and outcome",
    ["call", "outcome"],
)
PLUGIN_FAILED_CALLS = Counter(
    "plugin_health_plugin_failed_calls", "Calls into a plugin's code that did not end ok (from its first one)",
    ["plugin"],
)
CALL_SECONDS = Histogram(
    "plugin_health_sandbox_call_duration_seconds", "Duration of calls into plugin code", ["isolation", "call"],
    buckets=(0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0),
)
REQUESTS = Counter("plugin_health_http_requests", "HTTP requests answered", ["method", "route", "status"])
REQUEST_SECONDS = Histogram(
    "plugin_health_http_request_duration_seconds", "Time to answer an HTTP request", ["route"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0),
)
RUNNERS_LOST = Counter(
    "plugin_health_runners_lost", "Runner processes lost: killed past a deadline or over memory, or died", ["cause"]
)
HOST_STARTS = Counter("plugin_health_host_starts", "Core processes that took the host lock and began hosting plugins")

#: The ``outcome`` label of a sandbox result's ``error_type``; any other error is ``error``.
OUTCOMES = {None: "ok", "PluginTimeoutError": "timeout", "PluginMemoryError": "memory", "PluginCrashedError": "crash"}
LIFECYCLE_CALLS = frozenset({"initialize", "start", "stop", "health_check"})
#: The ``method`` label of an HTTP request; any other method (clients send what they like) is ``other``, so that
#: they cannot make a series each.
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})
#: The ``cause`` label of a lost runner, by the error type it was lost with.
LOSS_CAUSES = {CRASHED: "crash", TIMEOUT: "timeout", MEMORY: "memory"}
for _cause in LOSS_CAUSES.values():
    RUNNERS_LOST.labels(_cause)  # every cause has a series from the start: a first loss is an increase() too
for _call in (*sorted(LIFECYCLE_CALLS), "tool"):
    for _outcome in (*OUTCOMES.values(), "error"):
        CALLS.labels(_call, _outcome)  # 25 series, each an increase() from its first count too
#: A FAILED plugin's reason once no automatic restart is left (``supervision.RESTART_LIMIT_REACHED``, a layer
#: above this one; tests/test_metrics.py checks that they agree).
RESTART_LIMIT_REACHED = "restart limit reached"
#: The UNAVAILABLE reason codes that are their own ``problem`` label; any other is ``unavailable``.
UNAVAILABLE_PROBLEMS = frozenset(reason.value for reason in UnavailableReason)

_M = TypeVar("_M", Counter, Histogram)
#: The labelled series this process has counted into, by metric and label values (``series``).
_kept: dict[tuple[object, tuple[str, ...]], Any] = {}


def series(metric: _M, *labels: str) -> _M:
    """``metric.labels(*labels)``, kept: ``labels()`` checks the values and takes a lock each time (three of them a
    plugin were a tenth of the core's start-up, and a tenth of a cached read's cost). Bounded as the series are
    (states, triggers, calls, outcomes, routes, statuses); the values still go to the same per-process files, so
    every worker's ``/metrics`` sums them as before."""
    key = (metric, labels)
    kept = _kept.get(key)
    if kept is None:
        kept = _kept[key] = metric.labels(*labels)
    return cast(_M, kept)


def transition_labels(record: TransitionRecord) -> tuple[str, str, str]:
    """The labels a transition is counted under: from, to and trigger (from ``""`` for a first state)."""
    return "" if record.source is None else record.source._value_, record.dest._value_, record.trigger


def call_labels(method: str, result: PluginSandboxResult) -> tuple[str, str]:
    """The labels a call is counted under: the lifecycle method, or ``tool`` (tool names are the plugins': not a
    label of their own), and its outcome."""
    return method if method in LIFECYCLE_CALLS else "tool", OUTCOMES.get(result.error_type, "error")


def observe_transition(record: TransitionRecord) -> None:
    """Count one transition (a manager listener)."""
    series(TRANSITIONS, *transition_labels(record)).inc()


def observe_call(plugin: str, method: str, isolation: str, result: PluginSandboxResult) -> None:
    """Count one call into plugin code and its duration (a loader observer)."""
    call, outcome = call_labels(method, result)
    series(CALLS, call, outcome).inc()
    series(CALL_SECONDS, isolation, call).observe(result.duration_ms / 1000.0)
    if outcome != "ok":
        PLUGIN_FAILED_CALLS.labels(plugin).inc()


def observe_many(child: Histogram, amounts: list[float]) -> None:
    """``child.observe(amount)`` for each of ``amounts`` (a labelled histogram's child), in one update of its sum and
    one of each bucket reached: prometheus_client keeps a histogram as a sum and a count per bucket (the first whose
    upper bound is at least the amount; none for NaN), and has no call for many at once, so those are updated here
    (``_sum``, ``_buckets``, ``_upper_bounds``: tests/test_metrics.py holds the result to ``observe``'s)."""
    if not amounts:
        return
    bounds = child._upper_bounds
    reached = Tallies(bisect_left(bounds, amount) for amount in amounts if amount == amount)  # NaN reaches none
    child._sum.inc(sum(amounts))
    for index, count in reached.items():
        child._buckets[index].inc(count)


class Tally:
    """Transitions and calls counted in memory while the core loads, added to the metrics a batch at a time
    (``flush``, with each batch the store takes): a plugin's load made twelve metric updates, each a lock and a write
    to this process's file, a twentieth of the core's start-up. Outside ``defer`` ... ``flush(deferring=False)``,
    each is counted at once, as ``observe_transition`` and ``observe_call`` count it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._deferring = False
        self._transitions: Tallies[tuple[str, str, str]] = Tallies()
        self._calls: Tallies[tuple[str, str]] = Tallies()
        self._failed: Tallies[str] = Tallies()
        self._durations: dict[tuple[str, str], list[float]] = {}

    def defer(self) -> None:
        """Count in memory from now on, until ``flush(deferring=False)``."""
        with self._lock:
            self._deferring = True

    def transition(self, record: TransitionRecord) -> None:
        """Count one transition (a manager listener)."""
        self.transitions((record,))

    def transitions(self, records: Sequence[TransitionRecord]) -> None:
        """Count several transitions, in order (a manager listener's ``many``)."""
        with self._lock:
            if self._deferring:
                for record in records:
                    self._transitions[transition_labels(record)] += 1
                return
        for record in records:
            observe_transition(record)

    def call(self, plugin: str, method: str, isolation: str, result: PluginSandboxResult) -> None:
        """Count one call into plugin code and its duration (a loader observer)."""
        self.calls(plugin, isolation, ((method, result),))

    def calls(self, plugin: str, isolation: str, calls: Sequence[tuple[str, PluginSandboxResult]]) -> None:
        """Count several calls into one plugin, in order (a loader observer's ``many``)."""
        with self._lock:
            if self._deferring:
                for method, result in calls:
                    call, outcome = call_labels(method, result)
                    self._calls[call, outcome] += 1
                    self._durations.setdefault((isolation, call), []).append(result.duration_ms / 1000.0)
                    if outcome != "ok":
                        self._failed[plugin] += 1
                return
        for method, result in calls:
            observe_call(plugin, method, isolation, result)

    def flush(self, deferring: bool = True) -> None:
        """Add what was counted in memory to the metrics; ``deferring=False``: and count each at once from now on."""
        with self._lock:
            transitions, self._transitions = self._transitions, Tallies()
            calls, self._calls = self._calls, Tallies()
            failed, self._failed = self._failed, Tallies()
            durations, self._durations = self._durations, {}
            self._deferring = deferring
        for moved, count in transitions.items():
            series(TRANSITIONS, *moved).inc(count)
        for called, count in calls.items():
            series(CALLS, *called).inc(count)
        for plugin, count in failed.items():
            PLUGIN_FAILED_CALLS.labels(plugin).inc(count)
        for timed, amounts in durations.items():
            observe_many(series(CALL_SECONDS, *timed), amounts)


def observe_runner_lost(error_type: str) -> None:
    """Count one runner process lost with ``error_type`` (the call it was serving, if any, failed with it)."""
    RUNNERS_LOST.labels(LOSS_CAUSES.get(error_type, "crash")).inc()


def observe_host_start() -> None:
    """Count one core process that began hosting the plugins."""
    HOST_STARTS.inc()


def problem(snapshot: PluginSnapshot, now: datetime) -> str | None:
    """What is wrong with a plugin at ``now`` (UTC), as a short code of a bounded set; None when it is healthy.

    ``stale`` or ``check_failed`` (RUNNING), ``restart_limit_reached`` or ``failed``, the UNAVAILABLE reason's
    code (``dependency_missing``, ``disabled``, ``stopped``, ...; ``unavailable`` for another), ``starting``
    (LOADED, INITIALIZED). A singleton on standby here is None: it runs on its owner, which reports it.
    """
    state = snapshot.state
    if snapshot.standby:
        return None
    if state is PluginLifecycleState.RUNNING:
        if is_stale(snapshot, now):
            return "stale"
        return "check_failed" if snapshot.last_check_ok is False else None
    if state is PluginLifecycleState.FAILED:
        return "restart_limit_reached" if snapshot.reason == RESTART_LIMIT_REACHED else "failed"
    if state is PluginLifecycleState.UNAVAILABLE:
        code = (snapshot.reason or "").split(":", 1)[0]
        return code if code in UNAVAILABLE_PROBLEMS else "unavailable"
    return "starting"


class StoreCollector(Collector):
    """What every worker reads from the store when scraped: plugins per state, the unhealthy ones, whether a host
    lives.

    The gauges of the plugins are worked out once per store version, and again when a RUNNING plugin turns stale
    (time alone changes that answer): a scrape that finds neither reads no snapshot (with 10,000 plugins, reading
    and judging them all took 15-25 ms of the scrape). Whether a host lives is read at each scrape.
    """

    def __init__(self, service: Service) -> None:
        self.service = service
        #: The store version the gauges were worked out at, until when they hold (None: until it moves), and them.
        self._cached: tuple[int, datetime | None, list[Metric]] | None = None

    def collect(self) -> Iterator[Metric]:
        """The gauges, fresh."""
        yield from self.work_out()
        host_up = 1 if self.service.host_problem() is None else 0
        yield GaugeMetricFamily("plugin_health_host_up", "1 while a live process hosts the plugins", value=host_up)

    def work_out(self, pause: Callable[[], None] | None = None, step: int = 250) -> list[Metric]:
        """The gauges of the plugins, from the cache if they still hold; worked out again otherwise, with ``pause()``
        after each ``step`` plugins if given (a worker warming while it serves gives way to its requests)."""
        now = datetime.now(UTC)
        version = self.service.store.version()  # before reading: a move during the build makes the next one build
        cached = self._cached
        if cached is None or cached[0] != version or (cached[1] is not None and now >= cached[1]):
            cached = self._cached = (version, *self._plugins(now, pause, step))
        return cached[2]

    def _plugins(self, now: datetime, pause: Callable[[], None] | None = None,
                 step: int = 250) -> tuple[datetime | None, list[Metric]]:
        """The gauges of the plugins at ``now``, and the first moment after it that a RUNNING plugin turns stale."""
        counts = dict.fromkeys(PluginLifecycleState, 0)
        healthy, until = 0, None
        unhealthy = GaugeMetricFamily(
            "plugin_health_plugin_unhealthy", "1 for each plugin that is not healthy (none for a healthy one), by why",
            labels=["plugin", "state", "critical", "problem"],
        )
        for done, snapshot in enumerate(self.service.store.snapshots(), 1):
            if pause is not None and done % step == 0:
                pause()
            if snapshot.standby:  # a singleton another instance runs: UNAVAILABLE here (its owner counts its run)
                counts[PluginLifecycleState.UNAVAILABLE] += 1
                continue
            counts[snapshot.state] += 1
            healthy += is_healthy(snapshot, now)
            stale_after = snapshot.stale_after
            if snapshot.state is PluginLifecycleState.RUNNING and stale_after is not None and now < stale_after:
                until = stale_after if until is None else min(until, stale_after)
            why = problem(snapshot, now)
            if why is not None:
                critical = "true" if snapshot.critical else "false"
                unhealthy.add_metric([snapshot.name, snapshot.state.value, critical, why], 1)
        plugins = GaugeMetricFamily("plugin_health_plugins", "Plugins in each lifecycle state", labels=["state"])
        for state, count in counts.items():
            plugins.add_metric([state.value], count)
        healthy_gauge = GaugeMetricFamily("plugin_health_plugins_healthy", "Plugins RUNNING and passing", value=healthy)
        return until, [plugins, healthy_gauge, unhealthy]


#: Where an app keeps its collector across scrapes, for the collector's cache (``app.extensions``).
COLLECTOR = "plugin_health.metrics"


#: The WSGI environ key of a request a worker makes itself while warming (``api.warm``): never counted.
WARMING = "plugin_health.warming"


def count(method: str, route: str, status: int, seconds: float | None, warming: bool = False) -> None:
    """Count one answered request by method (``other`` for one not in ``HTTP_METHODS``), route (its URL rule) and
    status, and its duration (when known) by route: the same series whichever path answered it. ``warming``: a
    request a worker made itself before taking any (``api.warm``): its series are made (so the first client's
    request finds them), nothing is counted."""
    method = method if method in HTTP_METHODS else "other"
    counter = series(REQUESTS, method, route, str(status))
    if not warming:
        counter.inc()
    if seconds is None:
        return
    histogram = series(REQUEST_SECONDS, route)
    if not warming:
        histogram.observe(seconds)
