"""Operator routes: restart, disable and enable a plugin, and call its tools; all need the bearer token.

An action acts on this instance, or with ``?instance=<id>`` on that one, or with ``?instance=all`` on every live
instance (a ``MultiInstanceResult``). Tool calls run on this instance.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from typing import Any

from flask import Blueprint, Response, current_app, request

from plugin_health.api.auth import details_visible, require_token
from plugin_health.api.cluster import Own, checked_instance, live_instances
from plugin_health.api.plugins import JSON, checked_name, dumps, redact, service
from plugin_health.api.problems import RETRY_AFTER, Problem, problem_response
from plugin_health.api.schemas import plugin_health_response, tool_call, tool_result
from plugin_health.coordination.control import Control, HostUnavailableError
from plugin_health.errors import PluginBusyError, PluginError
from plugin_health.sandbox import PluginSandboxResult
from plugin_health.store import PluginSnapshot
from plugin_health.store.cluster import ALL

bp = Blueprint("operations", __name__, url_prefix="/v1/plugins")

#: The status and problem type of a failed tool call, by the sandbox's ``error_type`` (any other error: 502).
TOOL_FAILURES = {"PluginTimeoutError": (504, "tool-timeout")}
#: The largest request body a tool call may send.
MAX_BODY = 64 * 1024
#: How deeply a tool call's body may nest arrays and objects (the body itself is level 1).
MAX_DEPTH = 64

#: JSON strings, whose brackets do not nest anything (an unterminated one is left alone: the body is not JSON).
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


def control() -> Control:
    """Whoever carries out actions for this service."""
    value = service().control
    if value is None:
        raise HostUnavailableError("no process hosts the plugins of this store")
    return value


def _snapshot(snapshot: PluginSnapshot) -> Response:
    snapshot = redact([snapshot], details_visible())[0]
    return Response(dumps(plugin_health_response.dump(snapshot)), status=200, mimetype=JSON)


def _on_each(action: Callable[[Control], PluginSnapshot]) -> Response:
    """``action`` on every live instance, one after the other: 200 when it succeeded on each, else 207.

    One instance's problem (gone meanwhile, an illegal move there, no answer) is its result, answered as the app
    would answer it alone (its error handlers), and the others still act.
    """
    current = service()
    assert current.cluster is not None  # the app sets it
    targets = live_instances(current.cluster, Own.of(current), time.time())
    if not targets:
        raise HostUnavailableError("no live instance shares this service's store")
    visible = details_visible()
    results: list[dict[str, Any]] = []
    for instance in targets:
        try:
            snapshot = action(current.control_for(instance))
        except PluginError as err:
            answer = current_app.make_response(current_app.handle_user_exception(err))
            results.append({"instance": instance, "status": answer.status_code, "problem": answer.get_json(force=True)})
        else:
            plugin = plugin_health_response.dump(redact([snapshot], visible)[0])
            results.append({"instance": instance, "status": 200, "plugin": plugin})
    status = 200 if all(result["status"] == 200 for result in results) else 207
    return Response(dumps({"results": results}), status=status, mimetype=JSON)  # a MultiInstanceResult


def _act(name: str, action: Callable[[Control], PluginSnapshot]) -> Response:
    """``action`` on ``name`` where ``?instance=`` says: this instance (none given), one instance, or ``all``."""
    require_token()
    instance = checked_instance(request.args.get("instance"))
    if instance is None:
        return _snapshot(action(control()))
    checked_name(name)
    if instance == ALL:
        return _on_each(action)
    return _snapshot(action(service().control_for(instance)))


@bp.post("/<name>/restart")
def restart(name: str) -> Response:
    """Stop it if it runs, ``reset``, ``initialize``, ``start``; clears the restart limit."""
    return _act(name, lambda control: control.restart(checked_name(name)))


@bp.post("/<name>/disable")
def disable(name: str) -> Response:
    """Stop it and keep it UNAVAILABLE ``disabled``, across restarts of the service too."""
    return _act(name, lambda control: control.disable(checked_name(name)))


@bp.post("/<name>/enable")
def enable(name: str) -> Response:
    """``reset`` a FAILED or UNAVAILABLE plugin and start it."""
    return _act(name, lambda control: control.enable(checked_name(name)))


def nesting(raw: bytes) -> int:
    """How deeply the JSON text ``raw`` nests arrays and objects, worked out without parsing it.

    A parser recurses once per level: a body nested 1,000 deep would exhaust Python's recursion limit (an
    unexpected error, a 500) and anything deep enough crosses to the core only to be refused there.
    """
    brackets = _STRING.sub(b"", raw).translate(None, _NOT_BRACKETS)
    level = deepest = 0
    for byte in brackets:
        level += 1 if byte in b"[{" else -1
        deepest = max(deepest, level)
    return deepest


def read_body(limit: int) -> bytes:
    """The request body, or a 413 problem once it passes ``limit`` bytes, at most ``limit + 1`` of them read.

    A chunked body has no Content-Length: the server hands it over as it comes, and reading it whole first would
    hold all of it in memory, however large. Whatever is left unread, the server drains or drops.
    """
    too_large = Problem(413, f"a tool call's body is at most {limit} bytes", type_="body-too-large")
    if request.content_length is not None and request.content_length > limit:
        raise too_large
    stream, parts, size = request.stream, [], 0
    while size <= limit:
        part = stream.read(limit + 1 - size)
        if not part:
            break
        parts.append(part)
        size += len(part)
    if size > limit:
        raise too_large
    return b"".join(parts)


def tool_body() -> dict[str, Any]:
    """The tool call's ``{"args": [...], "kwargs": {...}}``, or a 400 or 413 problem."""
    raw = read_body(MAX_BODY)
    if not raw.strip():
        data: Any = {}
    else:
        depth = nesting(raw)
        if depth > MAX_DEPTH:
            raise Problem(400, f"the body is nested {depth} deep; at most {MAX_DEPTH} levels are taken",
                          type_="invalid-request")
        try:
            data = json.loads(raw)
        except (ValueError, RecursionError) as err:
            raise Problem(400, f"the body is not JSON: {err}", type_="invalid-request") from None
    body: dict[str, Any] = tool_call.load(data)
    return body


def _tool_failure(name: str, tool: str, status: int, slug: str, detail: str, answer: dict[str, Any],
                  **extra: Any) -> Response:
    """A failed tool call: problem+json with the sandbox result's fields as members."""
    return problem_response(status, detail, slug, plugin=name, tool=tool, **extra, **answer)


@bp.post("/<name>/tools/<tool>")
def call_tool(name: str, tool: str) -> Response:
    """Call a RUNNING plugin's tool with ``{"args": [...], "kwargs": {...}}``: the sandbox's result.

    200 with the result as plain JSON; a failure (502, 504) or a refusal for a busy plugin (429) is a problem
    whose members are the result's fields (``error`` per PLUGIN_HEALTH_SHOW_DETAILS).
    """
    require_token()
    checked_name(name)
    checked_name(tool)
    body = tool_body()
    visible = details_visible()
    try:
        # A singleton another instance runs is called there (its owner's core, over Redis).
        result: PluginSandboxResult = service().control_for_plugin(name).run_tool(
            name, tool, body["args"], body["kwargs"])
    except PluginBusyError as err:
        answer = {"ok": False, "result": None, "error": str(err) if visible else None,
                  "error_type": type(err).__name__, "duration_ms": 0.0}
        response = _tool_failure(name, tool, 429, "plugin-busy", str(err), answer, queue_limit=err.queue_limit)
        response.headers["Retry-After"] = RETRY_AFTER
        return response
    answer = tool_result.dump(result)
    if not visible:
        answer["error"] = None
    if result.error_type is None:
        return Response(dumps(answer), status=200, mimetype=JSON)
    status, slug = TOOL_FAILURES.get(result.error_type, (502, "tool-failed"))
    if status == 504:
        detail = f"tool {tool!r} of plugin {name!r} passed its timeout"
    else:
        detail = f"tool {tool!r} of plugin {name!r} failed: {result.error_type}"
    return _tool_failure(name, tool, status, slug, detail, answer)
