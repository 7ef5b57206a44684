"""The exceptions of plugin-health: one hierarchy, each carrying its data; no Flask here."""

from __future__ import annotations

import builtins
from collections.abc import Iterable

#: Longest error message kept from a plugin; longer ones are cut with an ellipsis.
MAX_ERROR_LENGTH = 2000


def bounded(message: str, limit: int = MAX_ERROR_LENGTH) -> str:
    """Cut a message to at most ``limit`` characters, marking the cut."""
    if len(message) <= limit:
        return message
    return message[: limit - 1] + "\u2026"


#: What an anonymous caller sees instead of the name of an exception class a plugin defined (a class can be named
#: after a secret): the names of Python's own exceptions and of plugin-health's are shown as they are.
PLUGIN_DEFINED = "PluginDefinedError"


def public_error_type(error_type: str | None) -> str | None:
    """``error_type`` as anyone may see it: Python's and plugin-health's own names, else :data:`PLUGIN_DEFINED`."""
    if error_type is None or error_type in _PUBLIC_NAMES or error_type in _public_names():
        return error_type
    return PLUGIN_DEFINED


_PUBLIC_NAMES = frozenset(
    name for name, value in vars(builtins).items() if isinstance(value, type) and issubclass(value, BaseException)
) | {
    # The sandbox's, the runtime's and the supervisor's own error types (strings, not classes, in results).
    "PluginTimeoutError", "PluginMemoryError", "PluginCrashedError", "UnserializableResultError",
    "ResultTooLargeError", "ToolArgumentsError", "UnencodableArgumentsError", "HealthCheckFailed",
    "PluginSetupError", "PluginLoadError", "ProtocolError", "RunnerError",
}


def _public_names() -> frozenset[str]:
    """The names of this module's exception classes (read once: they are all defined by then)."""
    global _OWN
    if _OWN is None:
        _OWN = frozenset(name for name, value in globals().items()
                         if isinstance(value, type) and issubclass(value, BaseException))
    return _OWN


_OWN: frozenset[str] | None = None


class PluginError(Exception):
    """Base class of every error plugin-health raises."""


class ConfigError(PluginError, ValueError):
    """A setting has a value that cannot be used."""

    def __init__(self, variable: str, value: object, expected: str) -> None:
        super().__init__(f"{variable}={value!r} is invalid: expected {expected}")
        self.variable = variable
        self.value = value
        self.expected = expected


class AlreadyInitializedError(PluginError, RuntimeError):
    """The extension's ``init_app`` ran a second time on the same Flask app (one app carries one service)."""

    def __init__(self, app_name: str) -> None:
        super().__init__(
            f"plugin-health is already initialized on the Flask app {app_name!r} (app.extensions['plugin_health']):"
            " call PluginHealth(app) or init_app(app) once per app"
        )
        self.app_name = app_name


class UnknownPluginError(PluginError, KeyError):
    """No plugin of that name is known."""

    def __init__(self, plugin: str) -> None:
        super().__init__(f"unknown plugin {plugin!r}")
        self.plugin = plugin

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


class UnknownInstanceError(PluginError, KeyError):
    """No live instance of that id shares this service's store."""

    def __init__(self, instance: str) -> None:
        super().__init__(f"unknown instance {instance!r}")
        self.instance = instance

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


class IllegalTransitionError(PluginError):
    """A lifecycle move that the transition table does not allow; nothing was changed."""

    def __init__(
        self,
        plugin: str,
        state: str | None,
        attempted: str,
        allowed: Iterable[str] = (),
    ) -> None:
        self.plugin = plugin
        self.state = state
        self.attempted = attempted
        self.allowed = tuple(allowed)
        where = "untracked" if state is None else f"in state {state}"
        legal = ", ".join(self.allowed) or "none"
        super().__init__(f"plugin {plugin!r} {where}: {attempted} is not allowed (allowed: {legal})")


class DuplicatePluginError(PluginError):
    """A second plugin claims a name that is already taken."""

    def __init__(self, plugin: str, origin: str, taken_by: str) -> None:
        super().__init__(f"plugin name {plugin!r} from {origin} is already taken by {taken_by}")
        self.plugin = plugin
        self.origin = origin
        self.taken_by = taken_by


class PluginLoadError(PluginError):
    """Base of the errors found while turning a source into a plugin class."""


class NoPluginClassError(PluginLoadError):
    """A plugin module defines no subclass of ``Plugin``."""

    def __init__(self, module: str) -> None:
        super().__init__(f"module {module!r} defines no subclass of plugin_health.Plugin")
        self.module = module


class MultiplePluginClassesError(PluginLoadError):
    """A plugin module defines more than one subclass of ``Plugin``."""

    def __init__(self, module: str, classes: Iterable[str]) -> None:
        self.module = module
        self.classes = tuple(classes)
        names = ", ".join(self.classes)
        super().__init__(f"module {module!r} defines several Plugin subclasses ({names}); exactly one is allowed")


class InvalidPluginError(PluginLoadError):
    """A plugin class declares an attribute that cannot be used (a bad version, name or requirement)."""

    def __init__(self, plugin: str, attribute: str, problem: str) -> None:
        super().__init__(f"plugin {plugin!r}: {attribute} {problem}")
        self.plugin = plugin
        self.attribute = attribute
        self.problem = problem


class PluginRunError(PluginError):
    """Base of the sandbox's own errors: the plugin's call did not finish normally."""

    def __init__(self, message: str, plugin: str | None = None) -> None:
        super().__init__(message)
        self.plugin = plugin


class PluginTimeoutError(PluginRunError, TimeoutError):
    """The call ran past its timeout and was stopped."""


class PluginMemoryError(PluginRunError, MemoryError):
    """The call's allocations passed the plugin's memory limit."""


class PluginCrashedError(PluginRunError):
    """The process running the plugin died (segfault, ``os._exit``, killed)."""


class PluginNotRunningError(PluginError):
    """A tool was called on a plugin that is not RUNNING."""

    def __init__(self, plugin: str, state: str) -> None:
        super().__init__(f"plugin {plugin!r} is {state}, not RUNNING")
        self.plugin = plugin
        self.state = state


class UnknownToolError(PluginError, LookupError):
    """The plugin has no tool of that name."""

    def __init__(self, plugin: str, tool: str) -> None:
        super().__init__(f"plugin {plugin!r} has no tool {tool!r}")
        self.plugin = plugin
        self.tool = tool


class PluginBusyError(PluginError):
    """Too many calls of one plugin are waiting already; this one was refused before it ran."""

    def __init__(self, plugin: str, queue_limit: int) -> None:
        super().__init__(f"plugin {plugin!r} has {queue_limit} calls waiting already; try again later")
        self.plugin = plugin
        self.queue_limit = queue_limit


class DependencyNotReadyError(PluginError):
    """An operator asked to start a plugin whose dependency is missing, refused, on a cycle or not RUNNING.

    The plugin stays UNAVAILABLE with ``reason`` (which starts with its code, such as ``dependency_missing``).
    """

    def __init__(self, plugin: str, dependency: str, reason: str) -> None:
        super().__init__(f"plugin {plugin!r} cannot start: {reason}")
        self.plugin = plugin
        self.dependency = dependency
        self.reason = reason


class InvalidHealthResultError(PluginError, ValueError):
    """A ``HealthResult`` with a field that cannot be used (raised where it is made, in the runner that encodes it,
    and in the core that decodes it: a health check that returns one fails, naming the field)."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"invalid HealthResult: {field} {problem}")
        self.field = field
        self.problem = problem


class ToolArgumentsError(PluginError, TypeError):
    """A tool call's arguments do not bind to the tool's signature: the caller's mistake, refused before the call
    and counted nowhere (HTTP 422)."""

    def __init__(self, plugin: str, tool: str, problem: str) -> None:
        super().__init__(f"plugin {plugin!r} tool {tool!r}: {problem}")
        self.plugin = plugin
        self.tool = tool
        self.problem = problem
