"""The Flask application factory and the service object it carries."""

from __future__ import annotations

import atexit
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from flask import Flask

from plugin_health import api
from plugin_health.api.cache import ResponseCache
from plugin_health.config import Settings, load_settings
from plugin_health.control import Control, LocalControl, RemoteControl, socket_path
from plugin_health.host import PluginHost
from plugin_health.hosting import Heartbeat, HostLock, host_problem, lock_is_free, lock_path, read_beat
from plugin_health.operations import Operations
from plugin_health.store import StateStore, open_store

EXTENSION = "plugin_health"

logger = logging.getLogger(__name__)


@dataclass
class Service:
    """What the views reach through ``current_app.extensions["plugin_health"]``."""

    settings: Settings
    store: StateStore
    cache: ResponseCache
    host: PluginHost | None = None
    control: Control | None = None
    lock: HostLock | None = None
    heartbeat: Heartbeat | None = None

    def host_problem(self) -> str | None:
        """None while a live process hosts the plugins (always, when this one does), else why not."""
        if self.host is not None:
            return None
        beat = read_beat(self.store)
        problem = host_problem(beat, time.time())
        path = lock_path(self.settings)
        if problem is None and beat is not None and path is not None and lock_is_free(path):
            problem = f"the plugin host (pid {beat.pid}) is gone"  # died without a word, its lock with it
        return problem

    def shutdown(self) -> None:
        """Stop the embedded host, if this process runs one; safe to call twice."""
        if self.host is not None:
            self.host.shutdown()
        if self.heartbeat is not None:
            self.heartbeat.stop()
            self.heartbeat = None
        if self.lock is not None:
            self.lock.release()
            self.lock = None


def _hosts_here(settings: Settings) -> HostLock | bool:
    """Whether this process hosts the plugins: True, False, or the lock it took to do so."""
    if settings.host_mode == "embedded" or not settings.shared_store:
        return True
    path = lock_path(settings)
    if settings.host_mode == "external" or path is None:
        return path is None
    lock = HostLock(path)
    # A little patience: readers probe the lock for a moment when they check that the host lives.
    return lock if lock.acquire(timeout=0.2) else False


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """Build the service: settings from ``config`` and the environment, plugins loaded, routes mounted.

    The app hosts the plugins itself unless another process already does for the same store (the host
    process that ``gunicorn.conf.py`` starts, or another app): then it only reads the store.
    """
    settings = load_settings(config)
    store = open_store(settings.store_url, settings.run_dir, settings.history_limit)
    app = Flask("plugin_health")
    app.json.sort_keys = False  # type: ignore[attr-defined]
    service = Service(settings, store, ResponseCache(store))
    hosts = _hosts_here(settings)
    if hosts is not False:
        service.host = PluginHost(settings, store)
        if isinstance(hosts, HostLock):
            service.lock = hosts
            service.heartbeat = Heartbeat(store)
            service.heartbeat.start()
        service.host.start()
        service.control = LocalControl(Operations(service.host))
        atexit.register(service.shutdown)
    else:
        logger.info("plugins are hosted by another process; this one reads the store")
        path = socket_path(settings)
        if path is not None:
            service.control = RemoteControl(path, timeout=settings.default_timeout + 10)
    app.extensions[EXTENSION] = service
    api.init_app(app)
    return app
