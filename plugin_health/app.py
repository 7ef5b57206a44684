"""The Flask application factory."""

from __future__ import annotations

import atexit
from collections.abc import Mapping
from typing import Any

from flask import Flask, jsonify

from plugin_health.config import load_settings
from plugin_health.host import PluginHost

EXTENSION = "plugin_health"


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """Build the service: settings from ``config`` and the environment, plugins loaded, routes mounted."""
    settings = load_settings(config)
    app = Flask("plugin_health")
    host = PluginHost(settings)
    host.start()
    atexit.register(host.shutdown)
    app.extensions[EXTENSION] = host

    @app.get("/v1/plugins/")
    def list_plugins() -> Any:
        """Every plugin with its state (the Health API issue replaces this with the full blueprint)."""
        items = []
        for name, state in host.manager.all_states().items():
            last = host.manager.last(name)
            entry = host.registry.get(name) if name in host.registry else None
            items.append(
                {
                    "name": name,
                    "version": str(entry.spec.version) if entry else None,
                    "state": state.value,
                    "reason": last.reason,
                    "error_type": last.error_type,
                    "since": last.at.isoformat(),
                }
            )
        return jsonify(items)

    return app
