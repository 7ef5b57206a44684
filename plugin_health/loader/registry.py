"""``PluginRegistry``: what is known of each plugin (its declaration and source), by unique name."""

from __future__ import annotations

import functools
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from packaging.requirements import InvalidRequirement, Requirement
from packaging.version import InvalidVersion, Version

from plugin_health.errors import DuplicatePluginError, InvalidPluginError, UnknownPluginError
from plugin_health.frozen import slot_maker
from plugin_health.loader.sources import PluginSource
from plugin_health.plugin import LIFECYCLE_METHODS, NAME_PATTERN, Plugin, tool_names

ISOLATIONS = ("inline", "process")

#: The longest timeout a plugin may declare, in seconds (a day): waits on longer ones overflow ``poll()``.
MAX_TIMEOUT = 86_400
#: The largest memory allowance a plugin may declare, in MiB (1 TiB).
MAX_MEMORY_MB = 1024 * 1024


def _version(text: str) -> Version:
    """``Version(text)``, parsed once a text of up to 64 characters (versions repeat across plugins and restarts;
    parsing one was a tenth of registering a plugin); a longer one, which a plugin may make as long as a message
    allows, is parsed each time, never kept. A ``Version`` is immutable: one object serves every spec declaring it.
    A text that is no version raises ``InvalidVersion`` each time (errors are not kept)."""
    return _short_version(text) if len(text) <= 64 else Version(text)


@functools.lru_cache(maxsize=1024)
def _short_version(text: str) -> Version:
    return Version(text)


def valid_name(name: object) -> bool:
    """Whether ``name`` can be a plugin name."""
    return isinstance(name, str) and NAME_PATTERN.fullmatch(name) is not None


@dataclass(frozen=True, slots=True)
class PluginSpec:
    """A plugin's validated declaration: the class attributes of DESIGN.md section 2."""

    name: str
    version: Version
    requires: tuple[Requirement, ...] = ()
    critical: bool = False
    timeout: float | None = None
    memory_limit_mb: int | None = None
    isolation: str = "inline"
    tools: tuple[str, ...] = ()
    singleton: bool = False

    def to_mapping(self) -> dict[str, Any]:
        """The declaration as plain data (how a runner reports it to the core); ``from_mapping`` reads it back."""
        return {
            "name": self.name,
            "version": str(self.version),
            "requires": [str(requirement) for requirement in self.requires],
            "critical": self.critical,
            "timeout": self.timeout,
            "memory_limit_mb": self.memory_limit_mb,
            "isolation": self.isolation,
            "tools": list(self.tools),
            "singleton": self.singleton,
        }

    @classmethod
    def from_class(cls, plugin_class: type[Plugin], default_name: str) -> PluginSpec:
        """Validate a plugin class's attributes."""
        return cls.from_mapping(
            {
                "name": plugin_class.name or default_name,
                "version": plugin_class.version,
                "requires": plugin_class.requires,
                "critical": plugin_class.critical,
                "timeout": plugin_class.timeout,
                "memory_limit_mb": plugin_class.memory_limit_mb,
                "isolation": plugin_class.isolation,
                "tools": tool_names(plugin_class),
                "singleton": plugin_class.singleton,
            },
            default_name,
        )

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], default_name: str) -> PluginSpec:
        """Validate a declaration given as plain data (as a process-isolated plugin reports it)."""
        name = data.get("name") or default_name
        if not valid_name(name):
            raise InvalidPluginError(default_name, "name", f"{name!r} must be 1-100 letters, digits, '_', '-' or '.'")
        try:
            version = _version(str(data.get("version", "0.0.0")))
        except InvalidVersion as err:
            raise InvalidPluginError(name, "version", f"{data.get('version')!r} is not a PEP 440 version") from err
        raw = data.get("requires", ())
        if isinstance(raw, str) or not isinstance(raw, list | tuple):
            raise InvalidPluginError(name, "requires", "must be a tuple of requirement strings")
        requires: list[Requirement] = []
        for item in raw:
            try:
                requires.append(Requirement(str(item)))
            except InvalidRequirement as err:
                raise InvalidPluginError(name, "requires", f"{item!r} is not a valid requirement") from err
        timeout = data.get("timeout")
        if timeout is not None and (
            not isinstance(timeout, int | float) or isinstance(timeout, bool) or not 0 < timeout <= MAX_TIMEOUT
        ):
            raise InvalidPluginError(
                name, "timeout", f"{timeout!r} must be a number of seconds above 0 and at most {MAX_TIMEOUT:,}"
            )
        memory = data.get("memory_limit_mb")
        if memory is not None and (
            not isinstance(memory, int) or isinstance(memory, bool) or not 0 < memory <= MAX_MEMORY_MB
        ):
            problem = f"{memory!r} must be a whole number of MiB above 0 and at most {MAX_MEMORY_MB:,}"
            raise InvalidPluginError(name, "memory_limit_mb", problem)
        tools = data.get("tools", ())
        lifecycle = sorted(set(tools) & LIFECYCLE_METHODS) if isinstance(tools, list | tuple) else []
        if lifecycle:
            problem = f"marks the lifecycle method(s) {', '.join(lifecycle)} with @tool; a tool is any other method"
            raise InvalidPluginError(name, "tools", problem)
        isolation = data.get("isolation", "inline")
        if isolation not in ISOLATIONS:
            raise InvalidPluginError(name, "isolation", f"{isolation!r} must be 'inline' or 'process'")
        singleton = data.get("singleton", False)
        if singleton is None:
            singleton = False
        if not isinstance(singleton, bool):
            raise InvalidPluginError(name, "singleton", f"{singleton!r} must be True or False")
        return _make_spec(  # its slots filled (``slot_maker``): the frozen __init__ was a tenth of registering a plugin
            name, version, tuple(requires), bool(data.get("critical", False)),
            None if timeout is None else float(timeout), memory, isolation, tuple(data.get("tools", ())), singleton)


#: Makes a spec of a value for each field, in order (``from_mapping`` gives every one; tests compare what it makes
#: with the constructor's).
_make_spec = slot_maker(PluginSpec)


@dataclass(slots=True)
class PluginEntry:
    """A registered plugin: its declaration, where it came from, and the live object once it is loaded."""

    spec: PluginSpec
    source: PluginSource
    handle: Any = None
    dependents: set[str] = field(default_factory=set)

    @property
    def name(self) -> str:
        """The plugin's unique name."""
        return self.spec.name


class PluginRegistry:
    """Plugins by unique name; a second plugin with a taken name is refused with ``DuplicatePluginError``."""

    def __init__(self) -> None:
        self._entries: dict[str, PluginEntry] = {}
        self._wanted_by: dict[str, set[str]] = {}

    def register(self, spec: PluginSpec, source: PluginSource, handle: Any = None) -> PluginEntry:
        """Add a plugin; ``DuplicatePluginError`` if its name is taken (the first one stays)."""
        taken = self._entries.get(spec.name)
        if taken is not None:
            raise DuplicatePluginError(spec.name, source.label, taken.source.label)
        entry = PluginEntry(spec, source, handle, set(self._wanted_by.get(spec.name, ())))
        self._entries[spec.name] = entry
        for requirement in spec.requires:
            self._wanted_by.setdefault(requirement.name, set()).add(spec.name)
            dependency = self._entries.get(requirement.name)
            if dependency is not None:
                dependency.dependents.add(spec.name)
        return entry

    def get(self, name: str) -> PluginEntry:
        """The entry of ``name``; ``UnknownPluginError`` if there is none."""
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownPluginError(name) from None

    def get_or_none(self, name: str) -> PluginEntry | None:
        """The entry of ``name``, or None."""
        return self._entries.get(name)

    def dependents(self, name: str) -> list[str]:
        """The plugins that require ``name`` directly, sorted."""
        entry = self._entries.get(name)
        return sorted(entry.dependents) if entry else []

    def declared(self) -> dict[str, PluginSpec]:
        """Every plugin's declaration, for ``resolve`` (a spec is what it reads: ``Requiring``)."""
        # A copy taken in one step first: recovery threads may register plugins meanwhile (shutdown reads this).
        return {name: entry.spec for name, entry in list(self._entries.items())}

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[PluginEntry]:
        entries = dict(self._entries)  # one step: other threads may register or forget plugins meanwhile
        return iter([entries[name] for name in sorted(entries)])

    def __len__(self) -> int:
        return len(self._entries)
