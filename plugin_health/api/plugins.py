"""The plugins blueprint: the list, one plugin's health, its history and its diagram."""

from __future__ import annotations

import dataclasses
import json
import time
from collections import Counter
from collections.abc import Hashable, Iterable
from typing import TYPE_CHECKING, Any

from flask import Blueprint, Response, current_app, request

from plugin_health import diagrams
from plugin_health.api import pages
from plugin_health.api.auth import details_visible
from plugin_health.api.cache import Built, ResponseCache, respond
from plugin_health.api.freshness import Horizon, present
from plugin_health.api.problems import Problem
from plugin_health.api.schemas import (
    diagram_query,
    history_entries,
    list_query,
    plugin_health_list,
    plugin_health_response,
)
from plugin_health.errors import UnknownPluginError, public_error_type
from plugin_health.lifecycle import PluginLifecycleState, TransitionRecord
from plugin_health.loader.registry import valid_name
from plugin_health.store import PluginSnapshot, StateStore

if TYPE_CHECKING:
    from plugin_health.service import Service

bp = Blueprint("plugins", __name__, url_prefix="/v1/plugins")

JSON = "application/json"
#: Seconds a singleton's history (merged from every instance) is kept before it is read again.
CLUSTER_HISTORY_LIFETIME = 0.5


def service() -> Service:
    """The running service."""
    value: Service = current_app.extensions["plugin_health"]
    return value


def store() -> StateStore:
    """The store this service reads."""
    value: StateStore = current_app.extensions["plugin_health"].store
    return value


def cache() -> ResponseCache:
    """This worker's answer cache."""
    value: ResponseCache = current_app.extensions["plugin_health"].cache
    return value


def checked_name(name: str) -> str:
    """``name`` if it can be a plugin name, else a 400 problem (before any look-up)."""
    if not valid_name(name):
        raise Problem(400, "a plugin name is 1-100 letters, digits, '_', '-' or '.'", type_="invalid-plugin-name")
    return name


def current(name: str) -> PluginSnapshot:
    """The snapshot of ``name``, or a 404 problem."""
    snapshot = store().snapshot(checked_name(name))
    if snapshot is None:
        raise UnknownPluginError(name)
    return snapshot


def redact(snapshots: Iterable[PluginSnapshot], visible: bool) -> list[PluginSnapshot]:
    """Hide error messages and health checks' outputs from callers who may not see them, and the names of exception
    classes plugins defined (``PluginDefinedError``); state, reason, Python's or plugin-health's own error types,
    and what checks observed (status, value, unit) stay."""
    if visible:
        return list(snapshots)
    return [s if s.error is None and s.check_output is None and public_error_type(s.error_type) == s.error_type
            else dataclasses.replace(s, error=None, check_output=None, error_type=public_error_type(s.error_type))
            for s in snapshots]


#: The entries this worker dumped, by plugin name: for each, the last snapshots (as shown to callers who may see
#: details and to those who may not) and their entries. After a change most plugins are as they were, so only the
#: ones that moved go through the schema again: with 10,000 plugins the 0.33 s marshmallow took a build became
#: 20 ms of look-ups, and every worker builds the list again after every change. Kept by name, not as the last
#: build's, so that a page or a filtered list built in between does not cost the whole list its entries.
_entries: dict[str, dict[PluginSnapshot, dict[str, Any]]] = {}
#: Snapshots kept per name: the plain one and the redacted one.
_KEPT_PER_NAME = 2


def dump_list(snapshots: list[PluginSnapshot], horizon: Horizon | None = None) -> list[dict[str, Any]]:
    """``plugin_health_list.dump(snapshots)`` as true at ``horizon``, reusing the entries dumped before for
    unchanged snapshots (whether one is stale is worked out afresh: time turns it so)."""
    horizon = Horizon() if horizon is None else horizon
    found = [_entries.get(s.name, {}).get(s) for s in snapshots]
    missing = [s for s, entry in zip(snapshots, found, strict=True) if entry is None]
    fresh = dict(zip(missing, plugin_health_list.dump(missing), strict=True))
    for snapshot, entry in fresh.items():
        kept = _entries.setdefault(snapshot.name, {})
        kept[snapshot] = entry
        while len(kept) > _KEPT_PER_NAME:
            del kept[next(iter(kept))]  # the oldest
    return [present(entry or fresh[s], s, horizon) for s, entry in zip(snapshots, found, strict=True)]


def dumps(data: Any) -> bytes:
    """Compact JSON bytes, the same whatever JSON provider the app has (a host app's may sort keys, or refuse
    ``separators``)."""
    return json.dumps(data, separators=(",", ":")).encode()


def list_key(state: PluginLifecycleState | None, limit: int | None, after: str | None, visible: bool) -> Hashable:
    """The cache key of the list (or of one page of it) as a caller who may (or may not) see details gets it."""
    # The whole list keeps the key it always had (and so its ETags); a page is a key of its own.
    return ("list", state, visible) if limit is None and after is None else ("list", state, visible, limit, after)


def build_list(
    source: StateStore, state: PluginLifecycleState | None, limit: int | None, after: str | None, visible: bool,
    path: str,
) -> Built:
    """The list's answer (or one page's, whose links point at ``path``) as it is now in ``source``."""
    snapshots = [s for s in source.snapshots()
                 if (state is None or s.state is state) and (after is None or s.name > after)]
    shown, more = pages.page(snapshots, limit)
    horizon = Horizon()
    body = dumps(dump_list(redact(shown, visible), horizon))
    if not more:
        return body, 200, horizon.until
    assert limit is not None
    last = shown[-1].name
    return body, 200, horizon.until, (
        ("Link", pages.next_link(path, None if state is None else state.value, limit, last)),
        (pages.CONTINUE_HEADER, pages.encode_token(last)))


@bp.get("/")
def list_plugins() -> Response:
    """Every plugin's health, ordered by name; ``?state=FAILED`` filters; ``?limit=N`` pages (the next page's
    token in ``X-Continue`` and ``Link``, given back as ``?continue=``)."""
    query = list_query.load(request.args, unknown="exclude")
    state, limit, after = query["state"], query["limit"], query["after"]
    visible = details_visible()
    path = request.path
    return cache().respond(list_key(state, limit, after, visible),
                           lambda: build_list(store(), state, limit, after, visible, path), JSON, shortcut=True)


@bp.get("/<name>/health")
def plugin_health(name: str) -> Response:
    """One plugin's health: 200 when healthy, 503 when not."""
    checked_name(name)
    visible = details_visible()

    def build() -> Built:
        snapshot = redact([current(name)], visible)[0]
        horizon = Horizon()
        entry = present(plugin_health_response.dump(snapshot), snapshot, horizon)
        return dumps(entry), 200 if entry["healthy"] else 503, horizon.until

    return respond(cache().get(("health", name, visible), build), JSON)


def history_document(
    current_service: Service, snapshot: PluginSnapshot, visible: bool
) -> tuple[list[dict[str, Any]], bool]:
    """A plugin's history entries, oldest first, each naming its instance; and whether other instances' are in it
    (a singleton's history holds every instance's, so that it says where it ran and when it moved)."""
    here, view = current_service.instance, current_service.cluster
    found = [(here, record) for record in current_service.store.history(snapshot.name)]
    merged = snapshot.singleton and view is not None
    if merged:
        assert view is not None
        for info in view.instances():
            if info.id != here:
                found += [(info.id, record) for record in view.history_of(info.id, snapshot.name)]
        found.sort(key=lambda entry: entry[1].at)  # stable: one instance's records keep their order
    return transition_entries(found, visible), merged


def transition_entries(found: Iterable[tuple[str, TransitionRecord]], visible: bool) -> list[dict[str, Any]]:
    """History entries of (instance, record) pairs, each naming its instance; the error message only for a caller
    who may see it, and an exception class a plugin defined as ``PluginDefinedError`` for one who may not."""
    pairs = list(found)
    records = [record for _, record in pairs]
    if not visible:
        records = [dataclasses.replace(r, error=None, error_type=public_error_type(r.error_type)) for r in records]
    entries: list[dict[str, Any]] = history_entries.dump(records)
    for entry, (instance, _) in zip(entries, pairs, strict=True):
        entry["instance"] = instance
    return entries


@bp.get("/<name>/history")
def plugin_history(name: str) -> Response:
    """The recorded transitions of one plugin on this instance, oldest first, each naming the instance; for a
    singleton, its transitions on every instance of the cluster (where it ran, and when it moved)."""
    checked_name(name)
    visible = details_visible()

    def build() -> Built:
        entries, merged = history_document(service(), current(name), visible)
        # Other instances' records move no version here: a merged history is read again after a moment.
        return dumps(entries), 200, time.time() + CLUSTER_HISTORY_LIFETIME if merged else None

    return respond(cache().get(("history", name, visible), build), JSON)


@bp.get("/<name>/diagram")
def plugin_diagram(name: str) -> Response:
    """The lifecycle diagram with this plugin's current state highlighted."""
    checked_name(name)
    fmt = diagram_query.load(request.args, unknown="exclude")["format"]

    def build() -> tuple[bytes, int]:
        snapshot = current(name)
        # Its arrows count the moves its kept history holds (on this instance).
        moves = diagrams.count_moves(Counter((r.source, r.dest) for r in store().history(name)))
        return diagrams.render(fmt, current=snapshot.state, title=name, moves=moves), 200

    return respond(cache().get(("diagram", name, fmt), build), diagrams.MEDIA_TYPES[fmt])
