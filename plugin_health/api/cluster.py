"""``GET /v1/cluster``: every instance sharing the store, and each plugin's state on each, as this one sees them.

An instance's ``status`` and ``ready`` are what its own ``/v1/health`` and ``/readyz`` would answer, worked out
here from its snapshots with the same functions (``aggregate``, ``unhealthy``); a gone instance fails and is not
ready. The document is built by :func:`cluster_document`, which ``flask plugins list --cluster`` shares.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from flask import Blueprint, Response, request

from plugin_health.api.auth import details_visible
from plugin_health.api.cache import Built
from plugin_health.api.freshness import Horizon, degraded, unhealthy
from plugin_health.api.health import aggregate
from plugin_health.api.plugins import JSON, cache, redact, service
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


@dataclass(frozen=True, slots=True)
class _Part:
    """One instance's plugins as the document shows them, judged at a horizon, and until when that holds."""

    #: What it was judged from: the instance's snapshots as the view gave them, and the instance's own condition.
    source: list[PluginSnapshot]
    condition: tuple[bool, bool, str | None, str | None]
    #: The epoch second the judgement stops being true (a plugin turns stale, a stated age moves on); None: never.
    until: float | None
    plugins: dict[str, Any]
    #: ``plugins`` as JSON: the document's bytes are put together from it, not dumped again.
    plugins_json: str
    status: str
    ready: bool

    def holds(self, source: list[PluginSnapshot], condition: tuple[bool, bool, str | None, str | None],
              now: float) -> bool:
        return condition == self.condition and (self.until is None or now < self.until) and source == self.source


#: The parts this worker built last, by (instance, visible). With 10,000 plugins a part is 0.2 s of work and the
#: document changes at every heartbeat (its ``heartbeat`` and ``age``), so without them every poll of an open
#: dashboard paid it again; now a poll pays for reading the snapshots and comparing them with the last ones.
_parts: dict[tuple[str, bool], _Part] = {}


def _part(instance: str, source: list[PluginSnapshot], visible: bool, loaded: bool, gone: str | None,
          store_problem: str | None, horizon: Horizon) -> _Part:
    condition = (visible, loaded, gone, store_problem)
    known = _parts.get((instance, visible))
    if known is not None and known.holds(source, condition, horizon.now.timestamp()):
        if known.until is not None:
            horizon.keep(known.until)
        return known
    judged = Horizon(horizon.now)
    snapshots = redact(source, visible)
    health = aggregate(snapshots, loaded, False, gone, store_problem, judged)
    plugins = {s.name: _plugin(s, judged) for s in snapshots}
    part = _Part(source, condition, judged.until, plugins, json.dumps(plugins, separators=(",", ":")),
                 health["status"], ready(health, loaded))
    _parts[instance, visible] = part
    if judged.until is not None:
        horizon.keep(judged.until)
    return part


def _document(
    view: ClusterView, own: Own, visible: bool, only: str | None, horizon: Horizon
) -> tuple[dict[str, Any], list[tuple[dict[str, Any], _Part]]]:
    """The document's head (without ``instances``) and, for each instance, its head and its plugins' part."""
    now = horizon.now.timestamp()
    grid = view.grid()
    infos = {info.id: info for info in view.instances()}
    ids = sorted({*infos, *grid, view.instance})
    if only is not None:
        if only not in ids:
            raise UnknownInstanceError(only)
        ids = [only]
    instances: list[tuple[dict[str, Any], _Part]] = []
    names: set[str] = set()
    for instance in ids:
        info = infos.get(instance)
        source = grid.get(instance, [])
        gone = _gone(view, own, instance, info, now)
        mine = instance == view.instance
        loaded, store_problem = (own.loaded, own.store) if mine else (True, None)
        part = _part(instance, source, visible, loaded, gone, store_problem, horizon)
        names.update(part.plugins)
        instances.append(({
            "id": instance, "self": mine, "pid": None if info is None else info.pid,
            "started": _time(None if info is None else info.started),
            "heartbeat": _time(None if info is None else info.beat),
            "age": None if info is None else round(info.age(now), 1),
            "gone": gone is not None, "status": part.status, "ready": part.ready,
        }, part))
    return {"instance": view.instance, "degraded": view.degraded(), "plugins": sorted(names)}, instances


def cluster_document(
    view: ClusterView, own: Own, visible: bool, only: str | None = None, horizon: Horizon | None = None
) -> dict[str, Any]:
    """The ``/v1/cluster`` document (``ClusterDocument``): every instance, or only the one named ``only``.

    ``visible``: the caller may see details (error types as they are; error messages are never in it). An
    instance that has plugins but never beat is listed, gone; ``only`` that no instance has is an
    :class:`UnknownInstanceError`.
    """
    head, instances = _document(view, own, visible, only, Horizon() if horizon is None else horizon)
    return {**head, "instances": [{**instance, "plugins": part.plugins} for instance, part in instances]}


def cluster_body(view: ClusterView, own: Own, visible: bool, only: str | None, horizon: Horizon) -> bytes:
    """:func:`cluster_document` as compact JSON, put together from each instance's ``plugins`` already dumped."""
    head, instances = _document(view, own, visible, only, horizon)

    def opened(document: dict[str, Any]) -> str:  # its JSON without the closing brace, ready for one more key
        return json.dumps(document, separators=(",", ":"))[:-1]

    rows = ",".join(f'{opened(instance)},"plugins":{part.plugins_json}}}' for instance, part in instances)
    return f'{opened(head)},"instances":[{rows}]}}'.encode()


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
        body = cluster_body(current.cluster, Own.of(current), visible, only, horizon)
        until = time.time() + LIFETIME
        return body, 200, until if horizon.until is None else min(until, horizon.until)

    return cache().respond(("cluster", only, visible), build, JSON, shortcut=True)
