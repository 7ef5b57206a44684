"""``PluginHost``: plugins hosted for a test as the service hosts them, by a real ``Core`` with its runners.

A host loads one plugin directory (or sources written to one) in a throwaway :class:`~plugin_health.runtime.core.Core`
over a ``MemoryStore``: every plugin runs in a runner process, under the sandbox, supervised, exactly as in the
service, but nothing is shared with a running service and no Flask app is built. ``plugins check`` does the same
for one pass; a host stays up for the test to drive it and is shut down by :meth:`PluginHost.close`.
"""

from __future__ import annotations

import ast
import os
import shutil
import tempfile
import textwrap
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

from plugin_health.config import Settings, load_settings
from plugin_health.errors import PluginNotRunningError
from plugin_health.lifecycle import PluginLifecycleManager, PluginLifecycleState, TransitionRecord
from plugin_health.runtime.core import Core
from plugin_health.runtime.operations import Operations
from plugin_health.sandbox import PluginSandboxResult
from plugin_health.store import MemoryStore, PluginSnapshot

#: What a host is given: a plugin directory or file, one plugin's source, or ``{module: source}``.
Plugins = os.PathLike[str] | str | Mapping[str, str]

#: Settings a host fixes itself (the plugins are given, the store is in memory, the core is in this process).
FIXED_SETTINGS = frozenset({"plugin_path", "store_url", "host_mode", "owner_pid", "config_file"})

#: What a test host changes from the service's defaults: only the given plugins, no entry points; health checks when
#: the plugin starts and when the test asks (``check_now``); no automatic restarts, so a FAILED plugin stays FAILED
#: for the test to see. Each can be overridden (``health_interval=0.2``, ``max_restarts=3``, ...).
HOST_DEFAULTS: Mapping[str, Any] = {"entry_point_group": "", "health_interval": 3600, "max_restarts": 0}

#: The module name of a plugin source that declares no literal ``name``.
DEFAULT_MODULE = "plugin"


class PluginHost:
    """Plugins hosted by a real :class:`Core` over a :class:`MemoryStore`, their code in runner processes.

    Read it (``states``, ``state``, ``history``, ``health``), drive it as an operator would (``restart``,
    ``disable``, ``enable``, ``call_tool``, ``check_now``), and ``close()`` it (a context manager too).
    """

    def __init__(self, settings: Settings, workdir: Path | None = None) -> None:
        self.settings = settings
        self.core = Core(settings, MemoryStore(settings.history_limit))
        self.operations = Operations(self.core)
        #: A temporary directory the host wrote sources to and removes at ``close`` (None: not its own).
        self._workdir = workdir
        self._closed = False

    def start(self) -> PluginHost:
        """Load every plugin, run the first health checks and start supervising; shut down again if that fails."""
        try:
            self.core.start(background=True)
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        """Stop every plugin (UNAVAILABLE ``stopped``) and every runner; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        try:
            self.core.shutdown()
        finally:
            if self._workdir is not None:
                shutil.rmtree(self._workdir, ignore_errors=True)

    def __enter__(self) -> PluginHost:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    # -- reading ------------------------------------------------------------------------------------------

    @property
    def manager(self) -> PluginLifecycleManager:
        """The core's lifecycle manager (assertion helpers read it; moving plugins with it bypasses the plugins)."""
        return self.core.manager

    @property
    def plugin_dirs(self) -> list[Path]:
        """The directories the plugins were loaded from."""
        return self.settings.plugin_dirs

    @property
    def states(self) -> dict[str, PluginLifecycleState]:
        """Every plugin's state by name, sorted (a state compares equal to its name: ``{"weather": "RUNNING"}``)."""
        return self.core.manager.all_states()

    def state(self, name: str) -> PluginLifecycleState:
        """The state of ``name``; :class:`~plugin_health.UnknownPluginError` for a plugin the host does not have."""
        return self.core.manager.state_of(name)

    def history(self, name: str) -> list[TransitionRecord]:
        """The recorded transitions of ``name``, oldest first (its first state has ``source`` None)."""
        return self.core.manager.history(name)

    def health(self, name: str) -> PluginSnapshot:
        """What the service would answer for ``name``'s health: ``state``, ``healthy``, ``reason``, ``error_type``,
        ``error``, ``consecutive_failures``, ``restarts``, ``last_check``..."""
        return self.core.snapshot(name)

    # -- acting -------------------------------------------------------------------------------------------

    def check_now(self, name: str) -> PluginSnapshot:
        """Run ``name``'s health check at once, judged as the supervisor judges it; its health afterwards.

        :class:`~plugin_health.errors.PluginNotRunningError` if it is not RUNNING (nothing is checked then).
        """
        state = self.state(name)
        if state is not PluginLifecycleState.RUNNING:
            raise PluginNotRunningError(name, state.value)
        self.core.supervisor.check(name)
        return self.health(name)

    def call_tool(self, plugin: str, tool: str, /, *args: Any, **kwargs: Any) -> PluginSandboxResult:
        """Call a tool as ``POST /v1/plugins/<plugin>/tools/<tool>`` does; what the plugin did is in the result.

        Raises :class:`~plugin_health.errors.UnknownToolError`, :class:`~plugin_health.errors.PluginNotRunningError`
        or :class:`~plugin_health.errors.ToolArgumentsError` (arguments that do not fit: nothing ran).
        """
        return self.operations.run_tool(plugin, tool, list(args), dict(kwargs))

    def restart(self, name: str) -> PluginSnapshot:
        """The operator's restart: from any state, stopping it first if it runs (clears the restart limit)."""
        return self.operations.restart(name)

    def disable(self, name: str) -> PluginSnapshot:
        """The operator's disable: UNAVAILABLE ``disabled`` (dependents first); illegal unless it is active."""
        return self.operations.disable(name)

    def enable(self, name: str) -> PluginSnapshot:
        """The operator's enable: ``reset`` and start a FAILED or UNAVAILABLE plugin; illegal otherwise."""
        return self.operations.enable(name)

    def __repr__(self) -> str:
        states = ", ".join(f"{name}={state.value}" for name, state in self.states.items())
        return f"<PluginHost {states or 'no plugins'}>"


class PluginHostFactory(Protocol):
    """The ``plugin_host`` fixture: call it with plugins (and settings) to get a started :class:`PluginHost`."""

    def __call__(self, plugins: Plugins, /, **settings: Any) -> PluginHost:
        """Host ``plugins``; every host is closed when the test ends."""
        ...


def start_host(plugins: Plugins, /, *, workdir: Path | None = None, **settings: Any) -> PluginHost:
    """Host ``plugins`` and start them; the caller closes the host (or uses it as a context manager).

    ``plugins``: a plugin directory (a :class:`~pathlib.Path`), a plugin file (hosted alone), one plugin's source
    (a ``str``, dedented) or ``{module: source}`` (a module may be a relative path: ``"geo/__init__.py"``).
    Sources and a lone file are written to ``workdir`` (default: a temporary directory removed at ``close``).
    ``settings``: the service's settings by field name (``health_interval=0.2``), validated as the service
    validates them; ``config={name: {...}}`` is each plugin's ``context.config``. The environment's
    ``PLUGIN_HEALTH_*`` variables are not read: a test sees the same host on every machine.
    """
    fixed = sorted(FIXED_SETTINGS.intersection(key.lower().removeprefix("plugin_health_") for key in settings))
    if fixed:
        raise TypeError(f"plugin host settings cannot include {', '.join(fixed)}: the host sets them itself")
    if "config" in settings:
        settings["plugins"] = settings.pop("config")
    owned = None
    directory = _directory_of(plugins)
    if directory is None:
        if workdir is None:
            workdir = owned = Path(tempfile.mkdtemp(prefix="plugin-host-"))
        directory = _write(plugins, workdir)
    try:
        host_settings = load_settings({**HOST_DEFAULTS, **settings, "plugin_path": str(directory),
                                       "store_url": "memory://", "host_mode": "embedded"}, environ={})
        host = PluginHost(host_settings, owned)
    except BaseException:
        if owned is not None:
            shutil.rmtree(owned, ignore_errors=True)
        raise
    return host.start()


def _directory_of(plugins: Plugins) -> Path | None:
    """The directory to host as it is, or None when ``plugins`` must be written to one first."""
    if isinstance(plugins, os.PathLike):
        path = Path(plugins)
        if path.is_file():
            return None
        return path  # a missing path is refused by the settings, naming it
    if isinstance(plugins, str):
        if "\n" not in plugins:
            raise TypeError(
                f"a str is a plugin's source (an import and a class: several lines), not {plugins!r}; "
                "pass a directory or a file as a pathlib.Path")
        return None
    if isinstance(plugins, Mapping):
        return None
    raise TypeError(f"plugins must be a Path, a plugin's source or a {{module: source}} mapping, not {plugins!r}")


def _write(plugins: Plugins, workdir: Path) -> Path:
    """Write the sources (or copy the lone file) of ``plugins`` to ``workdir/plugins``; that directory."""
    directory = workdir / "plugins"
    directory.mkdir(parents=True, exist_ok=True)
    if isinstance(plugins, os.PathLike):
        shutil.copy2(plugins, directory / Path(plugins).name)
        return directory
    files = {_module_of(plugins): plugins} if isinstance(plugins, str) else dict(plugins)
    for module, source in files.items():
        relative = Path(module if module.endswith(".py") else f"{module}.py")
        if relative.is_absolute() or ".." in relative.parts:
            raise ValueError(f"plugin module {module!r} must be a name or a relative path inside the plugin directory")
        target = directory / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(textwrap.dedent(source).lstrip("\n"))
    return directory


def _module_of(source: str) -> str:
    """The module name for one plugin's source: its literal ``name`` when that is an identifier, else ``plugin``."""
    try:
        tree = ast.parse(textwrap.dedent(source))
    except SyntaxError:
        return DEFAULT_MODULE  # written anyway: loading it records the SyntaxError, as the service would
    for node in tree.body:
        if not isinstance(node, ast.ClassDef):
            continue
        for statement in node.body:
            if isinstance(statement, ast.Assign) and any(
                    isinstance(t, ast.Name) and t.id == "name" for t in statement.targets):
                value = statement.value
                if isinstance(value, ast.Constant) and isinstance(value.value, str) and value.value.isidentifier():
                    return value.value
    return DEFAULT_MODULE
