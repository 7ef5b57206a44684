"""``GET /v1/cluster``: every instance sharing the store, and each plugin's state on each, as this one sees them.

An instance's ``status`` and ``ready`` are what its own ``/v1/health`` and ``/readyz`` would answer, worked out
here from its snapshots with the same functions (``aggregate``, ``unhealthy``); a gone instance fails and is not
ready. The document is built by :func:`cluster_document`, which ``flask plugins list --cluster`` shares.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from flask import Blueprint, Response, request

from plugin_health.api.auth import details_visible
from plugin_health.api.cache import Built
from plugin_health.api.freshness import Horizon, degraded, unhealthy
from plugin_health.api.health import aggregate
from plugin_health.api.plugins import JSON, cache, dumps, redact, service
from plugin_health.api.problems import Problem
from plugin_health.errors import UnknownInstanceError
from plugin_health.runtime.core import LOADED_KEY
from plugin_health.store import PluginSnapshot
from plugin_health.store.cluster import ALL, INSTANCE_ID, ClusterView, InstanceInfo

if TYPE_CHECKING:
    from plugin_health.service import Service

bp = Blueprint("cluster", __name__)

#: Seconds a built document is served again: other instances' changes do not move this one's store version, and
#: heartbeat ages move on with time alone, so it is rebuilt at least this often (and at once on a local change).
LIFETIME = 0.5


@dataclass(frozen=True, slots=True)
class Own:
    """How this instance judges itself (what its ``/v1/health`` reads besides its snapshots)."""

    #: Why no live process hosts its plugins (``Service.host_problem``); None: one does.
    host: str | None
    #: Whether loading has finished.
    loaded: bool
    #: Why its store is degraded; None: it is not.
    store: str | None

    @classmethod
    def of(cls, service: Service) -> Own:
        """What ``service`` reads to judge itself."""
        return cls(service.host_problem(), bool(service.store.get_meta(LOADED_KEY)), service.store.degraded())


def checked_instance(text: str | None) -> str | None:
    """``text`` if it can name an instance (or is ``all``), None for no ``?instance``; else a 400 problem."""
    if text is None or text == ALL or INSTANCE_ID.fullmatch(text):
        return text
    raise Problem(400, "an instance id is 1-100 letters, digits, '_', '.', ':' or '-' (or 'all')",
                  type_="invalid-instance")


def why_gone(info: InstanceInfo | None, now: float) -> str | None:
    """Why the instance of heartbeat ``info`` is gone at ``now`` (None: it lives)."""
    if info is None:
        return "it never beat"
    if info.stopped:
        return "it stopped"
    if info.gone(now):
        return f"its last heartbeat is {info.age(now):.1f} s old"
    return None


def live_instances(view: ClusterView, own: Own, now: float) -> list[str]:
    """The ids of the instances that are not gone, ordered: what ``?instance=all`` acts on."""
    infos = {info.id: info for info in view.instances()}
    return [i for i in sorted({*infos, view.instance}) if _gone(view, own, i, infos.get(i), now) is None]


def _gone(view: ClusterView, own: Own, instance: str, info: InstanceInfo | None, now: float) -> str | None:
    """Why ``instance`` is gone, or None. This instance goes by its own host check too (as its ``/v1/health``
    does), and a core that beats nowhere (one in this process, over a store no other process reads) is alive."""
    if instance != view.instance:
        return why_gone(info, now)
    if own.host is not None:
        return own.host
    return None if info is None else why_gone(info, now)


def ready(health: dict[str, Any], loaded: bool) -> bool:
    """What ``/readyz`` would answer, read off the instance's ``aggregate`` document ``health``: loading finished
    and no check failed (a live host, every critical plugin healthy: ``/readyz`` judges as ``/v1/health`` does)."""
    return loaded and all(check["status"] != "fail" for checks in health["checks"].values() for check in checks)


# The document is built as JSON here, not dumped through its schema (``ClusterDocument``): marshmallow took three
# quarters of a build, 0.35 s of 0.47 s for 10,000 plugins on 3 instances. tests/test_cluster_api.py checks that
# what is built is what the schema says.


def _plugin(snapshot: PluginSnapshot, horizon: Horizon) -> dict[str, Any]:
    """One ``ClusterPlugin``, as true at ``horizon``.

    A singleton on standby on an instance is shown there as what it is on that instance (UNAVAILABLE, on standby,
    naming its owner), not as the owner's copy the instance shows in its own answers: the grid says where it runs.
    """
    if snapshot.standby:
        return {"state": "UNAVAILABLE", "healthy": False, "stale": False, "critical": snapshot.critical,
                "reason": snapshot.reason if snapshot.owner is None else f"standby: runs on instance {snapshot.owner}",
                "error_type": None, "check_status": None, "degraded": False,
                "since": snapshot.since.isoformat(), "last_check": None, "owner": snapshot.owner, "standby": True}
    stale = horizon.stale(snapshot)
    problem = unhealthy(snapshot, horizon)
    return {"state": snapshot.state.value, "healthy": problem is None,
            "stale": stale is not None, "critical": snapshot.critical,
            "reason": snapshot.reason if stale is None else stale, "error_type": snapshot.error_type,
            "check_status": snapshot.check_status, "degraded": degraded(snapshot, problem),
            "since": snapshot.since.isoformat(), "last_check": _iso(snapshot.last_check),
            "owner": snapshot.owner, "standby": False}


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()


def _time(epoch: float | None) -> str | None:
    return None if epoch is None else datetime.fromtimestamp(epoch, UTC).isoformat()


def cluster_document(
    view: ClusterView, own: Own, visible: bool, only: str | None = None, horizon: Horizon | None = None
) -> dict[str, Any]:
    """The ``/v1/cluster`` document (``ClusterDocument``): every instance, or only the one named ``only``.

    ``visible``: the caller may see details (error types as they are; error messages are never in it). An
    instance that has plugins but never beat is listed, gone; ``only`` that no instance has is an
    :class:`UnknownInstanceError`.
    """
    horizon = Horizon() if horizon is None else horizon
    now = horizon.now.timestamp()
    grid = view.grid()
    infos = {info.id: info for info in view.instances()}
    ids = sorted({*infos, *grid, view.instance})
    if only is not None:
        if only not in ids:
            raise UnknownInstanceError(only)
        ids = [only]
    instances: list[dict[str, Any]] = []
    names: set[str] = set()
    for instance in ids:
        info = infos.get(instance)
        snapshots = redact(grid.get(instance, []), visible)
        gone = _gone(view, own, instance, info, now)
        mine = instance == view.instance
        loaded, store_problem = (own.loaded, own.store) if mine else (True, None)
        health = aggregate(snapshots, loaded, False, gone, store_problem, horizon)
        names.update(s.name for s in snapshots)
        instances.append({
            "id": instance, "self": mine, "pid": None if info is None else info.pid,
            "started": _time(None if info is None else info.started),
            "heartbeat": _time(None if info is None else info.beat),
            "age": None if info is None else round(info.age(now), 1),
            "gone": gone is not None, "status": health["status"], "ready": ready(health, loaded),
            "plugins": {s.name: _plugin(s, horizon) for s in snapshots},
        })
    return {"instance": view.instance, "degraded": view.degraded(), "plugins": sorted(names), "instances": instances}


@bp.get("/v1/cluster")
def cluster() -> Response:
    """Every instance (heartbeat, status, readiness) and its plugins' states; ``?instance=`` narrows to one."""
    only = checked_instance(request.args.get("instance"))
    only = None if only == ALL else only
    visible = details_visible()
    current = service()

    def build() -> Built:
        horizon = Horizon()
        assert current.cluster is not None  # the app sets it
        document = cluster_document(current.cluster, Own.of(current), visible, only, horizon)
        until = time.time() + LIFETIME
        return dumps(document), 200, until if horizon.until is None else min(until, horizon.until)

    return cache().respond(("cluster", only, visible), build, JSON, shortcut=True)
