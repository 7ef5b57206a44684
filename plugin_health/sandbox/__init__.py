"""The sandbox: run plugin code so that nothing it does (raise, hang, allocate, crash) takes the server down.

:class:`Sandbox` and :func:`run_plugin_sandboxed` run a function in the calling process, guarded by signals on the
main thread (the runners of the service run every plugin call that way) and by a watchdog thread elsewhere. They
answer with a :class:`PluginSandboxResult` and never raise for what the plugin does.
"""

from plugin_health.sandbox.inline import Sandbox, run_plugin_sandboxed
from plugin_health.sandbox.results import (
    PluginSandboxResult,
    SandboxLimits,
    UnpicklableArgumentsError,
    UnpicklableResultError,
)
from plugin_health.sandbox.timeouts import SandboxTimeout

__all__ = [
    "PluginSandboxResult",
    "Sandbox",
    "SandboxLimits",
    "SandboxTimeout",
    "UnpicklableArgumentsError",
    "UnpicklableResultError",
    "run_plugin_sandboxed",
]
