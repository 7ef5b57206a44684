"""``/openapi.json``: the OpenAPI document, generated from the marshmallow schemas with apispec."""

from __future__ import annotations

from functools import cache
from typing import Any

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from flask import Blueprint, Response, jsonify

from plugin_health import diagrams
from plugin_health.api.schemas import (
    AggregateHealth,
    HistoryEntry,
    PluginHealthResponse,
    ProblemDetails,
    ToolCall,
    ToolResult,
)

bp = Blueprint("openapi", __name__)

NAME = {
    "name": "name",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": "^[A-Za-z0-9_.-]{1,100}$"},
}
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
ETAG = {"ETag": {"description": "strong validator of this answer", "required": True, "schema": {"type": "string"}}}


def _problem(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/problem+json": {"schema": "ProblemDetails"}}}


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
                    "responses": {**responses, "500": _problem("unexpected error; the details are only logged")}}}


def _cached(summary: str, parameters: list[dict[str, Any]], responses: dict[str, Any]) -> dict[str, Any]:
    """A GET operation answered from the per-version cache: ETag on each answer, 304 for ``If-None-Match``."""
    answers = {status: {**answer, "headers": ETAG} if status in ("200", "503") else answer
               for status, answer in responses.items()}
    answers["304"] = {"description": "not modified: the ETag given is still current", "headers": ETAG}
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
                                 "responses": {**refusals, **responses}}
    if body is not None:
        operation["requestBody"] = body
    return {"post": operation}


def _operations(spec: APISpec) -> None:
    """The operator routes: restart, disable, enable, tool calls."""
    after = _json("the plugin after the action", "PluginHealthResponse")
    for action, summary in (
        ("restart", "Stop it if it runs, reset, initialize, start; clears the restart limit"),
        ("disable", "Stop it and keep it UNAVAILABLE (disabled), across restarts of the service"),
        ("enable", "Reset a FAILED or UNAVAILABLE plugin and start it"),
    ):
        spec.path(f"/v1/plugins/{{name}}/{action}", operations=_operator(summary, [NAME], {
            "200": after, "409": _problem("not a legal move from the plugin's state (state and allowed given)"),
            "503": _problem("no plugin host can act now")}))
    body = {"required": False, "content": {"application/json": {"schema": "ToolCall"}}}
    spec.path("/v1/plugins/{name}/tools/{tool}", operations=_operator("Call a RUNNING plugin's tool", [NAME, TOOL], {
        "200": _json("the tool's result", "ToolResult"),
        "413": _problem("the body is too large"),
        "502": _json("the tool raised, crashed or returned what JSON cannot carry", "ToolResult"),
        "503": _problem("the plugin is not RUNNING, or no plugin host can act now"),
        "504": _json("the tool passed its timeout", "ToolResult"),
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
    )
    for name, schema in (
        ("PluginHealthResponse", PluginHealthResponse),
        ("HistoryEntry", HistoryEntry),
        ("AggregateHealth", AggregateHealth),
        ("ProblemDetails", ProblemDetails),
        ("ToolCall", ToolCall),
        ("ToolResult", ToolResult),
    ):
        spec.components.schema(name, schema=schema)
    spec.components.security_scheme("bearer", {"type": "http", "scheme": "bearer",
                                               "description": "PLUGIN_HEALTH_ADMIN_TOKEN"})
    health = "PluginHealthResponse"
    state = {"name": "state", "in": "query", "schema": {"type": "string", "enum": [
        "LOADED", "INITIALIZED", "RUNNING", "FAILED", "UNAVAILABLE"]}}
    spec.path("/v1/plugins/", operations=_cached("Every plugin's health, ordered by name", [state], {
        "200": _json("plugins", {"type": "array", "items": health}), "400": _problem("invalid input")}))
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
    for probe, summary in (("livez", "alive"), ("readyz", "ready for traffic"), ("startupz", "loading finished")):
        spec.path(f"/{probe}", operations=_operation(f"Kubernetes-style probe: {summary}", PROBE_PARAMS, {
            "200": _text("ok"), "503": _text("failed checks")}))
    spec.path("/metrics", operations=_operation("Prometheus metrics (text exposition format)", [], {
        "200": _text("the metrics")}))
    _operations(spec)
    return spec.to_dict()


@bp.get("/openapi.json")
def openapi_json() -> Response:
    """The OpenAPI document."""
    return jsonify(document())
