"""plugin-health: host plugins with error isolation and serve their health over HTTP."""

from plugin_health.app import create_app
from plugin_health.errors import (
    DuplicatePluginError,
    IllegalTransitionError,
    PluginError,
    UnknownPluginError,
)
from plugin_health.lifecycle import PluginLifecycleManager, PluginLifecycleState, TransitionRecord
from plugin_health.plugin import Plugin, PluginContext, tool

__all__ = [
    "DuplicatePluginError",
    "IllegalTransitionError",
    "Plugin",
    "PluginContext",
    "PluginError",
    "PluginLifecycleManager",
    "PluginLifecycleState",
    "TransitionRecord",
    "UnknownPluginError",
    "create_app",
    "tool",
]
