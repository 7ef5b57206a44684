"""``flask --app wsgi plugins ...``: read the service's plugins, draw the lifecycle, check plugins for CI.

The read commands (``list``, ``health``, ``history``, ``watch``, ``diagram``) read the service's store, as the HTTP API
does (``list --cluster`` every instance's, as ``GET /v1/cluster`` does); ``check`` loads plugins in a throwaway
in-memory host and never touches it. The CLI runs on the server with operator rights, so plugin error messages
are always shown. Exit status: 0 fine, 1 a plugin is not
healthy (or not OK), 2 a mistake of the caller (an unknown or invalid name, a missing path, a bad setting).
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from flask import current_app, has_app_context
from flask.cli import AppGroup, ScriptInfo

from plugin_health import diagrams
from plugin_health.api.cluster import Own, cluster_document
from plugin_health.api.freshness import Horizon, present
from plugin_health.api.plugins import history_document, transition_entries
from plugin_health.api.schemas import (
    STATE_NAMES,
    parse_state,
    plugin_health_list,
    plugin_health_response,
)
from plugin_health.config import Settings, load_settings
from plugin_health.errors import ConfigError, UnknownPluginError
from plugin_health.lifecycle import PluginLifecycleState
from plugin_health.loader.registry import valid_name
from plugin_health.runtime.core import Core
from plugin_health.sandbox import PluginSandboxResult
from plugin_health.store import MemoryStore, PluginSnapshot, StateStore
from plugin_health.store.feed import BATCH, Feed
from plugin_health.supervision.policy import HEALTH_CHECK_FAILED, check_outcome

if TYPE_CHECKING:
    from plugin_health.service import Service

#: Exit status of a command whose plugin is not healthy, or of a check that found a problem.
EXIT_UNHEALTHY = 1
#: Exit status of a caller's mistake (click's own for usage errors).
EXIT_USAGE = 2

STATES = STATE_NAMES
#: Seconds between two looks of ``watch`` at the store.
WATCH_POLL = 0.2

plugins = AppGroup("plugins", help="Inspect the service's plugins, draw their lifecycle, check plugins for CI.")


class UsageError(click.ClickException):
    """A mistake of the caller: ``Error: <message>`` on stderr and exit status 2, never a traceback."""

    exit_code = EXIT_USAGE


def _service() -> Service:
    """The service of the current app."""
    value: Service = current_app.extensions["plugin_health"]
    return value


def _store() -> StateStore:
    """The store the service reads (the same as the HTTP API's)."""
    return _service().store


def _snapshot(name: str) -> PluginSnapshot:
    """The snapshot of ``name``; a usage error for an invalid or unknown name."""
    if not valid_name(name):
        raise UsageError(f"invalid plugin name {name!r}: a plugin name is 1-100 letters, digits, '_', '-' or '.'")
    snapshot = _store().snapshot(name)
    if snapshot is None:
        raise UsageError(str(UnknownPluginError(name)))
    return snapshot


def _echo_json(data: Any) -> None:
    """``data`` as indented JSON on stdout."""
    click.echo(json.dumps(data, indent=2))


def _cell(value: object) -> str:
    """One table cell on one line: ``-`` for nothing, times as ISO-8601 UTC to the second."""
    if value is None:
        return "-"
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return " ".join(str(value).split())


def format_table(header: Sequence[str], rows: Iterable[Sequence[object]], upper: bool = True) -> str:
    """Columns aligned with two spaces between them, under a header in upper case (as given, if not ``upper``)."""
    lines = [[h.upper() if upper else h for h in header], *([_cell(v) for v in row] for row in rows)]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in lines)


if TYPE_CHECKING:
    _StateParamType = click.ParamType[PluginLifecycleState]
else:
    _StateParamType = click.ParamType  # generic only from click 8.4: not subscripted at run time


class StateType(_StateParamType):
    """A lifecycle state, spelled as ``?state=`` takes it over HTTP (``parse_state``: any case)."""

    name = "state"

    def get_metavar(self, param: click.Parameter, ctx: click.Context) -> str:
        """``[LOADED|INITIALIZED|...]`` in the usage line."""
        return f"[{'|'.join(STATES)}]"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> PluginLifecycleState:
        """The state named ``value``; a usage error (exit status 2) listing the valid ones for anything else."""
        if isinstance(value, PluginLifecycleState):
            return value
        try:
            return parse_state(value)
        except ValueError as err:
            self.fail(f"{value!r} is {err}", param, ctx)


@plugins.command("list")
@click.option("--state", "wanted", type=StateType(), help="Only plugins in this state (any case).")
@click.option("--json", "as_json", is_flag=True,
              help="The JSON of GET /v1/plugins/ (with --cluster: of GET /v1/cluster) instead of a table.")
@click.option("--cluster", "cluster", is_flag=True,
              help="Every instance sharing the store: one line each, then a grid of plugins x instances.")
def list_plugins(wanted: PluginLifecycleState | None, as_json: bool, cluster: bool) -> None:
    """List every plugin, ordered by name (with --cluster: on every instance)."""
    if cluster:
        if wanted is not None:
            raise UsageError("--state and --cluster cannot be combined")
        list_cluster(as_json)
        return
    snapshots = [s for s in _store().snapshots() if wanted is None or s.state is wanted]
    horizon = Horizon()
    entries = [present(e, s, horizon) for e, s in zip(plugin_health_list.dump(snapshots), snapshots, strict=True)]
    if as_json:
        _echo_json(entries)
        return
    header = ("name", "state", "version", "reason", "error_type", "since", "restarts")
    rows = ((s.name, s.state.value, s.version, e["reason"], s.error_type, s.since, s.restarts)
            for s, e in zip(snapshots, entries, strict=True))
    click.echo(format_table(header, rows))


def cluster_cell(plugin: dict[str, Any] | None) -> str:
    """A plugin's cell of the cluster grid: its state, marked ``stale`` or ``unhealthy`` when RUNNING and not
    healthy; ``-`` where the instance has no such plugin."""
    if plugin is None:
        return "-"
    if plugin["state"] == PluginLifecycleState.RUNNING.value and not plugin["healthy"]:
        return f"{plugin['state']} {'stale' if plugin['stale'] else 'unhealthy'}"
    return str(plugin["state"])


def list_cluster(as_json: bool) -> None:
    """``list --cluster``: the document of GET /v1/cluster, as JSON or as a line per instance and a grid."""
    service = _service()
    assert service.cluster is not None  # the app sets it
    document = cluster_document(service.cluster, Own.of(service), visible=True)
    if as_json:
        _echo_json(document)
        return
    instances = document["instances"]
    click.echo(format_table(("instance", "status", "ready", "age", "gone"), (
        (f"{i['id']} (self)" if i["self"] else i["id"], i["status"], "yes" if i["ready"] else "no",
         "never beat" if i["age"] is None else f"{i['age']:.1f} s", "gone" if i["gone"] else "no")
        for i in instances)))
    click.echo()
    rows = ((name, *(cluster_cell(i["plugins"].get(name)) for i in instances)) for name in document["plugins"])
    click.echo(format_table(("PLUGIN", *(i["id"] for i in instances)), rows, upper=False))


@plugins.command()
@click.argument("name")
def health(name: str) -> None:
    """Show one plugin's health as JSON.

    Exit status 0 when it is healthy, 1 when it is not, 2 for an unknown or invalid name.
    """
    snapshot = _snapshot(name)
    entry = present(plugin_health_response.dump(snapshot), snapshot, Horizon())
    _echo_json(entry)
    if not entry["healthy"]:
        click.get_current_context().exit(EXIT_UNHEALTHY)


@plugins.command()
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="The JSON of GET /v1/plugins/NAME/history instead of a table.")
def history(name: str, as_json: bool) -> None:
    """Show one plugin's recorded transitions, oldest first."""
    entries, _ = history_document(_service(), _snapshot(name), visible=True)
    if as_json:
        _echo_json(entries)
        return
    header = ("instance", "from", "to", "trigger", "reason", "error_type", "at")
    rows = ((e["instance"], e["from"], e["to"], e["trigger"], e["reason"], e["error_type"],
             datetime.fromisoformat(e["at"])) for e in entries)
    click.echo(format_table(header, rows))


def transition_line(entry: dict[str, Any]) -> str:
    """One transition on one line, its parts two spaces apart: time (ISO 8601, UTC), instance, plugin, the move,
    its trigger, then why (reason, error type, message)."""
    why = ": ".join(str(part) for part in (entry["reason"], entry["error_type"], entry["error"]) if part)
    parts = [datetime.fromisoformat(entry["at"]), entry["instance"], entry["plugin"],
             f"{entry['from'] or '(new)'} -> {entry['to']}", entry["trigger"], *([why] if why else [])]
    return "  ".join(_cell(part) for part in parts)


@plugins.command()
@click.option("--json", "as_json", is_flag=True,
              help="Each transition as one line of JSON, as GET /v1/events sends it (JSON Lines).")
@click.option("--since", type=click.IntRange(min=0), metavar="SEQ",
              help="Start after this sequence number (an event id of GET /v1/events), not with the next transition.")
@click.option("--count", type=click.IntRange(min=1), metavar="N", help="Stop after N transitions.")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), metavar="SECONDS",
              help="Stop after this many seconds.")
def watch(as_json: bool, since: int | None, count: int | None, timeout: float | None) -> None:
    """Print this instance's transitions as they happen, until interrupted (Ctrl-C).

    The same source as GET /v1/events: the transitions the service's store records, read as they come. Error
    messages are shown (the CLI runs with operator rights).
    """
    service = _service()
    feed = Feed(service.store, since)
    deadline = None if timeout is None else time.monotonic() + timeout
    seen = 0
    try:
        while True:
            batch = feed.read()
            entries = transition_entries(((service.instance, record) for _, record in batch), visible=True)
            for entry in entries[:None if count is None else count - seen]:
                click.echo(json.dumps(entry, separators=(",", ":")) if as_json else transition_line(entry))
                seen += 1
            if (count is not None and seen >= count) or (deadline is not None and time.monotonic() >= deadline):
                return
            if len(batch) < BATCH:
                time.sleep(WATCH_POLL if deadline is None else min(WATCH_POLL, max(0, deadline - time.monotonic())))
    except KeyboardInterrupt:
        return  # Ctrl-C is how this command is meant to end: no traceback, status 0


@plugins.command()
@click.option("--format", "fmt", type=click.Choice(diagrams.FORMATS, case_sensitive=False), default="svg",
              show_default=True, help="Output format.")
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path), help="Write to FILE, not stdout.")
@click.option("--plugin", "name", metavar="NAME", help="Highlight this plugin's current state.")
def diagram(fmt: str, output: Path | None, name: str | None) -> None:
    """Draw the lifecycle state diagram.

    Each state is labelled with its number of plugins and each arrow with the transitions the histories hold; with
    --plugin, that plugin's state is highlighted and the arrows count its own transitions.
    """
    try:
        if name is not None:
            moves = diagrams.count_moves(Counter((r.source, r.dest) for r in _store().history(name)))
            data = diagrams.render(fmt, current=_snapshot(name).state, title=name, moves=moves)
        else:
            counts = dict.fromkeys(PluginLifecycleState, 0)
            for snapshot in _store().snapshots():
                counts[snapshot.state] += 1
            data = diagrams.render(fmt, counts=counts, moves=diagrams.count_moves(_store().transition_counts()))
    except diagrams.DiagramError as err:  # a renderer missing here: not the caller's mistake
        raise click.ClickException(str(err)) from err
    if output is None:
        click.echo(data, nl=False)
        return
    try:
        output.write_bytes(data)
    except OSError as err:
        raise UsageError(f"cannot write {str(output)!r}: {err.strerror}") from err


def check_settings(base: Settings, paths: Sequence[Path]) -> Settings:
    """Settings of a throwaway host: ``paths`` (or the service's plugins), in memory, no restarts, one check."""
    for path in paths or base.plugin_dirs:
        if not path.exists():
            raise UsageError(f"plugin directory {str(path)!r} does not exist")
        if not path.is_dir():
            raise UsageError(f"{str(path)!r} is not a directory")
        if os.pathsep in str(path):
            raise UsageError(f"plugin directory {str(path)!r} contains {os.pathsep!r}, the path separator")
    overrides: dict[str, Any] = {
        # Given paths are checked alone; otherwise what the service loads, entry points included.
        "plugin_path": os.pathsep.join(str(p) for p in paths) if paths else base.plugin_path,
        "entry_point_group": "" if paths else base.entry_point_group,
        "store_url": "memory://",
        "host_mode": "embedded",
        "owner_pid": 0,
        "max_restarts": 0,
        "health_interval": 3600,
        # The limits and configuration the service would give the plugins.
        "default_timeout": base.default_timeout,
        "default_memory_limit_mb": base.default_memory_limit_mb,
        "failure_threshold": base.failure_threshold,
        "history_limit": base.history_limit,
        "plugins": base.plugins,
    }
    try:
        return load_settings(overrides)
    except ConfigError as err:
        raise UsageError(str(err)) from err


def first_run(settings: Settings) -> tuple[list[PluginSnapshot], dict[str, PluginSandboxResult]]:
    """Load the plugins of ``settings`` in a throwaway in-memory host, run their first health checks, stop it.

    Returns each plugin's snapshot before the shutdown, and the result of its first health check.
    """
    host = Core(settings, MemoryStore(settings.history_limit))
    checks: dict[str, PluginSandboxResult] = {}

    def observe(name: str, method: str, isolation: str, result: PluginSandboxResult) -> None:
        if method == "health_check":
            checks.setdefault(name, result)

    host.loader.observe(observe)
    try:
        host.start(background=False)  # loads every plugin and runs one pass of health checks
        return host.store.snapshots(), checks
    finally:
        host.shutdown()


def problem(snapshot: PluginSnapshot, check: PluginSandboxResult | None) -> str | None:
    """One line on what keeps ``snapshot`` from running healthy, or None when it does."""
    if snapshot.healthy:
        return None
    reason, error_type, error = snapshot.reason, snapshot.error_type, snapshot.error
    if snapshot.state is PluginLifecycleState.RUNNING:
        reason = "health check failed"
        if check is not None:  # as the supervisor judged it: False, a fail result, a value that means nothing
            outcome = check_outcome(check)[1]
            error_type = None if outcome.error_type == HEALTH_CHECK_FAILED else outcome.error_type  # said above
            error = outcome.error
    line = f"{snapshot.name}: {snapshot.state.value}"
    if reason:
        line += f" ({reason})"
    detail = ": ".join(part for part in (error_type, error) if part)
    return " ".join(f"{line} {detail}".split())


def _base_settings() -> Settings:
    """The service's settings, without building the service when the command line names none to build.

    ``flask --app wsgi`` would import wsgi.py and so start hosting the plugins just to read the settings: the
    environment (and config file) that it would read is read here instead. An app handed over ready-made (a
    factory, or a test's CLI runner) is asked for its own.
    """
    if has_app_context():
        return _service().settings
    info = click.get_current_context().find_object(ScriptInfo)
    if info is not None and info.create_app is not None:
        service: Service = info.load_app().extensions["plugin_health"]
        return service.settings
    try:
        return load_settings()
    except ConfigError as err:
        raise UsageError(str(err)) from err


@plugins.command(with_appcontext=False)
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path), metavar="[PATH]...")
def check(paths: tuple[Path, ...]) -> None:
    """Check plugins in a throwaway host (for CI).

    Loads the plugin directories PATH (default: the configured plugins) in an isolated in-memory host, runs
    their first health checks, stops them, and prints one line per plugin that is not RUNNING and healthy.
    Exit status 0 when every plugin passes, 1 otherwise, 2 for a missing path or a bad setting.
    """
    settings = check_settings(_base_settings(), paths)
    snapshots, checks = first_run(settings)
    if not snapshots:
        where = ", ".join(str(p) for p in paths) or settings.plugin_path or "the configured plugin path"
        raise click.ClickException(f"no plugins found in {where}")
    problems = [line for s in snapshots if (line := problem(s, checks.get(s.name))) is not None]
    for line in problems:
        click.echo(line)
    count = len(snapshots)
    if problems:
        click.echo(f"{len(problems)} of {count} plugin{'s' if count != 1 else ''} failed the check")
        click.get_current_context().exit(EXIT_UNHEALTHY)
    click.echo(f"{count} plugin{'s' if count != 1 else ''} OK")
