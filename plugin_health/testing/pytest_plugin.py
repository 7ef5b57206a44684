"""The pytest plugin of plugin-health (entry point ``pytest11``): fixtures for testing plugins.

Loaded in every test run of an environment where plugin-health is installed, so importing it costs nothing that a
run which does not use it would notice: the fixtures import the host (and with it the core) when a test first
asks for one, and Hypothesis is imported only by :mod:`plugin_health.testing.statemachine`. No Flask app is built.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from plugin_health.lifecycle import PluginLifecycleManager
    from plugin_health.testing.host import PluginHost, PluginHostFactory, Plugins


@pytest.fixture
def plugin_host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PluginHostFactory]:
    """Host plugins in-process as the service does (a real ``Core``, runner processes, a ``MemoryStore``).

    ``plugin_host(plugins, **settings)``: ``plugins`` is a plugin directory or file (a ``Path``), one plugin's
    source, or ``{module: source}``; ``settings`` are the service's, by field name (``health_interval=0.2``,
    ``config={"weather": {...}}``). Returns a started :class:`~plugin_health.testing.PluginHost`; every host the
    test made is shut down when it ends, passed or failed.
    """
    from plugin_health.testing.host import start_host

    # Every host is closed, newest first, even when closing another one raised (which then fails the teardown).
    with contextlib.ExitStack() as hosts:

        def host(plugins: Plugins, /, **settings: Any) -> PluginHost:
            started = start_host(plugins, workdir=tmp_path_factory.mktemp("plugin-host"), **settings)
            hosts.callback(started.close)
            return started

        yield host


@pytest.fixture
def lifecycle_manager() -> PluginLifecycleManager:
    """A bare :class:`~plugin_health.PluginLifecycleManager` (no plugins, no runners): the table alone."""
    from plugin_health.lifecycle.manager import PluginLifecycleManager

    return PluginLifecycleManager()
