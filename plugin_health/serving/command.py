"""``plugin-health``: serve the plugins under gunicorn, check plugins for CI, read an instance's plugins.

``serve`` replaces itself with gunicorn (``os.execve``) run with the packaged configuration and WSGI app, so the
process an operator or a supervisor started is gunicorn's master, which gets the signals; a fresh interpreter also
lets the configuration choose prometheus_client's metrics directory before anything imports it. The other commands
are those of ``flask --app wsgi plugins`` (:mod:`plugin_health.cli`), the same objects: they read the store of the
instance the settings name, loading the app as ``flask --app wsgi`` does.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import click
from flask.cli import ScriptInfo

from plugin_health import cli
from plugin_health.config import PREFIX, load_settings
from plugin_health.errors import ConfigError
from plugin_health.store import check_url

if TYPE_CHECKING:
    from flask import Flask

#: gunicorn's configuration and the WSGI app that ``serve`` runs.
GUNICORN_CONFIG = "python:plugin_health.serving.gunicorn_conf"
WSGI_MODULE = "plugin_health.serving.wsgi"
WSGI_APP = f"{WSGI_MODULE}:app"
#: Variables that the gunicorn configuration reads, not the service's settings (``load_settings``).
BIND = PREFIX + "BIND"
THREADS = PREFIX + "THREADS"
WORKERS = "WEB_CONCURRENCY"
CONFIG_FILE = PREFIX + "CONFIG_FILE"
#: ``host:port`` (a name, an IPv4 address or a bracketed IPv6 one), ``unix:PATH`` or ``fd://N``, as gunicorn binds.
_BIND = re.compile(r"(?:(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):(?P<port>[0-9]{1,5})|unix:.+|fd://[0-9]+)")


class ServiceScript(ScriptInfo):
    """Finds the service's app as ``flask --app wsgi`` does, by importing the packaged WSGI module (built once, from
    the environment's settings; never from the current directory's ``wsgi.py``). It names no factory, so
    ``check`` reads the settings without building the app (``cli._base_settings``)."""

    def __init__(self) -> None:
        super().__init__(set_debug_flag=False, load_dotenv_defaults=False)

    def load_app(self) -> Flask:
        """The app of :mod:`plugin_health.serving.wsgi` (a bad setting exits naming the variable)."""
        app: Flask = importlib.import_module(WSGI_MODULE).app
        return app


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="plugin-health", prog_name="plugin-health")
@click.pass_context
def main(ctx: click.Context) -> None:
    """Host plugins with error isolation and serve their health over HTTP.

    Settings come from PLUGIN_HEALTH_* environment variables (and the TOML file PLUGIN_HEALTH_CONFIG_FILE names);
    the options of serve set them for the service it runs. The read commands (list, health, history, watch,
    diagram) read the store of the instance those settings name: run them where the service runs, with its settings
    (its PLUGIN_HEALTH_RUN_DIR, ./run by default, or its PLUGIN_HEALTH_STORE_URL). Exit status: 0 fine, 1 unhealthy
    (or a failed check), 2 a caller's mistake.
    """
    if ctx.obj is None:
        ctx.obj = ServiceScript()


for _name, _command in cli.plugins.commands.items():
    main.add_command(_command, _name)


def _check_bind(value: str) -> None:
    """Refuse what gunicorn could not listen on, naming the variable."""
    match = _BIND.fullmatch(value.strip())
    if match is None or int(match["port"] or 0) > 65535:
        raise ConfigError(BIND, value, "HOST:PORT (a port up to 65535), unix:PATH or fd://N")


def _check_count(variable: str, value: str) -> None:
    """Refuse a count below one, naming the variable."""
    if not value.strip().isdigit() or int(value) < 1:
        raise ConfigError(variable, value, "a whole number >= 1")


def _variable(assignment: str) -> tuple[str, str]:
    """``NAME=VALUE`` of ``--set``: the variable (``PLUGIN_HEALTH_NAME``, given with or without the prefix, in any
    case) and its value."""
    name, equals, value = assignment.partition("=")
    name = name.strip().upper()
    if not equals or not name:
        raise cli.UsageError(f"--set {assignment!r}: expected NAME=VALUE (a setting, such as health_interval=5)")
    return (name if name.startswith(PREFIX) else PREFIX + name), value


def serve_environment(variables: Mapping[str, str], environ: Mapping[str, str]) -> dict[str, str]:
    """The environment gunicorn runs in: ``environ`` with ``variables``, once each setting is valid.

    The service's settings are checked by ``load_settings`` (an unknown one refused with the list of those it
    knows), the gunicorn configuration's own (bind, threads, workers) here; a bad one is a usage error naming its
    variable, before gunicorn starts.
    """
    merged = {**environ, **variables}
    settings = {k: v for k, v in variables.items() if k not in (BIND, THREADS, WORKERS, CONFIG_FILE)}
    try:
        check_url(load_settings(settings, merged).store_url)
        if BIND in merged:
            _check_bind(merged[BIND])
        for variable in (THREADS, WORKERS):
            if variable in merged:
                _check_count(variable, merged[variable])
    except ConfigError as err:
        raise cli.UsageError(str(err)) from err
    return merged


def gunicorn_command(options: Sequence[str] = ()) -> list[str]:
    """gunicorn with the packaged configuration and app, ``options`` passed on as they are."""
    return [sys.executable, "-m", "gunicorn", "-c", GUNICORN_CONFIG, *options, WSGI_APP]


@main.command()
@click.option("--plugins", "plugin_path", metavar="DIR[:DIR...]",
              help=f"Plugin directories ({PREFIX}PLUGIN_PATH; default: the bundled examples).")
@click.option("--bind", "-b", metavar="HOST:PORT", help=f"Where to listen ({BIND}; default: 127.0.0.1:8000).")
@click.option("--workers", "-w", metavar="N", help=f"gunicorn workers ({WORKERS}; default: 2 per core + 1, at most 8).")
@click.option("--store", "store_url", metavar="URL",
              help=f"Where states are shared: sqlite:///PATH, redis://HOST:PORT/DB, memory:// ({PREFIX}STORE_URL).")
@click.option("--run-dir", metavar="DIR",
              help=f"The embedded store, host lock and metrics ({PREFIX}RUN_DIR; default: ./run).")
@click.option("--instance", metavar="ID", help=f"This instance's id among those sharing Redis ({PREFIX}INSTANCE).")
@click.option("--config", "config_file", metavar="FILE", help=f"A TOML file of settings ({CONFIG_FILE}).")
@click.option("--set", "-s", "assignments", metavar="NAME=VALUE", multiple=True,
              help=f"Any other setting, e.g. -s health_interval=5 ({PREFIX}NAME). Give the admin token in the "
                   "environment or the config file, not here: a command line is visible to every local user.")
@click.argument("gunicorn_options", nargs=-1, metavar="[-- GUNICORN_OPTION...]")
def serve(plugin_path: str | None, bind: str | None, workers: str | None, store_url: str | None,
          run_dir: str | None, instance: str | None, config_file: str | None, assignments: tuple[str, ...],
          gunicorn_options: tuple[str, ...]) -> None:
    """Serve the plugins under gunicorn: its master, the core process that hosts the plugins, gevent workers.

    Each option sets the variable it names for the service (over the environment). Options after -- go to
    gunicorn as they are (plugin-health serve -- -k gthread). Stop it with SIGTERM or Ctrl-C.
    """
    variables = dict(_variable(assignment) for assignment in assignments)
    given = {PREFIX + "PLUGIN_PATH": plugin_path, BIND: bind, WORKERS: workers, PREFIX + "STORE_URL": store_url,
             PREFIX + "RUN_DIR": run_dir, PREFIX + "INSTANCE": instance, CONFIG_FILE: config_file}
    variables.update({variable: value for variable, value in given.items() if value is not None})
    environ = serve_environment(variables, os.environ)
    command = gunicorn_command(gunicorn_options)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(command[0], command, environ)
