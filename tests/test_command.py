"""The ``plugin-health`` command: serve's options as settings and its gunicorn, the read commands, the packaged
gunicorn configuration (tests/e2e/test_install.py runs it all from a wheel)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from flask import Flask
from flask.cli import ScriptInfo

from plugin_health import cli
from plugin_health.app import EXTENSION
from plugin_health.serving import command
from tests.test_cli import GOOD, PLUGINS, build, table, write_plugins

ROOT = Path(__file__).resolve().parent.parent
GUNICORN = [sys.executable, "-m", "gunicorn", "-c", "python:plugin_health.serving.gunicorn_conf"]


def clean_environment(**extra: str) -> dict[str, str]:
    """This environment without settings of the service, gunicorn or flask (PYTHONPATH stays: this tree)."""
    kept = {k: v for k, v in os.environ.items()
            if not k.startswith(("PLUGIN_HEALTH_", "FLASK_", "GUNICORN_")) and k not in ("PROMETHEUS_MULTIPROC_DIR",
                                                                                        "WEB_CONCURRENCY")}
    return {**kept, **extra}


@pytest.fixture
def executed(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, list[str], dict[str, str]]]:
    """What ``serve`` would have replaced itself with (nothing is run)."""
    for name in list(os.environ):
        if name.startswith(("PLUGIN_HEALTH_", "GUNICORN_")) or name == "WEB_CONCURRENCY":
            monkeypatch.delenv(name)
    calls: list[tuple[str, list[str], dict[str, str]]] = []
    monkeypatch.setattr(command.os, "execve", lambda path, argv, env: calls.append((path, list(argv), dict(env))))
    return calls


def run(*args: str) -> Result:
    result = CliRunner().invoke(command.main, list(args))
    assert "Traceback" not in result.output, result.output
    return result


def test_help_lists_every_command_and_version_names_the_package() -> None:
    result = run("--help")
    assert result.exit_code == 0
    listed = [line.split()[0] for line in result.stdout.split("Commands:\n")[1].splitlines()]
    assert listed == ["check", "diagram", "health", "history", "list", "serve", "watch"]
    assert run("--version").stdout.startswith("plugin-health, version ")


def test_the_read_commands_are_the_flask_cli_s_own() -> None:
    for name, made in cli.plugins.commands.items():
        assert command.main.commands[name] is made


def test_serve_runs_gunicorn_with_the_packaged_configuration_and_the_settings_its_options_name(
    executed: list[tuple[str, list[str], dict[str, str]]], tmp_path: Path
) -> None:
    result = run("serve", "--plugins", f"{tmp_path}{os.pathsep}{tmp_path}", "--bind", "127.0.0.1:9000", "-w", "3",
                 "--store", "sqlite:///state.db", "--run-dir", "var", "--instance", "web-1", "-s", "health_interval=5",
                 "--set", "PLUGIN_HEALTH_show_details=always", "--", "-k", "gthread")
    assert result.exit_code == 0, result.output
    [(path, argv, env)] = executed
    assert (path, argv) == (sys.executable, [*GUNICORN, "-k", "gthread", "plugin_health.serving.wsgi:app"])
    assert {k: v for k, v in env.items() if k.startswith("PLUGIN_HEALTH_") or k == "WEB_CONCURRENCY"} == {
        "PLUGIN_HEALTH_PLUGIN_PATH": f"{tmp_path}{os.pathsep}{tmp_path}", "PLUGIN_HEALTH_BIND": "127.0.0.1:9000",
        "WEB_CONCURRENCY": "3", "PLUGIN_HEALTH_STORE_URL": "sqlite:///state.db", "PLUGIN_HEALTH_RUN_DIR": "var",
        "PLUGIN_HEALTH_INSTANCE": "web-1", "PLUGIN_HEALTH_HEALTH_INTERVAL": "5",
        "PLUGIN_HEALTH_SHOW_DETAILS": "always",
    }
    assert env["PATH"] == os.environ["PATH"]  # the rest of the environment goes along


def test_serve_with_no_options_serves_the_defaults(executed: list[tuple[str, list[str], dict[str, str]]]) -> None:
    assert run("serve").exit_code == 0
    [(_, argv, env)] = executed
    assert argv == [*GUNICORN, "plugin_health.serving.wsgi:app"]
    assert not [k for k in env if k.startswith("PLUGIN_HEALTH_")]


@pytest.mark.parametrize(("args", "message"), [
    (["--plugins", "/nowhere"], "PLUGIN_HEALTH_PLUGIN_PATH='/nowhere' is invalid: expected existing directories, "
                                f"{os.pathsep!r}-separated ('/nowhere' does not exist)"),
    (["--bind", "localhost"], "PLUGIN_HEALTH_BIND='localhost' is invalid: expected HOST:PORT (a port up to 65535), "
                              "unix:PATH or fd://N"),
    (["--bind", "[::1]:65536"], "PLUGIN_HEALTH_BIND='[::1]:65536' is invalid: expected HOST:PORT (a port up to "
                                "65535), unix:PATH or fd://N"),
    (["-w", "0"], "WEB_CONCURRENCY='0' is invalid: expected a whole number >= 1"),
    (["-w", "many"], "WEB_CONCURRENCY='many' is invalid: expected a whole number >= 1"),
    (["--store", "postgres://db"], "PLUGIN_HEALTH_STORE_URL='postgres://db' is invalid: expected empty, memory://, "
                                   "sqlite:///path or redis://host:port/db"),
    (["--instance", "a b"], "PLUGIN_HEALTH_INSTANCE='a b' is invalid: expected 1-100 letters, digits, '_', '.', "
                            "':' or '-'"),
    (["--config", "/nowhere.toml"], "PLUGIN_HEALTH_CONFIG_FILE='/nowhere.toml' is invalid: expected a readable TOML "
                                    "file (No such file or directory)"),
    (["-s", "health_interval=soon"], "PLUGIN_HEALTH_HEALTH_INTERVAL='soon' is invalid: expected a positive number"),
    (["-s", "threads=0"], "PLUGIN_HEALTH_THREADS='0' is invalid: expected a whole number >= 1"),
    (["-s", "helth_interval=5"], "PLUGIN_HEALTH_HELTH_INTERVAL='5' is invalid: expected a known setting: "),
    (["-s", "health_interval"], "--set 'health_interval': expected NAME=VALUE (a setting, such as "
                                "health_interval=5)"),
], ids=lambda value: value[-1] if isinstance(value, list) else None)
def test_serve_refuses_a_bad_value_naming_its_variable_and_starts_nothing(
    executed: list[tuple[str, list[str], dict[str, str]]], args: list[str], message: str
) -> None:
    result = run("serve", *args)
    assert result.exit_code == 2
    assert result.stderr.startswith(f"Error: {message}")
    assert result.stderr.count("\n") == 1
    assert executed == []


def test_serve_judges_the_environment_s_values_too(
    executed: list[tuple[str, list[str], dict[str, str]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PLUGIN_HEALTH_BIND", "nowhere")
    assert run("serve").stderr.startswith("Error: PLUGIN_HEALTH_BIND='nowhere' is invalid")
    assert run("serve", "--bind", "unix:/tmp/ph.sock").exit_code == 0  # an option wins over the environment
    assert executed[0][2]["PLUGIN_HEALTH_BIND"] == "unix:/tmp/ph.sock"


def test_read_commands_read_the_app_they_are_given(tmp_path: Path) -> None:
    app: Flask = build(write_plugins(tmp_path / "service", PLUGINS))
    try:
        result = CliRunner().invoke(command.main, ["list", "--state", "failed"], obj=ScriptInfo(create_app=lambda: app))
    finally:
        app.extensions[EXTENSION].shutdown()
    assert result.exit_code == 0, result.output
    assert [row[:2] for row in table(result.stdout)[1:]] == [["broken", "FAILED"]]


def test_the_real_command_lists_and_checks_from_any_directory(tmp_path: Path) -> None:
    # No wsgi.py where it runs: the read commands load the packaged app, as flask --app wsgi loads a clone's.
    service = write_plugins(tmp_path / "service", {"alpha": "", "broken": PLUGINS["broken"]})
    checked = write_plugins(tmp_path / "checked", GOOD)
    env = clean_environment(PLUGIN_HEALTH_PLUGIN_PATH=str(service))
    listed = subprocess.run([sys.executable, "-m", "plugin_health", "list"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=60, check=False)
    assert listed.returncode == 0, listed.stderr
    assert [row[:2] for row in table(listed.stdout)[1:]] == [["alpha", "RUNNING"], ["broken", "FAILED"]]
    assert (tmp_path / "run" / "state.sqlite3").exists()  # this instance's store, as the service keeps it
    health = subprocess.run([sys.executable, "-m", "plugin_health", "health", "broken"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=60, check=False)
    assert (health.returncode, json.loads(health.stdout)["error_type"]) == (1, "RuntimeError")
    checking = subprocess.run([sys.executable, "-m", "plugin_health", "check", str(checked)], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=60, check=False)
    assert (checking.returncode, checking.stdout) == (0, "2 plugins OK\n"), checking.stderr


@pytest.mark.parametrize("argv", [["-c"], ["gunicorn", "--check-config", "wsgi:app"]],
                         ids=["another program", "a configuration check"])
def test_only_a_gunicorn_master_that_runs_spawns_its_core_as_it_reads_the_configuration(
        tmp_path: Path, argv: list[str]) -> None:
    """The packaged configuration spawns the core ahead only in a gunicorn master about to run: a program that imports
    it (a test, a tool reading its settings) or gunicorn checking it starts no process."""
    code = f"""if True:
        import os, sys
        sys.argv = {argv!r}
        import plugin_health.serving.gunicorn_conf
        print(repr(open(f"/proc/{{os.getpid()}}/task/{{os.getpid()}}/children").read()))
    """
    env = clean_environment(PLUGIN_HEALTH_RUN_DIR=str(tmp_path / "run"), PLUGIN_HEALTH_PLUGIN_PATH=str(tmp_path))
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
                          check=False)
    assert (done.returncode, done.stdout.strip()) == (0, "''"), done.stderr


def test_the_packaged_gunicorn_configuration_is_what_a_clone_s_gunicorn_conf_py_reads(tmp_path: Path) -> None:
    # gunicorn loads both as it would (the packaged module by -c python:..., the clone's file as ./gunicorn.conf.py);
    # each setting and hook is the same object, and prometheus_client, imported after, counts in the run directory.
    code = """if True:
        import json, sys
        from gunicorn.app.wsgiapp import WSGIApplication

        def load(*argv):
            sys.argv = ["gunicorn", *argv]
            return WSGIApplication("%(prog)s [OPTIONS] [APP_MODULE]").cfg

        packaged = load("-c", "python:plugin_health.serving.gunicorn_conf", "plugin_health.serving.wsgi:app")
        clone = load("wsgi:app")
        from plugin_health.serving import gunicorn_conf
        from prometheus_client import values

        names = gunicorn_conf.__all__
        print(json.dumps({
            "unknown": [name for name in names if name not in packaged.settings],
            "differ": [name for name in names if packaged.settings[name].value != clone.settings[name].value],
            "foreign": [name for name in names if callable(getattr(gunicorn_conf, name))
                        and packaged.settings[name].value is not getattr(gunicorn_conf, name)],
            "worker_class": packaged.worker_class_str, "bind": packaged.bind,
            "hooks": sorted(name for name in names if callable(getattr(gunicorn_conf, name))),
            "metrics": [values.ValueClass.__name__, gunicorn_conf.os.environ["PROMETHEUS_MULTIPROC_DIR"]],
        }))
    """
    env = clean_environment(PLUGIN_HEALTH_RUN_DIR=str(tmp_path / "run"))
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
                          check=False)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {
        "unknown": [], "differ": [], "foreign": [], "worker_class": "gevent", "bind": ["127.0.0.1:8000"],
        "hooks": ["child_exit", "on_exit", "on_starting", "post_fork", "post_worker_init", "pre_request", "when_ready",
                  "worker_exit"],
        "metrics": ["MmapedValue", str(tmp_path / "run" / "metrics")],
    }
