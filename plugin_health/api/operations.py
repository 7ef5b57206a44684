"""Operator routes: restart, disable and enable a plugin, and call its tools; all need the bearer token."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from flask import Blueprint, Response, request

from plugin_health.api.auth import details_visible, require_token
from plugin_health.api.plugins import JSON, checked_name, dumps, service
from plugin_health.api.problems import Problem
from plugin_health.api.schemas import plugin_health_response, tool_call, tool_result
from plugin_health.coordination.control import Control, HostUnavailableError
from plugin_health.sandbox import PluginSandboxResult
from plugin_health.store import PluginSnapshot

bp = Blueprint("operations", __name__, url_prefix="/v1/plugins")

#: The status of a tool call's answer, by the sandbox's ``error_type`` (any other error: 502).
TOOL_STATUS = {None: 200, "PluginTimeoutError": 504}
#: The largest request body a tool call may send.
MAX_BODY = 64 * 1024


def control() -> Control:
    """Whoever carries out actions for this service."""
    value = service().control
    if value is None:
        raise HostUnavailableError("no process hosts the plugins of this store")
    return value


def _snapshot(snapshot: PluginSnapshot) -> Response:
    if not details_visible():
        snapshot = dataclasses.replace(snapshot, error=None)
    return Response(dumps(plugin_health_response.dump(snapshot)), status=200, mimetype=JSON)


@bp.post("/<name>/restart")
def restart(name: str) -> Response:
    """Stop it if it runs, ``reset``, ``initialize``, ``start``; clears the restart limit."""
    require_token()
    return _snapshot(control().restart(checked_name(name)))


@bp.post("/<name>/disable")
def disable(name: str) -> Response:
    """Stop it and keep it UNAVAILABLE ``disabled``, across restarts of the service too."""
    require_token()
    return _snapshot(control().disable(checked_name(name)))


@bp.post("/<name>/enable")
def enable(name: str) -> Response:
    """``reset`` a FAILED or UNAVAILABLE plugin and start it."""
    require_token()
    return _snapshot(control().enable(checked_name(name)))


@bp.post("/<name>/tools/<tool>")
def call_tool(name: str, tool: str) -> Response:
    """Call a RUNNING plugin's tool with ``{"args": [...], "kwargs": {...}}``; the sandbox's result."""
    require_token()
    checked_name(name)
    checked_name(tool)
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise Problem(413, f"a tool call's body is at most {MAX_BODY} bytes", type_="body-too-large")
    raw = request.get_data(cache=False)
    if len(raw) > MAX_BODY:
        raise Problem(413, f"a tool call's body is at most {MAX_BODY} bytes", type_="body-too-large")
    try:
        data = json.loads(raw) if raw.strip() else {}
    except ValueError as err:
        raise Problem(400, f"the body is not JSON: {err}", type_="invalid-request") from None
    body: dict[str, Any] = tool_call.load(data)
    result: PluginSandboxResult = control().run_tool(name, tool, body["args"], body["kwargs"])
    status = TOOL_STATUS.get(result.error_type, 502)
    answer = tool_result.dump(result)
    if not details_visible():
        answer["error"] = None
    return Response(dumps(answer), status=status, mimetype=JSON)
