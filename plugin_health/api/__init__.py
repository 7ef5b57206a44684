"""The HTTP API: blueprints, marshmallow schemas, problem+json errors, probes, diagrams and OpenAPI."""

from __future__ import annotations

from flask import Flask

from plugin_health import metrics
from plugin_health.api import dashboard, health, openapi, operations, plugins, problems


def init_app(app: Flask) -> None:
    """Mount every blueprint and answer every error as problem+json."""
    problems.init_app(app)
    metrics.init_app(app)
    app.register_blueprint(plugins.bp)
    app.register_blueprint(operations.bp)
    app.register_blueprint(health.bp)
    app.register_blueprint(openapi.bp)
    app.register_blueprint(dashboard.bp)
