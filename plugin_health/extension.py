"""``PluginHealth``: plugin-health as a Flask extension, mounted in any app under a URL prefix.

The Flask way (``PluginHealth(app, url_prefix="/plugins")``, or ``ext = PluginHealth()`` and later
``ext.init_app(app)``): the extension object keeps no app, the app keeps its :class:`Service` in
``app.extensions["plugin_health"]``, and settings come from the app's ``PLUGIN_HEALTH_*`` config, then the
environment, then the defaults. Everything of ours lives under the prefix; the app's other routes, error handlers
and hooks are left as they are. ``create_app`` is this extension mounted at the root of an app of its own.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flask import Flask, current_app

from plugin_health import api, cli
from plugin_health.config import PREFIX, load_settings
from plugin_health.errors import AlreadyInitializedError
from plugin_health.service import EXTENSION, Service, start_service


def normalized_prefix(url_prefix: str | None) -> str:
    """``url_prefix`` as the routes take it: "" for the root, else "/name" (a leading slash and none at the end)."""
    stripped = (url_prefix or "").strip("/")
    return f"/{stripped}" if stripped else ""


def app_settings(config: Mapping[str, Any]) -> dict[str, Any]:
    """The ``PLUGIN_HEALTH_*`` keys of an app's config (a key of another name is the app's business)."""
    return {key: value for key, value in config.items() if key.startswith(PREFIX)}


class PluginHealth:
    """Host plugins and serve their health, API, probes, metrics and dashboard under ``url_prefix`` of an app."""

    def __init__(self, app: Flask | None = None, url_prefix: str | None = None) -> None:
        self.url_prefix = normalized_prefix(url_prefix)
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask, url_prefix: str | None = None) -> Service:
        """Load the settings, mount the routes and start hosting (or reading) the plugins for ``app``.

        ``url_prefix`` overrides the one given to the constructor. A bad setting raises ``ConfigError`` naming it
        before anything is mounted; a second call on the same app raises ``AlreadyInitializedError``.
        """
        if EXTENSION in app.extensions:
            raise AlreadyInitializedError(app.name)
        prefix = self.url_prefix if url_prefix is None else normalized_prefix(url_prefix)
        settings = load_settings(app_settings(app.config))
        api.init_app(app, prefix)
        if cli.plugins.name not in app.cli.commands:  # an app's own command of that name stays
            app.cli.add_command(cli.plugins)
        service = start_service(settings)
        service.url_prefix = prefix
        app.extensions[EXTENSION] = service
        return service

    @staticmethod
    def service(app: Flask | None = None) -> Service:
        """The service of ``app`` (default: the current app)."""
        value: Service = (app or current_app).extensions[EXTENSION]
        return value

    def shutdown(self, app: Flask | None = None) -> None:
        """Stop the plugins ``app`` (default: the current app) hosts and release its store, lock and connections;
        safe to call twice. It also runs at the interpreter's exit."""
        self.service(app).shutdown()
