"""RFC 9457 problem details for every 4xx and 5xx; one table maps our exceptions to HTTP statuses.

No problem ever carries a traceback or a file path: unexpected exceptions are logged here and answered
with a generic 500.
"""

from __future__ import annotations

import json
import logging
from http import HTTPStatus
from typing import Any

from flask import Blueprint, Response
from marshmallow import ValidationError
from werkzeug.exceptions import HTTPException, default_exceptions

from plugin_health.coordination.control import HostTimeoutError, HostUnavailableError
from plugin_health.diagrams import RendererUnavailableError, UnknownFormatError
from plugin_health.errors import (
    DependencyNotReadyError,
    IllegalTransitionError,
    PluginBusyError,
    PluginError,
    PluginNotRunningError,
    ToolArgumentsError,
    UnknownInstanceError,
    UnknownPluginError,
    UnknownToolError,
)

logger = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"
#: Every problem's ``type`` is this base followed by one of the slugs of ``PROBLEM_TYPES`` (the README lists them).
TYPE_BASE = "https://plugin-health.dev/problems/"

#: Every kind of problem the app answers: its slug, and when (the status is the answer's own).
PROBLEM_TYPES: dict[str, str] = {
    "invalid-request": "400: a query parameter or the body is not valid (`errors` says which), not JSON, or "
                       "nested too deep",
    "invalid-plugin-name": "400: a name in the path cannot be a plugin's or a tool's",
    "invalid-instance": "400: `?instance=` is neither an instance id (1-100 letters, digits, `_.:-`) nor `all`",
    "unknown-format": "400: no such diagram format",
    "unauthorized": "401: no or a wrong bearer token",
    "operator-actions-disabled": "403: no PLUGIN_HEALTH_ADMIN_TOKEN is configured",
    "unknown-plugin": "404: no plugin of that name",
    "unknown-tool": "404: the plugin has no tool of that name",
    "not-found": "404: no such route",
    "method-not-allowed": "405: the route does not take that method (`Allow` lists those it takes)",
    "illegal-transition": "409: the lifecycle table refuses that move from the plugin's state",
    "invalid-arguments": "422: a tool call's arguments do not fit the tool's signature (the caller's mistake: "
                         "nothing ran, and nothing is counted against the plugin)",
    "dependency-not-ready": "409: the plugin cannot start: a dependency is missing, refused, on a cycle or not "
                            "RUNNING (`dependency` names it; the plugin stays UNAVAILABLE with `reason`)",
    "body-too-large": "413: a tool call's body is larger than 64 KiB",
    "plugin-busy": "429: too many calls of that plugin wait already (`Retry-After`)",
    "unknown-instance": "404: no live instance of that id shares this service's store",
    "internal-error": "500: an unexpected error, logged and never detailed",
    "renderer-unavailable": "501: that diagram format cannot be drawn here (`available` lists those that can)",
    "tool-failed": "502: the tool raised, crashed, or returned what JSON cannot carry",
    "plugin-not-running": "503: the plugin is not RUNNING",
    "host-unavailable": "503: no plugin host can act now",
    "too-many-streams": "503: this process serves as many `/v1/events` streams as it can (`Retry-After`; poll "
                        "meanwhile)",
    "tool-timeout": "504: the tool passed its timeout",
    "host-timeout": "504: the plugin host took the request but did not answer before the request's deadline",
    "http-error": "any other HTTP error (its status says which)",
}

#: The problem of each of our exceptions: its status and slug (Flask walks each exception's MRO to find a handler).
PROBLEM_OF: dict[type[Exception], tuple[int, str]] = {
    UnknownPluginError: (404, "unknown-plugin"),
    UnknownToolError: (404, "unknown-tool"),
    UnknownInstanceError: (404, "unknown-instance"),
    IllegalTransitionError: (409, "illegal-transition"),
    PluginNotRunningError: (503, "plugin-not-running"),
    PluginBusyError: (429, "plugin-busy"),
    DependencyNotReadyError: (409, "dependency-not-ready"),
    ToolArgumentsError: (422, "invalid-arguments"),
    UnknownFormatError: (400, "unknown-format"),
    RendererUnavailableError: (501, "renderer-unavailable"),
    HostTimeoutError: (504, "host-timeout"),  # before its base class: the first that matches answers
    HostUnavailableError: (503, "host-unavailable"),
}

#: How long a caller refused with 429 should wait: calls of one plugin take turns, one second is a fair wait.
RETRY_AFTER = "1"

#: The slug of a plain HTTP error (routing, methods, werkzeug's own), by status; any other is ``http-error``.
HTTP_TYPES: dict[int, str] = {
    400: "invalid-request", 404: "not-found", 405: "method-not-allowed", 413: "body-too-large",
    500: "internal-error",
}


class Problem(Exception):
    """An HTTP error answered as problem+json; ``type_`` is a slug of ``PROBLEM_TYPES``, ``extra`` members are
    added to the body."""

    def __init__(self, status: int, detail: str, *, type_: str | None = None, **extra: Any) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.type = type_
        self.extra = extra
        self.headers: dict[str, str] = {}


def problem_response(
    status: int, detail: str | None, type_: str | None = None, headers: dict[str, str] | None = None, **extra: Any
) -> Response:
    """A problem+json response of the type ``type_`` (a slug of ``PROBLEM_TYPES``; by default the status's)."""
    slug = type_ or HTTP_TYPES.get(status, "http-error")
    if slug not in PROBLEM_TYPES:
        raise ValueError(f"undocumented problem type {slug!r}")
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Error"
    body = {
        "type": TYPE_BASE + slug,
        "title": phrase,
        "status": status,
        "detail": detail or phrase,
        **extra,
    }
    response = Response(json.dumps(body), status=status, mimetype=PROBLEM_JSON)
    for key, value in (headers or {}).items():
        response.headers[key] = value
    return response


def _from_problem(problem: Problem) -> Response:
    return problem_response(problem.status, problem.detail, problem.type, problem.headers, **problem.extra)


def problem_for_http(error: HTTPException) -> Response:
    """The problem of an HTTP error that werkzeug or a view raised (404 for an unknown route, 405, ...)."""
    status = error.code or 500
    headers = {k: v for k, v in error.get_headers() if k.lower() not in ("content-type", "content-length")}
    detail = error.description if status != 500 else None
    return problem_response(status, detail, headers=headers)


def _from_plugin_error(error: PluginError) -> Response:
    status, slug = next((known for kind, known in PROBLEM_OF.items() if isinstance(error, kind)), (500, ""))
    if status == 500:
        return _unexpected(error)
    extra: dict[str, Any] = {}
    headers: dict[str, str] = {}
    if isinstance(error, IllegalTransitionError):
        extra = {"plugin": error.plugin, "state": error.state, "attempted": error.attempted,
                 "allowed": list(error.allowed)}
    elif isinstance(error, ToolArgumentsError):
        extra = {"plugin": error.plugin, "tool": error.tool}
    elif isinstance(error, DependencyNotReadyError):
        extra = {"plugin": error.plugin, "dependency": error.dependency, "reason": error.reason}
    elif isinstance(error, UnknownPluginError | PluginNotRunningError | UnknownToolError):
        extra = {"plugin": error.plugin}
        if isinstance(error, PluginNotRunningError):
            extra["state"] = error.state
    elif isinstance(error, RendererUnavailableError):
        extra = {"available": list(error.available)}
    elif isinstance(error, ToolArgumentsError):
        extra = {"plugin": error.plugin, "tool": error.tool}
    elif isinstance(error, DependencyNotReadyError):
        extra = {"plugin": error.plugin, "dependency": error.dependency, "reason": error.reason}
    elif isinstance(error, PluginBusyError):
        extra = {"plugin": error.plugin, "queue_limit": error.queue_limit}
        headers = {"Retry-After": RETRY_AFTER}
    return problem_response(status, str(error), slug, headers, **extra)



def _from_validation(error: ValidationError) -> Response:
    return problem_response(400, "the request is not valid", "invalid-request", errors=error.normalized_messages())  # type: ignore[no-untyped-call]


def _unexpected(error: Exception) -> Response:
    logger.exception("unexpected error answering a request", exc_info=error)
    return problem_response(500, "the server failed to answer; the error is logged")


def init_blueprint(bp: Blueprint) -> None:
    """Answer every error raised under ``bp`` (and the blueprints nested in it) as problem+json.

    Blueprint-scoped, so the app's own errors and handlers are left alone. Flask looks a handler up by status code
    before it looks by class, the app's after the blueprint's at each step: ours are registered for every status
    too, so that an app's own ``errorhandler(404)`` does not answer our 404s.
    """
    bp.register_error_handler(Problem, _from_problem)
    bp.register_error_handler(HTTPException, problem_for_http)
    for code in default_exceptions:
        bp.register_error_handler(code, problem_for_http)
    bp.register_error_handler(PluginError, _from_plugin_error)
    bp.register_error_handler(ValidationError, _from_validation)
    bp.register_error_handler(Exception, _unexpected)
