"""plugin-health: host plugins with error isolation and serve their health over HTTP.

Importing the package gives a plugin author what a plugin needs (``Plugin``, ``tool``, ``PluginContext``,
``HealthResult``, the lifecycle states and the errors) and nothing heavier: a runner that imports plugins never
loads Flask, Redis, apispec or prometheus_client. The service's names (``create_app``, the Flask extension
``PluginHealth``, ``PluginLifecycleManager``, the sandbox, the loader) load on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from plugin_health.errors import (
    DuplicatePluginError,
    IllegalTransitionError,
    InvalidHealthResultError,
    PluginError,
    UnknownPluginError,
)
from plugin_health.health import HealthResult
from plugin_health.lifecycle.states import PluginLifecycleState
from plugin_health.plugin import Plugin, PluginContext, tool

if TYPE_CHECKING:
    from plugin_health.api.schemas import PluginHealthResponse
    from plugin_health.app import create_app
    from plugin_health.extension import PluginHealth
    from plugin_health.lifecycle.manager import PluginLifecycleManager
    from plugin_health.lifecycle.records import TransitionRecord
    from plugin_health.loader.loader import PluginLoader
    from plugin_health.loader.registry import PluginRegistry
    from plugin_health.sandbox import PluginSandboxResult, Sandbox, SandboxLimits, run_plugin_sandboxed
    from plugin_health.tools import ToolRunner

#: Where each name that loads on first use lives.
_LAZY = {
    "PluginHealthResponse": "plugin_health.api.schemas",
    "create_app": "plugin_health.app",
    "PluginHealth": "plugin_health.extension",
    "PluginLifecycleManager": "plugin_health.lifecycle.manager",
    "TransitionRecord": "plugin_health.lifecycle.records",
    "PluginLoader": "plugin_health.loader.loader",
    "PluginRegistry": "plugin_health.loader.registry",
    "PluginSandboxResult": "plugin_health.sandbox",
    "Sandbox": "plugin_health.sandbox",
    "SandboxLimits": "plugin_health.sandbox",
    "run_plugin_sandboxed": "plugin_health.sandbox",
    "ToolRunner": "plugin_health.tools",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'plugin_health' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = [
    "DuplicatePluginError",
    "HealthResult",
    "IllegalTransitionError",
    "InvalidHealthResultError",
    "Plugin",
    "PluginContext",
    "PluginError",
    "PluginHealth",
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
