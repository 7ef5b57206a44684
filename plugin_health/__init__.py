"""plugin-health: host plugins with error isolation and serve their health over HTTP."""

from plugin_health.api.schemas import PluginHealthResponse
from plugin_health.app import create_app
from plugin_health.errors import (
    DuplicatePluginError,
    IllegalTransitionError,
    PluginError,
    UnknownPluginError,
)
from plugin_health.lifecycle import PluginLifecycleManager, PluginLifecycleState, TransitionRecord
from plugin_health.loader.loader import PluginLoader
from plugin_health.loader.registry import PluginRegistry
from plugin_health.plugin import Plugin, PluginContext, tool
from plugin_health.sandbox import PluginSandboxResult, Sandbox, SandboxLimits, run_plugin_sandboxed
from plugin_health.tools import ToolRunner

__all__ = [
    "DuplicatePluginError",
    "IllegalTransitionError",
    "Plugin",
    "PluginContext",
    "PluginError",
    "PluginHealthResponse",
    "PluginLifecycleManager",
    "PluginLifecycleState",
    "PluginLoader",
    "PluginRegistry",
    "PluginSandboxResult",
    "Sandbox",
    "SandboxLimits",
    "ToolRunner",
    "TransitionRecord",
    "UnknownPluginError",
    "create_app",
    "run_plugin_sandboxed",
    "tool",
]
