"""The base class every plugin derives from, and the ``@tool`` decorator."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import FunctionType
from typing import Any, ClassVar, Literal, TypeVar

from plugin_health.health import HealthResult

_F = TypeVar("_F", bound=Callable[..., Any])

_TOOL_MARK = "__plugin_health_tool__"

Isolation = Literal["inline", "process"]


def tool(fn: _F) -> _F:
    """Mark a plugin method as a tool that ``ToolRunner`` and the HTTP API may call."""
    setattr(fn, _TOOL_MARK, True)
    return fn


def tool_names(cls: type[Plugin]) -> tuple[str, ...]:
    """Names of the ``@tool`` methods of a plugin class, sorted.

    ``object`` is skipped wherever the MRO has it: its namespace cannot change and holds only built-in descriptors,
    which cannot carry the mark, and reading its 24 attributes was half the time of a trivial plugin's call (1.8 of
    3.2 us). Every other class is read, ``Plugin`` too: plugin code may mark or add attributes there.
    """
    found = {
        name
        for klass in cls.__mro__
        if klass is not object
        for name, value in vars(klass).items()
        if callable(value) and _marked(value)
    }
    return tuple(sorted(found))


def _marked(value: object) -> object:
    """``getattr(value, _TOOL_MARK, False)``; for a plain function read from its ``__dict__``, where ``getattr`` looks
    (a function's type cannot change), without the ``AttributeError`` that ``getattr`` raises and catches when it is
    not there: most of reading ``Plugin``'s own methods, at every plugin's load."""
    if type(value) is FunctionType:
        return value.__dict__.get(_TOOL_MARK, False)
    return getattr(value, _TOOL_MARK, False)


#: Plugin names are addressable in URLs: letters, digits, "_", "-", ".", at most 100 characters (the loader checks
#: every declared name against it; a runner, which loads none of the loader's libraries, uses it too).
NAME_PATTERN = re.compile(r"[A-Za-z0-9_.-]{1,100}")
#: The methods the lifecycle calls: none of them can be a tool.
LIFECYCLE_METHODS = frozenset({"initialize", "start", "stop", "health_check"})
#: The class attributes a plugin declares (validated by ``PluginSpec`` in the loader).
DECLARED = ("name", "version", "requires", "critical", "timeout", "memory_limit_mb", "isolation", "singleton")
_PLAIN = (str, int, float, bool, type(None))
_SEQUENCES = (tuple, list)  # made once: ``tuple | list`` in the loop built a new union at every attribute


def raw_declaration(cls: type[Plugin], default_name: str) -> dict[str, Any]:
    """A plugin class's declared attributes as plain data, unvalidated (a runner reports them to the core).

    A value that is not plain data (a string, number, boolean, None, or a tuple or list of strings) is refused
    here with ``TypeError`` naming the attribute: only plain data crosses to the core.
    """
    declared: dict[str, Any] = {}
    for attribute in DECLARED:
        value = getattr(cls, attribute, None)
        if type(value) in _PLAIN:
            pass
        elif isinstance(value, _SEQUENCES) and (not value or all(type(item) is str for item in value)):
            value = list(value)
        else:
            raise TypeError(f"{attribute} must be plain data, not {type(value).__name__}")
        declared[attribute] = value
    declared["name"] = declared["name"] or default_name
    declared["tools"] = list(tool_names(cls))
    return declared


@dataclass(frozen=True)
class PluginContext:
    """What ``Plugin.initialize`` receives: its configuration, a logger and the other plugins."""

    name: str
    config: Mapping[str, Any] = field(default_factory=dict)
    logger: logging.Logger = field(default_factory=lambda: logging.getLogger("plugin_health.plugins"))
    plugins: Mapping[str, Plugin] = field(default_factory=dict)
    #: For a singleton: the fencing token of this run (it grows with every new owner, across instances); pass it
    #: to what the plugin writes to, so that a write from an older run can be told apart and refused. Else None.
    fencing_token: int | None = None


class Plugin:
    """Subclass this once per plugin module; override the hooks you need."""

    #: The plugin's unique name; defaults to its module's name.
    name: ClassVar[str] = ""
    #: PEP 440 version.
    version: ClassVar[str] = "0.0.0"
    #: Other plugins this one needs, each with an optional PEP 440 specifier ("geo>=2.0").
    requires: ClassVar[tuple[str, ...]] = ()
    #: When True, this plugin failing makes the aggregate health "fail" and readyz fail.
    critical: ClassVar[bool] = False
    #: Seconds for each sandboxed call of this plugin (None: the service default).
    timeout: ClassVar[float | None] = None
    #: Memory allowance of one call, in MiB (None: the service default).
    memory_limit_mb: ClassVar[int | None] = None
    #: "inline" runs in the server process; "process" in a child process of its own.
    isolation: ClassVar[Isolation] = "inline"
    #: True: runs on exactly one instance of a cluster sharing a Redis store (in a runner of its own), chosen by a
    #: lease; the other instances hold it on standby and forward its tool calls to the owner.
    singleton: ClassVar[bool] = False

    def initialize(self, context: PluginContext) -> None:
        """Prepare the plugin (LOADED -> INITIALIZED)."""

    def start(self) -> None:
        """Start serving (INITIALIZED -> RUNNING)."""

    def stop(self) -> None:
        """Release what ``start`` took; called on shutdown, disable and restart."""

    def health_check(self) -> bool | HealthResult | None:
        """Report whether the plugin works: True or None pass, False fails, and a ``HealthResult`` says ``pass``,
        ``warn`` or ``fail`` with an observed value, its unit and an output; an exception or a timeout fails."""
        return True
