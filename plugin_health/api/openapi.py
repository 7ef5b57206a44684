"""``/openapi.json``: the OpenAPI document, generated from the marshmallow schemas with apispec."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from functools import cache, lru_cache
from typing import Any

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from flask import Blueprint, Response, request

from plugin_health import diagrams
from plugin_health.api.pages import MAX_LIMIT, TOKEN_PATTERN
from plugin_health.api.plugins import service
from plugin_health.api.schemas import (
    STATE_NAMES,
    AggregateHealth,
    ClusterDocument,
    HistoryEntry,
    MultiInstanceResult,
    PluginHealthResponse,
    ProblemDetails,
    ToolCall,
    ToolFailure,
    ToolResult,
)

bp = Blueprint("openapi", __name__)

#: ``?state=``: a state's name in any case (ECMA regular expressions have no flag for it in a pattern).
STATE_PATTERN = "^(" + "|".join(
    "".join(f"[{c.upper()}{c.lower()}]" if c.isalpha() else re.escape(c) for c in name) for name in STATE_NAMES
) + ")$"

NAME = {
    "name": "name",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": "^[A-Za-z0-9_.-]{1,100}$"},
}
#: ``?instance=``: an instance id, or ``all`` (which is one too, as far as the pattern goes).
INSTANCE_PATTERN = "^[A-Za-z0-9_.:-]{1,100}$"
FORMAT = {"name": "format", "in": "query", "schema": {"type": "string", "enum": list(diagrams.FORMATS)}}
# Probes never refuse a query (as Kubernetes' own): any value of ``verbose`` turns it on.
PROBE_PARAMS = [
    {"name": "verbose", "in": "query", "allowEmptyValue": True, "schema": {"type": "string"},
     "description": "list each check; only its presence matters"},
    {"name": "exclude", "in": "query", "schema": {"type": "array", "items": {"type": "string"}}, "explode": True,
     "description": "checks to skip, by name (``core`` or ``plugin/core``)"},
]
IF_NONE_MATCH = {
    "name": "If-None-Match",
    "in": "header",
    "schema": {"type": "string"},
    "description": "the ETag of an answer already held: 304 while it is still current",
}
ETAG = {"ETag": {"description": "strong validator of this answer (one per encoding: the gzip one differs)",
                 "required": True, "schema": {"type": "string"}}}
#: Every cached answer may be gzip-compressed (Accept-Encoding: gzip, 1 KiB or more), so each says it varies.
ENCODED = {
    "Vary": {"description": "Accept-Encoding: the answer is gzip-compressed for a client that accepts it",
             "required": True, "schema": {"type": "string", "enum": ["Accept-Encoding"]}},
    "Content-Encoding": {"description": "gzip when the client sent Accept-Encoding: gzip (or *) and the answer is "
                                        "1 KiB or more; absent otherwise", "schema": {"type": "string",
                                                                                   "enum": ["gzip"]}},
}
#: The list's page headers: present when more plugins follow the page.
PAGE_HEADERS = {
    "Link": {"description": 'RFC 8288: <...?limit=N&continue=TOKEN>; rel="next", the next page (with ?state= '
                            "if given); absent on the last page", "schema": {"type": "string"}},
    "X-Continue": {"description": "the next page's continue token (opaque), absent on the last page",
                   "schema": {"type": "string", "pattern": TOKEN_PATTERN}},
}


#: One event of ``/v1/events`` (before OpenAPI 3.2, a text/event-stream's schema describes each event).
SSE_EVENT = {"type": "object", "required": ["event", "id", "data"], "properties": {
    "event": {"type": "string", "enum": ["transition"]},
    "id": {"type": "string", "pattern": "^[0-9]{1,19}$",
           "description": "the transition's sequence number in this instance's store (send it back as "
                          "Last-Event-ID to resume)"},
    "data": {"type": "string", "description": "its history entry as JSON (HistoryEntry), naming its instance"},
    "retry": {"type": "integer", "description": "milliseconds to wait before reconnecting"}}}


def _problem(description: str, schema: str = "ProblemDetails") -> dict[str, Any]:
    return {"description": description, "content": {"application/problem+json": {"schema": schema}}}


def _server(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"text/html": {"schema": {"type": "string"}}}}


#: What gunicorn answers itself, before the app sees a request, on any route (limits set in serving/gunicorn_conf.py).
SERVER_LIMITS = {
    "414": _server("URI too long: the request line is longer than gunicorn's limit_request_line (4094 bytes); "
                   "answered by gunicorn itself, before the app sees the request, not as a problem"),
    "431": _server("request header fields too large: more than gunicorn's limit_request_fields (50), or one "
                   "longer than its limit_request_field_size (8190 bytes); answered by gunicorn itself, before "
                   "the app sees the request, not as a problem"),
}
RETRY_AFTER = {"Retry-After": {"description": "seconds to wait before calling again", "required": True,
                               "schema": {"type": "integer", "minimum": 0}}}


def _json(description: str, schema: Any, media: str = "application/json") -> dict[str, Any]:
    return {"description": description, "content": {media: {"schema": schema}}}


def _diagram(description: str) -> dict[str, Any]:
    content = {media.split(";")[0]: {"schema": {"type": "string"}} for media in diagrams.MEDIA_TYPES.values()}
    return {"description": description, "content": content}


def _text(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"text/plain": {"schema": {"type": "string"}}}}


def _operation(summary: str, parameters: list[dict[str, Any]], responses: dict[str, Any]) -> dict[str, Any]:
    """A GET operation; any of them may answer an unexpected error with a bare 500 problem."""
    return {"get": {"summary": summary, "parameters": parameters,
                    "responses": {**responses, "500": _problem("unexpected error; the details are only logged"),
                                  **SERVER_LIMITS}}}


def _cached(summary: str, parameters: list[dict[str, Any]], responses: dict[str, Any]) -> dict[str, Any]:
    """A GET operation answered from the per-version cache: ETag on each answer, 304 for ``If-None-Match``."""
    answers = {status: {**answer, "headers": {**ETAG, **ENCODED, **answer.get("headers", {})}}
               if status in ("200", "503") else answer for status, answer in responses.items()}
    answers["304"] = {"description": "not modified: the ETag given is still current",
                      "headers": {**ETAG, "Vary": ENCODED["Vary"]}}
    return _operation(summary, [*parameters, IF_NONE_MATCH], answers)


TOOL = {"name": "tool", "in": "path", "required": True,
        "schema": {"type": "string", "pattern": "^[A-Za-z0-9_.-]{1,100}$"}}
BEARER: list[dict[str, list[str]]] = [{"bearer": []}]


def _operator(summary: str, parameters: list[dict[str, Any]], responses: dict[str, Any],
              body: dict[str, Any] | None = None) -> dict[str, Any]:
    """A POST operation of an operator: the bearer token, and the refusals every one of them may answer."""
    refusals = {
        "400": _problem("invalid name or body"),
        "401": _problem("no or wrong bearer token"),
        "403": _problem("operator actions are disabled: no PLUGIN_HEALTH_ADMIN_TOKEN configured"),
        "404": _problem("no such plugin (or tool)"),
        "500": _problem("unexpected error; the details are only logged"),
    }
    operation: dict[str, Any] = {"summary": summary, "parameters": parameters, "security": BEARER,
                                 "responses": {**refusals, **responses, **SERVER_LIMITS}}
    if body is not None:
        operation["requestBody"] = body
    return {"post": operation}


def _operations(spec: APISpec) -> None:
    """The operator routes: restart, disable, enable, tool calls."""
    instance = {"name": "instance", "in": "query", "schema": {"type": "string", "pattern": INSTANCE_PATTERN},
                "description": "the instance to act on (default: the one answering), or all: every live instance, "
                               "each answering its own result"}
    after = _json("the plugin after the action; with ?instance=all, every instance's result (each succeeded)",
                  {"oneOf": ["PluginHealthResponse", "MultiInstanceResult"]})
    for action, summary in (
        ("restart", "Stop it if it runs, reset, initialize, start; clears the restart limit"),
        ("disable", "Stop it and keep it UNAVAILABLE (disabled), across restarts of the service"),
        ("enable", "Reset a FAILED or UNAVAILABLE plugin and start it"),
    ):
        spec.path(f"/v1/plugins/{{name}}/{action}", operations=_operator(summary, [NAME, instance], {
            "200": after,
            "207": _json("?instance=all: the action failed on some instance (each result says how)",
                         "MultiInstanceResult"),
            "400": _problem("invalid name, or an ?instance= that is neither an instance id nor all"),
            "404": _problem("no such plugin, or no such instance"),
            "409": _problem("not a legal move from the plugin's state (state and allowed given)"),
            "503": _problem("no plugin host can act now (with ?instance=all: no live instance)"),
            "504": _problem("the plugin host took the action but did not answer in time (host-timeout)")}))
    body = {"required": False, "content": {"application/json": {"schema": "ToolCall"}}}
    spec.path("/v1/plugins/{name}/tools/{tool}", operations=_operator("Call a RUNNING plugin's tool", [NAME, TOOL], {
        "200": _json("the tool's result", "ToolResult"),
        "400": _problem("invalid name, or a body that is not a valid call (not JSON, nested more than 64 deep)"),
        "413": _problem("the body is larger than 64 KiB (a chunked one is refused once it passes that)"),
        "429": {**_problem("too many calls of this plugin wait already (plugin-busy); try again after "
                           "Retry-After seconds", "ToolFailure"), "headers": RETRY_AFTER},
        "502": _problem("the tool raised, crashed or returned what JSON cannot carry (tool-failed)", "ToolFailure"),
        "503": _problem("the plugin is not RUNNING, or no plugin host can act now"),
        "504": _problem("the tool passed its timeout (tool-timeout), or the plugin host did not answer before the "
                        "call's deadline (host-timeout)", "ToolFailure"),
    }, body))


@cache
def document() -> dict[str, Any]:
    """The OpenAPI 3 document of every route (built once)."""
    spec = APISpec(
        title="plugin-health",
        version="1",
        openapi_version="3.0.3",
        plugins=[MarshmallowPlugin()],
        info={"description": "Health, lifecycle and history of hosted plugins."},
        servers=[{"url": "/", "description": "where this document is served (its path prefix, if any)"}],
    )
    for name, schema in (
        ("PluginHealthResponse", PluginHealthResponse),
        ("HistoryEntry", HistoryEntry),
        ("AggregateHealth", AggregateHealth),
        ("ProblemDetails", ProblemDetails),
        ("ToolCall", ToolCall),
        ("ToolResult", ToolResult),
        ("ToolFailure", ToolFailure),
        ("ClusterDocument", ClusterDocument),
        ("MultiInstanceResult", MultiInstanceResult),
    ):
        spec.components.schema(name, schema=schema)
    spec.components.security_scheme("bearer", {"type": "http", "scheme": "bearer",
                                               "description": "PLUGIN_HEALTH_ADMIN_TOKEN"})
    health = "PluginHealthResponse"
    state = {"name": "state", "in": "query", "description": f"only plugins in this state: {', '.join(STATE_NAMES)}, "
             "in any case", "schema": {"type": "string", "pattern": STATE_PATTERN}}
    limit = {"name": "limit", "in": "query", "description": f"a page: at most this many plugins (1-{MAX_LIMIT}); "
             "without it, every plugin", "schema": {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT}}
    after = {"name": "continue", "in": "query", "description": "the next page: the X-Continue (or the Link's "
             "continue) of the page before, as given (opaque); pages are cut by name, so a plugin added meanwhile "
             "shows if it sorts after the cursor", "schema": {"type": "string", "pattern": TOKEN_PATTERN}}
    spec.path("/v1/plugins/", operations=_cached("Every plugin's health, ordered by name", [state, limit, after], {
        "200": {**_json("plugins (a page of them with ?limit=)", {"type": "array", "items": health}),
                "headers": PAGE_HEADERS},
        "400": _problem("invalid input: an unknown state, a limit outside 1-1000, a continue that is no token")}))
    spec.path("/v1/plugins/{name}/health", operations=_cached("One plugin's health", [NAME], {
        "200": _json("healthy", health), "503": _json("not healthy", health), "400": _problem("invalid name"),
        "404": _problem("no such plugin")}))
    spec.path("/v1/plugins/{name}/history", operations=_cached(
        "One plugin's recorded transitions, oldest first", [NAME], {
            "200": _json("history", {"type": "array", "items": "HistoryEntry"}), "400": _problem("invalid name"),
            "404": _problem("no such plugin")}))
    spec.path("/v1/plugins/{name}/diagram", operations=_cached(
        "The lifecycle diagram with this plugin's state highlighted", [NAME, FORMAT], {
            "200": _diagram("the diagram"), "400": _problem("invalid name or format"),
            "404": _problem("no such plugin"), "501": _problem("no renderer for that format here")}))
    spec.path("/v1/lifecycle/diagram", operations=_cached("The lifecycle state diagram", [FORMAT], {
        "200": _diagram("the diagram"), "400": _problem("invalid format"),
        "501": _problem("no renderer for that format here")}))
    spec.path("/v1/health", operations=_cached("Aggregate health (IETF health-check draft)", [], {
        "200": _json("pass or warn", "AggregateHealth", "application/health+json"),
        "503": _json("fail", "AggregateHealth", "application/health+json")}))
    only = {"name": "instance", "in": "query", "schema": {"type": "string", "pattern": INSTANCE_PATTERN},
            "description": "only this instance (all: every one)"}
    spec.path("/v1/cluster", operations=_cached(
        "Every instance sharing the store (heartbeat, status, readiness) and each plugin's state on each", [only], {
            "200": _json("the cluster as this instance sees it", "ClusterDocument"),
            "400": _problem("an ?instance= that is neither an instance id nor all"),
            "404": _problem("no such instance")}))
    spec.path("/v1/events", operations=_operation(
        "This instance's transitions as they happen (server-sent events), resumable with Last-Event-ID", [{
            "name": "Last-Event-ID", "in": "header", "schema": {"type": "string", "pattern": "^[0-9]{0,18}$"},
            "description": "the id of the last event seen: the stream starts with every transition since that the "
                           "store still keeps (none: with the next one)"}], {
            "200": {"description": "a text/event-stream: an event per transition; heartbeat comments while idle; "
                                   "it ends after its lifetime (PLUGIN_HEALTH_EVENTS_LIFETIME) and the client "
                                   "reconnects",
                    "content": {"text/event-stream": {"schema": SSE_EVENT}}},
            "400": _problem("a Last-Event-ID that is no event id"),
            "503": {**_problem("this process serves as many streams as it can (too-many-streams)"),
                    "headers": RETRY_AFTER}}))
    for probe, summary in (("livez", "alive"), ("readyz", "ready for traffic"), ("startupz", "loading finished")):
        spec.path(f"/{probe}", operations=_operation(f"Kubernetes-style probe: {summary}", PROBE_PARAMS, {
            "200": _text("ok"), "503": _text("failed checks")}))
    spec.path("/metrics", operations=_operation("Prometheus metrics (text exposition format)", [], {
        "200": _text("the metrics")}))
    spec.path("/openapi.json", operations=_operation("This OpenAPI document", [IF_NONE_MATCH], {
        "200": {**_json("the document", {"type": "object"}), "headers": ETAG},
        "304": {"description": "not modified: the ETag given is still current", "headers": ETAG}}))
    _operations(spec)
    return spec.to_dict()


@dataclass(frozen=True, slots=True)
class Served:
    """The document as served under one path prefix: its bytes and strong ETag."""

    body: bytes
    etag: str


@lru_cache(maxsize=8)
def served(prefix: str) -> Served:
    """The document whose server is ``prefix`` (where the routes are mounted: the app's ``SCRIPT_NAME`` and the
    extension's ``url_prefix``; ``/`` at the root), as JSON bytes."""
    data = {**document(), "servers": [{**document()["servers"][0], "url": prefix or "/"}]}
    body = json.dumps(data, separators=(",", ":")).encode()
    return Served(body, hashlib.blake2b(body, digest_size=12).hexdigest())


@bp.get("/openapi.json")
def openapi_json() -> Response:
    """The OpenAPI document, with its ETag (304 when ``If-None-Match`` holds it)."""
    found = served(request.script_root + service().url_prefix)
    response = Response(found.body, mimetype="application/json")
    response.set_etag(found.etag)
    response.headers["Cache-Control"] = "no-cache"
    response.make_conditional(request)  # in place: 304 and no body when If-None-Match holds the ETag (weakly)
    return response
