"""The HTTP API: blueprints, marshmallow schemas, problem+json errors, probes, diagrams and OpenAPI."""

from __future__ import annotations

from urllib.parse import urlsplit

from flask import Blueprint, Flask, Response, request
from werkzeug.exceptions import HTTPException
from werkzeug.routing import RequestRedirect

from plugin_health.api import cluster, dashboard, events, health, openapi, operations, plugins, problems, scrape

#: The name of the blueprint that holds every route of ours (their endpoints are ``plugin_health.<bp>.<view>``).
NAME = "plugin_health"


def relative_redirect(redirect: RequestRedirect) -> Response:
    """Answer werkzeug's own redirects (``/v1/plugins`` to ``/v1/plugins/``) with a relative ``Location``.

    Werkzeug builds an absolute URL from the request's ``Host`` header, which any client sets as it likes: echoed
    back, it would point a cache or a careless client anywhere. The path and query alone say the same, and never
    as a scheme-relative ``//host`` either.
    """
    target = urlsplit(redirect.new_url)
    location = "/" + target.path.lstrip("/") + (f"?{target.query}" if target.query else "")
    response = Response(status=redirect.code)
    response.headers["Location"] = location
    return response


def routing_answer() -> Response | None:
    """The answer to a request that matched none of the app's routes (404, 405, or a redirect to add a slash).

    Flask would hand such an error to the app's handlers, not a blueprint's (no blueprint matched): so the paths
    under our prefix are answered here, before any view, and the app's own unknown paths are left to the app.
    """
    error = request.routing_exception
    if isinstance(error, RequestRedirect):
        return relative_redirect(error)
    if isinstance(error, HTTPException):
        return problems.problem_for_http(error)
    return None


def under(prefix: str, path: str) -> bool:
    """Whether ``path`` lies under ``prefix`` ("" is the app's root: every path does)."""
    return not prefix or path == prefix or path.startswith(prefix + "/")


def blueprint() -> Blueprint:
    """Every route of ours on one new blueprint, whose errors are all answered as problem+json."""
    bp = Blueprint(NAME, __name__)
    problems.init_blueprint(bp)
    for child in (plugins.bp, operations.bp, health.bp, cluster.bp, events.bp, openapi.bp, scrape.bp,
                  dashboard.bp):
        bp.register_blueprint(child)
    return bp


def init_app(app: Flask, url_prefix: str = "") -> None:
    """Mount every route under ``url_prefix`` ("" or "/prefix"), count their requests and answer their errors as
    problem+json, unknown paths under the prefix included; the rest of ``app`` is left as it is."""

    def before() -> Response | None:
        if not under(url_prefix, request.path):
            return None
        scrape.started()
        return routing_answer()

    def after(response: Response) -> Response:
        return scrape.answered(response) if under(url_prefix, request.path) else response

    app.register_blueprint(blueprint(), url_prefix=url_prefix)
    app.before_request(before)
    app.after_request(after)
