"""Handles: one way to call a loaded plugin's methods, whether it lives in this process or in a runner.

A :class:`Placement` puts plugins somewhere else than this process (the runtime's pool of runner processes); the
loader only knows it through this protocol, so the loader never depends on the runtime above it.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any, Protocol

from plugin_health.loader.sources import PluginSource
from plugin_health.plugin import LIFECYCLE_METHODS, Plugin
from plugin_health.sandbox import PluginSandboxResult, Sandbox, SandboxLimits


class PluginHandle(Protocol):
    """Calls a method of a loaded plugin through the sandbox."""

    limits: SandboxLimits

    def call(
        self,
        method: str,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
        timeout: float | None = None,
        give_up_at: float | None = None,
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
        give_up_at: float | None = None,
    ) -> PluginSandboxResult:
        """Run the method inline with the plugin's limits (``timeout`` overrides the plugin's)."""
        sandbox = self._sandbox if timeout is None else Sandbox(replace(self.limits, timeout=timeout))
        fn = getattr(self.instance, method)
        if method not in LIFECYCLE_METHODS:  # a tool: arguments that do not fit it are the caller's mistake
            try:
                inspect.signature(fn).bind(*args, **(kwargs or {}))
            except TypeError as exc:
                return PluginSandboxResult(False, None, str(exc), "ToolArgumentsError", 0.0, refused=True)
        return sandbox.run(fn, *args, **(kwargs or {}))

    def close(self) -> None:
        """Nothing to release for an inline plugin."""


class PlacedHandle(PluginHandle, Protocol):
    """A plugin placed outside this process."""

    name: str
    #: True once its instance is gone (its runner was lost): it must be loaded again before it runs.
    lost: bool

    @property
    def isolation(self) -> str:
        """Where it runs: ``inline`` (shared with other plugins) or ``process`` (on its own)."""
        ...

    def uses_process_of(self, other: object) -> bool:
        """Whether ``other`` is a handle living in the same process (its instance can be handed over)."""
        ...


@dataclass(frozen=True, slots=True)
class Placed:
    """What loading a source somewhere gave: a handle and the declaration, or the phase that failed."""

    handle: PlacedHandle | None
    declaration: dict[str, Any] | None = None
    phase: str | None = None
    error_type: str | None = None
    error: str | None = None
    #: The outcomes of ``initialize``, ``start`` and (when asked) the first ``health_check``, in that order, each only
    #: if the one before passed, when the plugin was brought up with its load (``Placement.load_many``'s ``ups``);
    #: empty when it was only loaded.
    up: tuple[PluginSandboxResult, ...] = ()
    #: When the last of ``up`` is the loss of its runner, blamed on this plugin: the loss's cause (its other
    #: outcomes stand).
    up_lost: str | None = None


class Placement(Protocol):
    """Somewhere to load plugins that is not this process."""

    def load(self, source: PluginSource, dedicated: bool, limits: SandboxLimits) -> Placed:
        """Import ``source`` there and instantiate its class (``dedicated``: in a process of its own)."""
        ...

    def load_many(self, sources: list[PluginSource], limits: SandboxLimits,
                  ups: list[Mapping[str, Any] | None] | None = None,
                  apart: Callable[[PluginSource], tuple[bool, bytes | None]] | None = None,
                  ) -> Iterator[Placed | None]:
        """``load(source, False, limits)`` of each source, in order, the next ones while the caller handles one;
        with ``ups`` (one per source, or None: ``{"config": ..., "timeout": ..., "check": bool}``), a plugin that
        needs nothing of another is brought up in the same step (and checked once, with ``check``), the outcomes in
        ``Placed.up``. ``apart`` (asked as the sources are reached, not all first) tells whether a source runs apart,
        and gives the text to import it from (the bytes read to tell; None: read where it is imported): one that runs
        apart is not loaded, None comes in its place. An iterator that has a ``ready()`` method tells by it whether
        its next outcome has arrived: the loader then takes the plugins that came up whole together, in one step."""
        ...

    def call_many(self, handles: list[Any], method: str,
                  args: list[tuple[Any, ...]]) -> list[PluginSandboxResult | None]:
        """``handle.call(method, *args)`` of several handles placed together, sent at once; None for a call that did
        not run (the caller makes it on its own)."""
        ...

    def close(self) -> None:
        """Stop everything it runs."""
        ...
