"""``PluginHost``: the settings, registry, lifecycle and loader of one running service, wired together."""

from __future__ import annotations

import threading

from plugin_health.config import Settings
from plugin_health.lifecycle import PluginLifecycleManager
from plugin_health.loader.loader import LoaderSettings, PluginLoader
from plugin_health.loader.registry import PluginRegistry
from plugin_health.loader.sources import discover
from plugin_health.supervision import SupervisionSettings, Supervisor
from plugin_health.tools import ToolRunner


class PluginHost:
    """Owns every plugin of one service process."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.manager = PluginLifecycleManager(history_limit=settings.history_limit)
        self.registry = PluginRegistry()
        self.loader = PluginLoader(
            self.registry,
            self.manager,
            LoaderSettings(
                default_timeout=settings.default_timeout,
                default_memory_limit_mb=settings.default_memory_limit_mb,
                plugin_config=settings.plugins,
            ),
        )
        self.supervisor = Supervisor(
            self.loader,
            SupervisionSettings(
                failure_threshold=settings.failure_threshold,
                max_restarts=settings.max_restarts,
                restart_window=settings.restart_window,
                backoff_base=settings.backoff_base,
                backoff_max=settings.backoff_max,
                health_interval=settings.health_interval,
            ),
        )
        self.tools = ToolRunner(self.supervisor)
        self._shutdown = threading.Lock()
        self._stopped = False

    def start(self) -> None:
        """Discover and load every plugin (directories, then entry points), then supervise them."""
        self.loader.load(discover(self.settings.plugin_dirs, self.settings.entry_point_group))
        self.supervisor.start()

    def shutdown(self) -> None:
        """Stop every plugin and reap child processes; safe to call twice."""
        with self._shutdown:
            if self._stopped:
                return
            self._stopped = True
        self.supervisor.stop()
        self.loader.shutdown()
