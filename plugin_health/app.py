"""The Flask application factory: an app of its own that serves only plugin-health, at its root."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flask import Flask

from plugin_health.api.fastpath import FastReads
from plugin_health.config import setting_key
from plugin_health.extension import PluginHealth
from plugin_health.service import EXTENSION, Service

__all__ = ["EXTENSION", "Service", "create_app"]


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """Build the service: settings from ``config`` and the environment, plugins loaded, routes mounted at ``/``.

    ``config`` takes setting names (``plugin_path``) or variable names (``PLUGIN_HEALTH_PLUGIN_PATH``); it becomes
    the app's ``PLUGIN_HEALTH_*`` config, which the extension reads as any host app's. The app hosts the plugins
    itself unless another process already does for the same store (the core process that the gunicorn
    configuration starts, or another app): then it only reads the store.
    """
    app = Flask("plugin_health")
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.config.from_mapping({setting_key(key): value for key, value in (config or {}).items()})
    PluginHealth(app)
    # An app of our own, with no hooks but ours: its cached reads may skip Flask (answered the same, to the byte).
    app.wsgi_app = FastReads(app)  # type: ignore[method-assign]
    return app
