"""Handles: one way to call a loaded plugin's methods, whether it lives in this process or in a child."""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Protocol

from plugin_health.plugin import Plugin
from plugin_health.sandbox import PluginSandboxResult, ProcessPlugin, Sandbox, SandboxLimits


class PluginHandle(Protocol):
    """Calls a method of a loaded plugin through the sandbox."""

    limits: SandboxLimits

    def call(
        self,
        method: str,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
        timeout: float | None = None,
    ) -> PluginSandboxResult:
        """Run ``plugin.<method>(*args, **kwargs)`` with the plugin's limits; never raises for the plugin."""
        ...

    def close(self) -> None:
        """Release what the handle holds (a child process)."""
        ...


class InlineHandle:
    """A plugin instance in this process, called through the inline sandbox."""

    def __init__(self, instance: Plugin, limits: SandboxLimits) -> None:
        self.instance = instance
        self.limits = limits
        self._sandbox = Sandbox(limits)

    def call(
        self,
        method: str,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
        timeout: float | None = None,
    ) -> PluginSandboxResult:
        """Run the method inline with the plugin's limits (``timeout`` overrides the plugin's)."""
        sandbox = self._sandbox if timeout is None else Sandbox(replace(self.limits, timeout=timeout))
        return sandbox.run(getattr(self.instance, method), *args, **(kwargs or {}))

    def close(self) -> None:
        """Nothing to release for an inline plugin."""


class ProcessHandle:
    """A plugin living in a child process of its own."""

    def __init__(self, process: ProcessPlugin, limits: SandboxLimits) -> None:
        self.process = process
        self.limits = limits

    def call(
        self,
        method: str,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
        timeout: float | None = None,
    ) -> PluginSandboxResult:
        """Run the method in the child; a crash or timeout gets the child respawned."""
        return self.process.call(method, args, kwargs, timeout)

    def close(self) -> None:
        """Kill and reap the child."""
        self.process.close()
