"""``/openapi.json``: the OpenAPI document, generated from the marshmallow schemas with apispec."""

from __future__ import annotations

from functools import cache
from typing import Any

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from flask import Blueprint, Response, jsonify

from plugin_health import diagrams
from plugin_health.api.schemas import AggregateHealth, HistoryEntry, PluginHealthResponse, ProblemDetails

bp = Blueprint("openapi", __name__)

NAME = {
    "name": "name",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": "^[A-Za-z0-9_.-]{1,100}$"},
}
FORMAT = {"name": "format", "in": "query", "schema": {"type": "string", "enum": list(diagrams.FORMATS)}}
PROBE_PARAMS = [
    {"name": "verbose", "in": "query", "allowEmptyValue": True, "schema": {"type": "string"}},
    {"name": "exclude", "in": "query", "schema": {"type": "array", "items": {"type": "string"}}, "explode": True},
]


def _problem(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/problem+json": {"schema": "ProblemDetails"}}}


def _json(description: str, schema: Any, media: str = "application/json") -> dict[str, Any]:
    return {"description": description, "content": {media: {"schema": schema}}}


def _diagram(description: str) -> dict[str, Any]:
    content = {media.split(";")[0]: {"schema": {"type": "string"}} for media in diagrams.MEDIA_TYPES.values()}
    return {"description": description, "content": content}


def _text(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"text/plain": {"schema": {"type": "string"}}}}


@cache
def document() -> dict[str, Any]:
    """The OpenAPI 3 document of the read routes (built once)."""
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
    ):
        spec.components.schema(name, schema=schema)
    health = "PluginHealthResponse"
    bad = _problem("invalid input")
    unknown = _problem("no such plugin")
    spec.path("/v1/plugins/", operations={"get": {
        "summary": "Every plugin's health, ordered by name",
        "parameters": [{"name": "state", "in": "query", "schema": {"type": "string", "enum": [
            "LOADED", "INITIALIZED", "RUNNING", "FAILED", "UNAVAILABLE"]}}],
        "responses": {"200": _json("plugins", {"type": "array", "items": health}), "400": bad},
    }})
    spec.path("/v1/plugins/{name}/health", operations={"get": {
        "summary": "One plugin's health", "parameters": [NAME],
        "responses": {"200": _json("healthy", health), "503": _json("not healthy", health), "400": bad,
                      "404": unknown},
    }})
    spec.path("/v1/plugins/{name}/history", operations={"get": {
        "summary": "One plugin's recorded transitions, oldest first", "parameters": [NAME],
        "responses": {"200": _json("history", {"type": "array", "items": "HistoryEntry"}), "400": bad,
                      "404": unknown},
    }})
    spec.path("/v1/plugins/{name}/diagram", operations={"get": {
        "summary": "The lifecycle diagram with this plugin's state highlighted", "parameters": [NAME, FORMAT],
        "responses": {"200": _diagram("the diagram"), "400": bad, "404": unknown,
                      "501": _problem("no renderer for that format here")},
    }})
    spec.path("/v1/lifecycle/diagram", operations={"get": {
        "summary": "The lifecycle state diagram", "parameters": [FORMAT],
        "responses": {"200": _diagram("the diagram"), "400": bad, "501": _problem("no renderer for that format")},
    }})
    spec.path("/v1/health", operations={"get": {
        "summary": "Aggregate health (IETF health-check draft)",
        "responses": {"200": _json("pass or warn", "AggregateHealth", "application/health+json"),
                      "503": _json("fail", "AggregateHealth", "application/health+json")},
    }})
    for probe, summary in (("livez", "alive"), ("readyz", "ready for traffic"), ("startupz", "loading finished")):
        spec.path(f"/{probe}", operations={"get": {
            "summary": f"Kubernetes-style probe: {summary}", "parameters": PROBE_PARAMS,
            "responses": {"200": _text("ok"), "503": _text("failed checks")},
        }})
    return spec.to_dict()


@bp.get("/openapi.json")
def openapi_json() -> Response:
    """The OpenAPI document."""
    return jsonify(document())
