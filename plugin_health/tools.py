"""``ToolRunner``: call a RUNNING plugin's ``@tool`` methods through the sandbox, and feed the outcome back."""

from __future__ import annotations

from typing import Any

from plugin_health.errors import PluginNotRunningError, ToolArgumentsError, UnknownToolError
from plugin_health.lifecycle import PluginLifecycleState
from plugin_health.sandbox import PluginSandboxResult
from plugin_health.supervision import Supervisor


class ToolRunner:
    """Runs tools with each plugin's limits; crashes and repeated failures move the plugin (DESIGN.md 5-6)."""

    def __init__(self, supervisor: Supervisor) -> None:
        self.supervisor = supervisor
        self.registry = supervisor.loader.registry
        self.manager = supervisor.manager

    def tools(self, plugin: str) -> tuple[str, ...]:
        """The tool names of ``plugin``; ``UnknownPluginError`` if there is no such plugin."""
        if plugin not in self.registry:
            self.manager.state_of(plugin)  # raises UnknownPluginError for a name nobody knows
            return ()
        return self.registry.get(plugin).spec.tools

    def run(self, plugin: str, tool: str, /, *args: Any, give_up_at: float | None = None,
            **kwargs: Any) -> PluginSandboxResult:
        """Call ``plugin.tool(*args, **kwargs)``.

        Raises ``UnknownPluginError``, ``UnknownToolError`` or ``PluginNotRunningError``; anything the plugin
        does comes back in the result.
        """
        if tool not in self.tools(plugin):
            raise UnknownToolError(plugin, tool)
        state = self.manager.state_of(plugin)
        if state is not PluginLifecycleState.RUNNING:
            raise PluginNotRunningError(plugin, state.value)
        result = self.supervisor.loader.call(plugin, tool, args, kwargs, give_up_at=give_up_at)
        if result.refused:  # the caller's mistake: nothing ran, and it counts against nobody
            raise ToolArgumentsError(plugin, tool, result.error or "the arguments do not fit the tool")
        self.supervisor.record_outcome(plugin, result, f"tool {tool}")
        return result
