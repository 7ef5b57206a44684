"""Settings: defaults, an optional TOML file, and ``PLUGIN_HEALTH_*`` environment variables.

This is the only module that reads ``os.environ``. A bad value raises ``ConfigError`` naming the variable:
the service refuses to start rather than fall back silently to a default.
"""

from __future__ import annotations

import os
import re
import socket
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from plugin_health.errors import ConfigError

PREFIX = "PLUGIN_HEALTH_"
SHOW_DETAILS = ("never", "when-authorized", "always")
HOST_MODES = ("auto", "embedded", "external")
#: The bundled example plugins, the default plugin path: package data, so that an installed service has them too
#: (a clone's ``examples/plugins`` is a link to them).
EXAMPLES = Path(__file__).resolve().parent / "examples" / "plugins"


def _default_plugin_path() -> str:
    return str(EXAMPLES)


@dataclass(frozen=True)
class Settings:
    """Every setting of DESIGN.md section 8, validated."""

    plugin_path: str = field(default_factory=_default_plugin_path)
    admin_token: str | None = None
    show_details: str = "when-authorized"
    store_url: str | None = None
    run_dir: str = "run"
    default_timeout: float = 10.0
    default_memory_limit_mb: int = 512
    failure_threshold: int = 3
    max_restarts: int = 5
    restart_window: float = 600.0
    backoff_base: float = 1.0
    backoff_max: float = 300.0
    health_interval: float = 30.0
    history_limit: int = 100
    entry_point_group: str = "plugin_health.plugins"
    #: Seconds past a call's timeout before the core kills the runner that does not answer.
    runner_grace: float = 0.25
    #: Calls of one plugin that may wait while one runs; one more is refused at once (HTTP 429).
    queue_limit: int = 16
    #: The largest message a runner may send the core (a result included), in bytes.
    max_message_bytes: int = 16 * 1024 * 1024
    #: Who hosts the plugins: "embedded" (this process), "external" (a host process beside the workers, as
    #: the gunicorn configuration runs it; the app only reads the store), "auto" (embedded, unless another process
    #: already hosts the plugins of this store: then external).
    host_mode: str = "auto"
    #: The process whose exit ends the host process (the gunicorn configuration sets the master's pid); 0: none.
    owner_pid: int = 0
    #: This instance's id among the instances that share a Redis store (letters, digits, ``_.:-``; at most 100).
    #: Empty: the host name, and under gunicorn the port it listens on (``web-1:8000``), as the gunicorn
    #: configuration sets it.
    instance: str = ""
    #: Seconds a singleton's lease lives in Redis without renewal; its owner renews it several times a lease.
    singleton_lease: float = 3.0
    #: Seconds a gone instance stays in the cluster view (and its states in Redis) before it is dropped.
    instance_retention: float = 600.0
    #: The release this deployment runs (a build number, an image tag, a commit), the aggregate health's
    #: ``releaseId``; empty: the version of plugin-health.
    release_id: str = ""
    #: Seconds between two heartbeat comments of an idle ``/v1/events`` stream (proxies and clients see it lives).
    events_heartbeat: float = 15.0
    #: Seconds one ``/v1/events`` stream lasts before it ends (the client reconnects, resuming with
    #: ``Last-Event-ID``): no connection holds a worker for ever.
    events_lifetime: float = 300.0
    #: Per-plugin configuration handed to ``initialize`` as ``context.config`` (from the config file).
    plugins: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    @property
    def shared_store(self) -> bool:
        """Whether other processes can see the store (everything but ``memory://``)."""
        return self.store_url != "memory://"

    @property
    def instance_id(self) -> str:
        """This instance's id: the setting, else this machine's host name (a valid id)."""
        if self.instance:
            return self.instance
        host = re.sub(r"[^A-Za-z0-9_.:-]", "-", socket.gethostname())[:100]
        return host or "localhost"

    @property
    def plugin_dirs(self) -> list[Path]:
        """The plugin directories, in order."""
        return [Path(part) for part in self.plugin_path.split(os.pathsep) if part.strip()]


def _positive_float(variable: str, value: object) -> float:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ConfigError(variable, value, "a positive number") from None
    if not number > 0 or number == float("inf"):
        raise ConfigError(variable, value, "a positive number")
    return number


def _int(variable: str, value: object, minimum: int) -> int:
    if isinstance(value, bool):
        raise ConfigError(variable, value, f"a whole number >= {minimum}")
    try:
        number = int(str(value).strip())
    except ValueError:
        raise ConfigError(variable, value, f"a whole number >= {minimum}") from None
    if number < minimum:
        raise ConfigError(variable, value, f"a whole number >= {minimum}")
    return number


def _text(variable: str, value: object) -> str:
    if not isinstance(value, str):
        raise ConfigError(variable, value, "a string")
    return value


def _path(variable: str, value: object) -> str:
    """A path given as text or as a path object (``app.config`` values are Python values)."""
    return _text(variable, os.fspath(value) if isinstance(value, os.PathLike) else value)


def _optional_text(variable: str, value: object) -> str | None:
    text = _text(variable, value).strip()
    return text or None


def _show_details(variable: str, value: object) -> str:
    text = _text(variable, value).strip().lower()
    if text not in SHOW_DETAILS:
        raise ConfigError(variable, value, " | ".join(SHOW_DETAILS))
    return text


def _host_mode(variable: str, value: object) -> str:
    text = _text(variable, value).strip().lower()
    if text not in HOST_MODES:
        raise ConfigError(variable, value, " | ".join(HOST_MODES))
    return text


def _instance(variable: str, value: object) -> str:
    text = _text(variable, value).strip()
    if text and not re.fullmatch(r"[A-Za-z0-9_.:-]{1,100}", text):
        raise ConfigError(variable, value, "1-100 letters, digits, '_', '.', ':' or '-'")
    return text


def _release_id(variable: str, value: object) -> str:
    text = _text(variable, value).strip()
    if len(text) > 100 or not text.isprintable():
        raise ConfigError(variable, value, "at most 100 printable characters")
    return text


def _plugins(variable: str, value: object) -> Mapping[str, Mapping[str, Any]]:
    if not isinstance(value, Mapping) or not all(isinstance(v, Mapping) for v in value.values()):
        raise ConfigError(variable, value, "a table of tables, one per plugin")
    return {str(k): dict(v) for k, v in value.items()}


_PARSERS: dict[str, Callable[[str, object], Any]] = {
    "plugin_path": _path,
    "admin_token": _optional_text,
    "show_details": _show_details,
    "store_url": _optional_text,
    "run_dir": _path,
    "default_timeout": _positive_float,
    "default_memory_limit_mb": lambda v, x: _int(v, x, 1),
    "failure_threshold": lambda v, x: _int(v, x, 1),
    "max_restarts": lambda v, x: _int(v, x, 0),
    "restart_window": _positive_float,
    "backoff_base": _positive_float,
    "backoff_max": _positive_float,
    "health_interval": _positive_float,
    "history_limit": lambda v, x: _int(v, x, 1),
    "entry_point_group": _text,
    "runner_grace": _positive_float,
    "queue_limit": lambda v, x: _int(v, x, 1),
    "max_message_bytes": lambda v, x: _int(v, x, 1024),
    "host_mode": _host_mode,
    "owner_pid": lambda v, x: _int(v, x, 0),
    "plugins": _plugins,
    "instance": _instance,
    "singleton_lease": _positive_float,
    "instance_retention": _positive_float,
    "release_id": _release_id,
    "events_heartbeat": _positive_float,
    "events_lifetime": _positive_float,
}


def _from_file(path: str) -> dict[str, Any]:
    variable = PREFIX + "CONFIG_FILE"
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except OSError as err:
        raise ConfigError(variable, path, f"a readable TOML file ({err.strerror})") from err
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(variable, path, f"valid TOML ({err})") from err


def _check_plugin_dirs(settings: Settings) -> None:
    """Refuse a plugin directory that does not exist or is not a directory: a typo would serve no plugins at all
    (and a ready ``/readyz``) rather than stop the service."""
    for directory in settings.plugin_dirs:
        if not directory.exists():
            problem = "does not exist"
        elif not directory.is_dir():
            problem = "is not a directory"
        else:
            continue
        expected = f"existing directories, {os.pathsep!r}-separated ({str(directory)!r} {problem})"
        raise ConfigError(PREFIX + "PLUGIN_PATH", settings.plugin_path, expected)


def setting_key(key: str) -> str:
    """The variable name of a setting given by its field name or its variable name, in any case."""
    return PREFIX + key.upper().removeprefix(PREFIX)


def load_settings(
    overrides: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None
) -> Settings:
    """Settings from defaults, then ``PLUGIN_HEALTH_CONFIG_FILE``, then the environment, then ``overrides``.

    ``overrides`` uses the field names (``{"plugin_path": ...}``) or the variable names; it is how tests,
    ``create_app(config)`` and the extension (the app's ``PLUGIN_HEALTH_*`` config) pass configuration.
    """
    env = os.environ if environ is None else environ
    given = {key.lower().removeprefix(PREFIX.lower()): (key, value) for key, value in (overrides or {}).items()}
    raw: dict[str, tuple[str, object]] = {}
    config_file = given.pop("config_file", ("", None))[1] or env.get(PREFIX + "CONFIG_FILE")
    if config_file:
        for key, value in _from_file(str(config_file)).items():
            raw[key.lower()] = (f"{config_file}: {key}", value)
    for name in _PARSERS:
        variable = PREFIX + name.upper()
        if variable in env and name != "plugins":
            raw[name] = (variable, env[variable])
    raw.update(given)
    unknown = sorted(set(raw) - set(_PARSERS))
    if unknown:
        variable = raw[unknown[0]][0]
        known = ", ".join(f.name for f in fields(Settings))
        raise ConfigError(variable, raw[unknown[0]][1], f"a known setting: {known}")
    values = {name: _PARSERS[name](variable, value) for name, (variable, value) in raw.items()}
    settings = Settings(**values)
    if settings.backoff_max < settings.backoff_base:
        expected = f"a number >= PLUGIN_HEALTH_BACKOFF_BASE ({settings.backoff_base:g})"
        raise ConfigError(PREFIX + "BACKOFF_MAX", settings.backoff_max, expected)
    if "plugin_path" in raw:  # the default (the bundled examples) is ours to get right
        _check_plugin_dirs(settings)
    if settings.host_mode == "external" and not settings.shared_store:
        raise ConfigError(PREFIX + "HOST_MODE", "external", "embedded or auto: a memory:// store cannot be shared")
    return settings
