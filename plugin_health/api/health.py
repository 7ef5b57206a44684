"""Service-wide health: the aggregate ``/v1/health`` and the Kubernetes-style probes."""

from __future__ import annotations

import json
from collections.abc import Hashable, Iterable, Sequence
from importlib import metadata
from typing import TYPE_CHECKING, Any

from flask import Blueprint, Response, request

from plugin_health import diagrams
from plugin_health.api.auth import details_visible
from plugin_health.api.cache import Built, Cached
from plugin_health.api.freshness import CHECK_FAILED, CHECK_WARNED, Horizon, degraded, unhealthy
from plugin_health.api.plugins import cache, dumps, redact, service, store
from plugin_health.api.schemas import diagram_query
from plugin_health.lifecycle import PluginLifecycleState
from plugin_health.runtime.core import LOADED_KEY
from plugin_health.store import PluginSnapshot

if TYPE_CHECKING:
    from plugin_health.service import Service

bp = Blueprint("health", __name__)

HEALTH_JSON = "application/health+json"
TEXT = "text/plain; charset=utf-8"
#: The measurement of every plugin's check in the aggregate (``weather:health``): never one of the host's or the
#: store's (``host:heartbeat``, ``store:degraded``), so no plugin's name makes a key that clashes with theirs.
MEASUREMENT = "health"


def _version() -> str:
    try:
        return metadata.version("plugin-health")
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "0+unknown"


#: The version of plugin-health (the aggregate's ``version``).
VERSION = _version()


def plugin_status(snapshot: PluginSnapshot, problem: str | None) -> str:
    """pass for a healthy plugin whose last check passed; warn for a healthy one whose last check warned
    (degraded); otherwise fail if it is critical, warn if not.

    ``problem``: why the plugin is not healthy (``freshness.unhealthy``), None when it is. A singleton on standby
    here passes: it runs on its owner, whose own status counts it.
    """
    if snapshot.standby:
        return "pass"
    if problem is None:
        return "warn" if degraded(snapshot, problem) else "pass"
    return "fail" if snapshot.critical else "warn"


def plugin_check(snapshot: PluginSnapshot, status: str, problem: str | None, visible: bool) -> dict[str, Any]:
    """The ``<name>:health`` check of one plugin: its last health check's reading, and why it is not pass.

    ``output`` (left out for a plain pass, as the draft asks) gives the plugin's state, reason and error type when
    it is not RUNNING, else why it is unhealthy (stale, its last check failed) or degraded; a caller who may see
    details also gets its error message and its last check's output.
    """
    check: dict[str, Any] = {
        "componentId": snapshot.name,
        "componentType": "component",
        "status": status,
        "observedValue": snapshot.observed_value,
        "observedUnit": snapshot.observed_unit,
        "time": (snapshot.since if snapshot.last_check is None else snapshot.last_check).isoformat(),
    }
    output: list[str] = []
    if snapshot.standby:
        output.append(f"standby here, runs on instance {snapshot.owner}")
    if snapshot.state is PluginLifecycleState.RUNNING:
        why = problem if problem is not None else CHECK_WARNED if degraded(snapshot, problem) else None
        if why is not None:
            output.append(why)
        if visible and snapshot.check_output and why in (CHECK_FAILED, CHECK_WARNED):
            output.append(snapshot.check_output)
    else:  # its state, reason and error type say why
        output.extend(part for part in (snapshot.state.value, snapshot.reason, snapshot.error_type) if part)
    if visible and snapshot.error:
        output.append(snapshot.error)
    if output:
        check["output"] = ": ".join(output)
    return check


def aggregate(
    snapshots: Sequence[PluginSnapshot],
    loaded: bool,
    visible: bool,
    host: str | None = None,
    store_problem: str | None = None,
    horizon: Horizon | None = None,
    release: str | None = None,
) -> dict[str, Any]:
    """The IETF health-check document of the service (a pure function of the plugins' snapshots and the time).

    ``host`` is why no live process hosts the plugins (None: one does); then the states are stale and the
    service fails. ``store_problem`` is why the store is degraded: the answers are this process's last known
    states, a warning. ``horizon`` is the clock reading that judges stale plugins (now, if None); it notes until
    when the document holds. ``release`` is the ``releaseId`` (None: the version). Checks are keyed
    ``component:measurement``: ``<plugin>:health``, ``host:heartbeat``, ``store:degraded``.
    """
    horizon = Horizon() if horizon is None else horizon
    problems = [unhealthy(s, horizon) for s in snapshots]
    statuses = [plugin_status(s, problem) for s, problem in zip(snapshots, problems, strict=True)]
    if "fail" in statuses or host is not None:
        status = "fail"
    else:
        status = "warn" if "warn" in statuses or not loaded or store_problem is not None else "pass"
    checks: dict[str, list[dict[str, Any]]] = {}
    if host is not None:
        checks["host:heartbeat"] = [{"componentType": "system", "status": "fail", "output": host}]
    if store_problem is not None:
        checks["store:degraded"] = [{"componentType": "datastore", "status": "warn", "output": store_problem}]
    for snapshot, check_status, problem in zip(snapshots, statuses, problems, strict=True):
        checks[f"{snapshot.name}:{MEASUREMENT}"] = [plugin_check(snapshot, check_status, problem, visible)]
    notes = [] if loaded else ["plugins are still loading"]
    if store_problem is not None:
        notes.append("the store is degraded: these are this process's last known states")
    if host is not None:
        notes.append("no live plugin host: the states shown are the last ones it published")
    return {"status": status, "version": VERSION, "releaseId": release or VERSION, "serviceId": "plugin-health",
            "description": "health of every hosted plugin", "notes": notes, "checks": checks}


@bp.get("/v1/health")
def service_health() -> Response:
    """The aggregate: 200 for pass and warn, 503 for fail."""
    visible = details_visible()
    with store().look():  # the heartbeat, the store's condition, the version (and the loaded flag): one look
        host = service().host_problem()

        def build() -> Built:
            loaded = bool(store().get_meta(LOADED_KEY))
            horizon = Horizon()
            document = aggregate(redact(store().snapshots(), visible), loaded, visible, host, store().degraded(),
                                 horizon, release=service().settings.release_id)
            return dumps(document), 503 if document["status"] == "fail" else 200, horizon.until

        return cache().respond(aggregate_key(visible, host, store().degraded()), build, HEALTH_JSON, shortcut=True)


def aggregate_key(visible: bool, host: str | None, store_problem: str | None) -> Hashable:
    """The cache key of the aggregate as a caller who may (or may not) see details gets it, with the host's and
    the store's problems (read before the key: each makes a document of its own)."""
    return ("aggregate", visible, host is None, store_problem is None)


def probe(
    name: str,
    checks: Iterable[tuple[str, str | None]],
    notes: dict[str, str] | None = None,
    absent: Iterable[str] = (),
) -> Response:
    """A Kubernetes-style probe answer to the current request (its ``?exclude=`` and ``?verbose``): see
    :func:`probe_answer`."""
    body, status = probe_answer(name, checks, notes, absent, set(request.args.getlist("exclude")),
                                "verbose" in request.args)
    return Response(body, status=status, content_type=TEXT)


def probe_answer(
    name: str,
    checks: Iterable[tuple[str, str | None]],
    notes: dict[str, str] | None,
    absent: Iterable[str],
    excluded: set[str],
    verbose: bool,
) -> tuple[str, int]:
    """A Kubernetes-style probe's body and status: ``ok``, or each check as ``[+]name ok`` / ``[-]name failed: why``.

    ``notes`` qualify passing checks (``[+]store ok: degraded, ...``) without failing the probe. ``excluded``
    (``?exclude=``) leaves checks out, by name (``plugin/db`` or ``db``); names that match none are reported as
    Kubernetes does (``warn: some health checks cannot be excluded: no matches for "nosuch"``), without failing
    the probe. ``absent`` names checks of this probe that are not run now (``store`` while the store answers):
    excluding them is no mistake. ``verbose`` lists the checks of a passing probe too.
    """
    unmatched = excluded - set(absent)
    lines, failed = [], False
    for check, problem in checks:
        names = {check, check.removeprefix("plugin/")} & excluded
        if names:
            unmatched -= names
            continue
        failed = failed or problem is not None
        note = (notes or {}).get(check)
        if problem is not None:
            lines.append(f"[-]{check} failed: {problem}")
        else:
            lines.append(f"[+]{check} ok" + (f": {note}" if note else ""))
    if unmatched:
        quoted = ", ".join(json.dumps(check) for check in sorted(unmatched))  # a newline cannot forge a line
        lines.append(f"warn: some health checks cannot be excluded: no matches for {quoted}")
    if failed:
        body = "\n".join([*lines, f"{name} check failed"]) + "\n"
    elif verbose:
        body = "\n".join([*lines, f"{name} check passed"]) + "\n"
    else:
        body = "ok"
    return body, 503 if failed else 200


def _loading(current: Service) -> tuple[str, str | None]:
    return "loading", None if current.store.get_meta(LOADED_KEY) else "plugins are still loading"


def _host(current: Service) -> list[tuple[str, str | None]]:
    """The check of the plugin host, for a process that does not host the plugins itself."""
    if current.host is not None:
        return []
    return [("host", current.host_problem())]


def _critical_checks(current: Service) -> list[tuple[str, str | None]]:
    """The check of each critical plugin, worked out once per store version (and again when one turns stale).

    Probes come often: uncached, they would read the critical plugins' snapshots each time (only theirs:
    ``store.critical_snapshots()``; every snapshot was 150 ms with 10,000 plugins).
    """

    def build() -> Built:
        horizon = Horizon()
        # Probes are anyone's (redacted); a critical singleton on standby here is its owner's to judge.
        critical = redact([s for s in current.store.critical_snapshots() if not s.standby], visible=False)
        checks = [(f"plugin/{s.name}", unhealthy(s, horizon)) for s in critical]
        return dumps(checks), 200, horizon.until

    global _critical_read
    entry = current.cache.get(("critical checks",), build)
    read = _critical_read
    if read is None or read[0] is not entry:  # a new answer: parsed once, not at every probe
        read = _critical_read = (entry, [(check, problem) for check, problem in json.loads(entry.body)])
    return read[1]


#: The last answer of ``_critical_checks`` that was parsed, and its checks (never changed: callers copy them).
_critical_read: tuple[Cached, list[tuple[str, str | None]]] | None = None


def readiness(current: Service) -> tuple[list[tuple[str, str | None]], dict[str, str] | None, tuple[str, ...]]:
    """``/readyz``'s checks, notes and absent checks (see :func:`probe_answer`): loading has finished, every
    critical plugin is RUNNING (and not stale), a live process hosts the plugins; a degraded store is a note.

    Its callers pin one look at the store around it (``store.look()``): it asks the store three times (the
    heartbeat, the loaded flag, the version of the critical checks; four with a Redis-shared store's condition),
    and on SQLite each uncached look is a ``PRAGMA data_version`` of 3 us, of a request that costs 17 us."""
    loading = _loading(current)
    # While loading, readiness fails on that alone: the critical plugins are judged once every one is loaded (worked
    # out at each store version, they cost every worker a read of every snapshot per batch of transitions).
    checks = [*_host(current), loading, *(_critical_checks(current) if loading[1] is None else ())]
    degraded = current.store.degraded()  # still ready: answering from the last known states beats answering nothing
    store_check = [("store", None)] if degraded else []
    notes = {"store": f"degraded: {degraded}"} if degraded else None
    return [*store_check, *checks], notes, ("host", "store")


@bp.get("/livez")
def livez() -> Response:
    """Alive: the process answers. Never depends on plugins."""
    return probe("livez", [("ping", None)])


@bp.get("/readyz")
def readyz() -> Response:
    """Ready: loading has finished and every critical plugin is RUNNING (and not stale)."""
    with store().look():
        return probe("readyz", *readiness(service()))


@bp.get("/startupz")
def startupz() -> Response:
    """Started: loading has finished."""
    current = service()
    with current.store.look():  # the heartbeat and the loaded flag: one look
        return probe("startupz", [*_host(current), _loading(current)], absent=("host",))


@bp.get("/v1/lifecycle/diagram")
def lifecycle_diagram() -> Response:
    """The lifecycle state diagram, with the number of plugins in each state and of transitions on each arrow."""
    fmt = diagram_query.load(request.args, unknown="exclude")["format"]

    def build() -> tuple[bytes, int]:
        counts = dict.fromkeys(PluginLifecycleState, 0)
        for snapshot in store().snapshots():
            counts[snapshot.state] += 1
        # The arrows count the moves in every plugin's kept history (the store's, so every worker agrees).
        moves = diagrams.count_moves(store().transition_counts())
        return diagrams.render(fmt, counts=counts, moves=moves), 200

    return cache().respond(("diagram", fmt), build, diagrams.MEDIA_TYPES[fmt], shortcut=True)


