"""The sandbox: run plugin code so that nothing it does (raise, hang, allocate, crash) takes the server down.

Inline mode (:class:`Sandbox`, :func:`run_plugin_sandboxed`) runs a function in the server's process;
process mode (:class:`ProcessPlugin`) keeps a plugin in a long-lived child process of its own. Both answer
with a :class:`PluginSandboxResult` and never raise for what the plugin does.
"""

from plugin_health.sandbox.inline import Sandbox, run_plugin_sandboxed
from plugin_health.sandbox.process import ProcessPlugin
from plugin_health.sandbox.results import (
    PluginSandboxResult,
    SandboxLimits,
    UnpicklableArgumentsError,
    UnpicklableResultError,
)
from plugin_health.sandbox.timeouts import SandboxTimeout

__all__ = [
    "PluginSandboxResult",
    "ProcessPlugin",
    "Sandbox",
    "SandboxLimits",
    "SandboxTimeout",
    "UnpicklableArgumentsError",
    "UnpicklableResultError",
    "run_plugin_sandboxed",
]
