"""Testing plugins: pytest fixtures, lifecycle assertions and Hypothesis state machines for plugin authors.

The fixtures (``plugin_host``, ``lifecycle_manager``) come with the pytest plugin,
:mod:`plugin_health.testing.pytest_plugin`, which pytest loads by itself once plugin-health is installed. The
names below load on first use, so importing this package costs a test run nothing: the host (and the core) load
with ``PluginHost``, and Hypothesis only with the state machines (``statemachine``, ``hostmachine``).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from plugin_health.testing.assertions import (
        assert_history,
        assert_illegal,
        assert_states,
        drive_to,
        wait_for_state,
    )
    from plugin_health.testing.host import PluginHost, PluginHostFactory, start_host
    from plugin_health.testing.hostmachine import HostStateMachine, host_state_machine, run_host_state_machine
    from plugin_health.testing.statemachine import LifecycleStateMachine, lifecycle_state_machine

#: Where each name lives.
_LAZY = {
    "assert_history": "plugin_health.testing.assertions",
    "assert_illegal": "plugin_health.testing.assertions",
    "assert_states": "plugin_health.testing.assertions",
    "drive_to": "plugin_health.testing.assertions",
    "wait_for_state": "plugin_health.testing.assertions",
    "PluginHost": "plugin_health.testing.host",
    "PluginHostFactory": "plugin_health.testing.host",
    "start_host": "plugin_health.testing.host",
    "HostStateMachine": "plugin_health.testing.hostmachine",
    "host_state_machine": "plugin_health.testing.hostmachine",
    "run_host_state_machine": "plugin_health.testing.hostmachine",
    "LifecycleStateMachine": "plugin_health.testing.statemachine",
    "lifecycle_state_machine": "plugin_health.testing.statemachine",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'plugin_health.testing' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = [
    "HostStateMachine",
    "LifecycleStateMachine",
    "PluginHost",
    "PluginHostFactory",
    "assert_history",
    "assert_illegal",
    "assert_states",
    "drive_to",
    "host_state_machine",
    "lifecycle_state_machine",
    "run_host_state_machine",
    "start_host",
    "wait_for_state",
]
