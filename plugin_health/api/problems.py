"""RFC 9457 problem details for every 4xx and 5xx; one table maps our exceptions to HTTP statuses.

No problem ever carries a traceback or a file path: unexpected exceptions are logged here and answered
with a generic 500.
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

from flask import Flask, Response, json
from marshmallow import ValidationError
from werkzeug.exceptions import HTTPException

from plugin_health.coordination.control import HostUnavailableError
from plugin_health.diagrams import RendererUnavailableError, UnknownFormatError
from plugin_health.errors import (
    IllegalTransitionError,
    PluginBusyError,
    PluginError,
    PluginNotRunningError,
    UnknownPluginError,
    UnknownToolError,
)

logger = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"
TYPE_BASE = "https://plugin-health.dev/problems/"

#: The one table of HTTP statuses for our exceptions (Flask walks each exception's MRO to find a handler).
STATUS_OF: dict[type[Exception], int] = {
    UnknownPluginError: 404,
    UnknownToolError: 404,
    IllegalTransitionError: 409,
    PluginNotRunningError: 503,
    PluginBusyError: 429,
    UnknownFormatError: 400,
    RendererUnavailableError: 501,
    HostUnavailableError: 503,
}


class Problem(Exception):
    """An HTTP error answered as problem+json; ``extra`` members are added to the body."""

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
    """A problem+json response."""
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Error"
    body = {
        "type": TYPE_BASE + (type_ or phrase.lower().replace(" ", "-")),
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


def _from_http(error: HTTPException) -> Response:
    status = error.code or 500
    headers = {k: v for k, v in error.get_headers() if k.lower() not in ("content-type", "content-length")}
    detail = error.description if status != 500 else None
    return problem_response(status, detail, headers=headers)


def _from_plugin_error(error: PluginError) -> Response:
    status = next((code for kind, code in STATUS_OF.items() if isinstance(error, kind)), 500)
    if status == 500:
        return _unexpected(error)
    extra: dict[str, Any] = {}
    if isinstance(error, IllegalTransitionError):
        extra = {"plugin": error.plugin, "state": error.state, "attempted": error.attempted,
                 "allowed": list(error.allowed)}
    elif isinstance(error, UnknownPluginError | PluginNotRunningError | UnknownToolError):
        extra = {"plugin": error.plugin}
        if isinstance(error, PluginNotRunningError):
            extra["state"] = error.state
    elif isinstance(error, RendererUnavailableError):
        extra = {"available": list(error.available)}
    elif isinstance(error, PluginBusyError):
        extra = {"plugin": error.plugin, "queue_limit": error.queue_limit}
        response = problem_response(status, str(error), type(error).__name__, **extra)
        response.headers["Retry-After"] = "1"  # calls of one plugin take turns: one second is a fair wait
        return response
    return problem_response(status, str(error), type(error).__name__, **extra)


def _from_validation(error: ValidationError) -> Response:
    return problem_response(400, "the request is not valid", "invalid-request", errors=error.normalized_messages())  # type: ignore[no-untyped-call]


def _unexpected(error: Exception) -> Response:
    logger.exception("unexpected error answering a request", exc_info=error)
    return problem_response(500, "the server failed to answer; the error is logged")


def init_app(app: Flask) -> None:
    """Answer every error of ``app`` as problem+json."""
    app.register_error_handler(Problem, _from_problem)
    app.register_error_handler(HTTPException, _from_http)
    app.register_error_handler(PluginError, _from_plugin_error)
    app.register_error_handler(ValidationError, _from_validation)
    app.register_error_handler(Exception, _unexpected)
