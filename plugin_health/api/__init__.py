"""The HTTP API: blueprints, marshmallow schemas, problem+json errors, probes, diagrams and OpenAPI."""

from __future__ import annotations

from urllib.parse import urlsplit

from flask import Flask, Response, request
from werkzeug.routing import RequestRedirect

from plugin_health import metrics
from plugin_health.api import cluster, dashboard, health, openapi, operations, plugins, problems


def relative_redirect() -> Response | None:
    """Answer werkzeug's own redirects (``/v1/plugins`` to ``/v1/plugins/``) with a relative ``Location``.

    Werkzeug builds an absolute URL from the request's ``Host`` header, which any client sets as it likes: echoed
    back, it would point a cache or a careless client anywhere. The path and query alone say the same, and never
    as a scheme-relative ``//host`` either.
    """
    redirect = request.routing_exception
    if not isinstance(redirect, RequestRedirect):
        return None
    target = urlsplit(redirect.new_url)
    location = "/" + target.path.lstrip("/") + (f"?{target.query}" if target.query else "")
    response = Response(status=redirect.code)
    response.headers["Location"] = location
    return response


def init_app(app: Flask) -> None:
    """Mount every blueprint and answer every error as problem+json."""
    problems.init_app(app)
    metrics.init_app(app)
    app.before_request(relative_redirect)
    app.register_blueprint(plugins.bp)
    app.register_blueprint(operations.bp)
    app.register_blueprint(health.bp)
    app.register_blueprint(cluster.bp)
    app.register_blueprint(openapi.bp)
    app.register_blueprint(dashboard.bp)
