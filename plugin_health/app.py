"""The Flask application factory and the service object it carries."""

from __future__ import annotations

import atexit
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from flask import Flask

from plugin_health import api
from plugin_health.api.cache import ResponseCache
from plugin_health.config import Settings, load_settings
from plugin_health.host import PluginHost
from plugin_health.store import StateStore, open_store

EXTENSION = "plugin_health"


@dataclass
class Service:
    """What the views reach through ``current_app.extensions["plugin_health"]``."""

    settings: Settings
    store: StateStore
    cache: ResponseCache
    host: PluginHost | None = None

    def shutdown(self) -> None:
        """Stop the embedded host, if this process runs one."""
        if self.host is not None:
            self.host.shutdown()


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """Build the service: settings from ``config`` and the environment, plugins loaded, routes mounted."""
    settings = load_settings(config)
    store = open_store(settings.store_url, settings.run_dir, settings.history_limit)
    app = Flask("plugin_health")
    app.json.sort_keys = False  # type: ignore[attr-defined]
    service = Service(settings, store, ResponseCache(store))
    service.host = PluginHost(settings, store)
    service.host.start()
    atexit.register(service.shutdown)
    app.extensions[EXTENSION] = service
    api.init_app(app)
    return app
