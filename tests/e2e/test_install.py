"""End to end from a wheel: built from this tree, installed in a fresh venv (no system site packages, run outside
the repository with no PYTHONPATH), then ``plugin-health check`` over the examples the wheel carries, and
``plugin-health serve`` over a plugin directory of the test's, read over HTTP and by ``plugin-health list``,
stopped with SIGTERM, leaving no process behind.

The wheel's dependencies come from the configured package index, as any ``pip install`` of it would get them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

from e2e.server import ROOT, Server, alive, cmdline, free_port, process_table, wait_for

pytestmark = pytest.mark.slow

#: What a wheel is built from (a copy, so that the build leaves nothing in the tree: build/, *.egg-info).
BUILD_INPUTS = ("pyproject.toml", "setup.cfg", "README.md", "plugin_health")
#: Seconds each step may take: building, creating the venv, installing, a command, the service starting.
STEP_TIMEOUT = 300


@dataclass(frozen=True)
class Installed:
    """A fresh venv with the wheel installed, and a directory outside the repository to run it in."""

    venv: Path
    work: Path
    env: Mapping[str, str]

    def bin(self, name: str) -> str:
        """A script of the venv."""
        return str(self.venv / "bin" / name)

    def run(self, *argv: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run a command of the venv in its working directory."""
        return subprocess.run(argv, cwd=self.work, env=dict(self.env), capture_output=True, text=True,
                              timeout=timeout, check=False)


def fresh_environment(venv: Path) -> dict[str, str]:
    """This environment without anything that would reach the repository or another venv (PYTHONPATH, the
    service's settings), with the venv first on PATH."""
    dropped = ("PYTHON", "PLUGIN_HEALTH_", "FLASK_", "GUNICORN_", "PROMETHEUS_", "VIRTUAL_ENV")
    env = {k: v for k, v in os.environ.items() if not k.startswith(dropped) and k != "WEB_CONCURRENCY"}
    shared = str(Path(sys.executable).parent)
    path = [part for part in env.get("PATH", "").split(os.pathsep) if part and part != shared]
    env["PATH"] = os.pathsep.join([str(venv / "bin"), *path])
    return env


def checked(done: subprocess.CompletedProcess[str], what: str) -> subprocess.CompletedProcess[str]:
    """``done``, after asserting that it succeeded."""
    assert done.returncode == 0, f"{what} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
    return done


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Installed]:
    """The wheel of this tree, installed in a new venv, timed (the times are printed with -s)."""
    tmp = tmp_path_factory.mktemp("install")
    source, dist, venv, work = tmp / "source", tmp / "dist", tmp / "venv", tmp / "work"
    source.mkdir()
    work.mkdir()
    for name in BUILD_INPUTS:
        origin = ROOT / name
        if origin.is_dir():
            shutil.copytree(origin, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(origin, source / name)
    env = fresh_environment(venv)
    started = time.monotonic()
    checked(subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(dist), str(source)],
                           cwd=tmp, env=env, capture_output=True, text=True, timeout=STEP_TIMEOUT, check=False),
            "pip wheel")
    [wheel] = dist.glob("plugin_health-*.whl")
    built = time.monotonic()
    checked(subprocess.run([sys.executable, "-m", "venv", str(venv)], cwd=tmp, env=env, capture_output=True,
                           text=True, timeout=STEP_TIMEOUT, check=False), "python -m venv")
    checked(subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", str(wheel)], cwd=work,
                           env=env, capture_output=True, text=True, timeout=STEP_TIMEOUT, check=False), "pip install")
    done = time.monotonic()
    print(f"\nwheel built in {built - started:.1f} s, venv created and wheel installed in {done - built:.1f} s")
    yield Installed(venv, work, env)
    shutil.rmtree(tmp, ignore_errors=True)  # a venv is some 100 MB


def test_the_wheel_installs_a_package_that_owes_nothing_to_the_repository(installed: Installed) -> None:
    done = checked(installed.run(installed.bin("python"), "-c", "import json, sys, plugin_health; "
                                 "print(json.dumps([plugin_health.__file__, sys.path]))"), "import")
    module, path = json.loads(done.stdout)
    assert Path(module).is_relative_to(installed.venv)
    assert Path(module).parts[-3:] == ("site-packages", "plugin_health", "__init__.py")
    assert not [entry for entry in path if entry and Path(entry).resolve().is_relative_to(ROOT)]
    assert "include-system-site-packages = false" in (installed.venv / "pyvenv.cfg").read_text()
    version = checked(installed.run(installed.bin("plugin-health"), "--version"), "--version")
    assert version.stdout == "plugin-health, version 0.1.0\n"
    helped = checked(installed.run(installed.bin("plugin-health"), "--help"), "--help")
    assert [line.split()[0] for line in helped.stdout.split("Commands:\n")[1].splitlines()] == [
        "check", "diagram", "health", "history", "list", "serve", "watch"]


def test_check_finds_the_examples_the_wheel_carries(installed: Installed) -> None:
    # The default plugin path is the bundled examples: billing fails until configured, weather lacks a dependency.
    done = installed.run(installed.bin("plugin-health"), "check")
    assert (done.returncode, done.stdout.splitlines()[-1]) == (1, "2 of 5 plugins failed the check"), done.stderr
    assert [line.split(":")[0] for line in done.stdout.splitlines()[:-1]] == ["billing", "weather"]


def test_serve_hosts_the_plugins_answers_and_stops_leaving_nothing(installed: Installed, tmp_path: Path) -> None:
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "greeter.py").write_text(
        "from plugin_health import Plugin, tool\n\n\nclass Greeter(Plugin):\n    version = '1.2.3'\n\n"
        "    @tool\n    def hello(self, who: str) -> str:\n        return f'hello {who}'\n"
    )
    port = free_port()
    log = tmp_path / "serve.log"
    started = time.monotonic()
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [installed.bin("plugin-health"), "serve", "--plugins", str(plugins), "--bind", f"127.0.0.1:{port}",
             "--workers", "2"],
            cwd=installed.work, env=dict(installed.env), stdout=out, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    server = Server(process, port, log, installed.work / "run")
    try:
        def ready() -> bool:
            assert process.poll() is None, log.read_text()
            try:
                return server.get("/readyz", timeout=2.0).status == 200
            except OSError:
                return False

        wait_for(ready, 60, "plugin-health serve to be ready")
        print(f"\nserving {time.monotonic() - started:.1f} s after plugin-health serve started")
        # The command became gunicorn's master (exec), of the venv's interpreter, with a core process beside it.
        assert cmdline(process.pid).startswith(f"{installed.bin('python')} -m gunicorn -c "
                                               "python:plugin_health.serving.gunicorn_conf")
        assert server.host_pid() is not None
        wait_for(lambda: len(server.workers()) == 2, 10, "two workers")
        health = server.get("/v1/plugins/greeter/health")
        assert health.status == 200
        assert (json.loads(health.body)["state"], json.loads(health.body)["version"]) == ("RUNNING", "1.2.3")
        readyz = server.get("/readyz")
        assert (readyz.status, readyz.text) == (200, "ok")
        listed = checked(installed.run(installed.bin("plugin-health"), "list", "--json", timeout=60), "list")
        assert [(p["name"], p["state"]) for p in json.loads(listed.stdout)] == [("greeter", "RUNNING")]
    finally:
        status = server.stop()  # SIGTERM, then waits for it (30 s) and kills whatever is left
    assert status == 0, log.read_text()

    def left() -> list[str]:
        return [cmdline(pid) for pid in process_table() if alive(pid) and (pid in server.seen
                                                                             or str(installed.venv) in cmdline(pid))]

    wait_for(lambda: not left(), 10, "every process of the service to end")
    assert len(server.seen) >= 5  # the core, its runner (guard and child) and the two workers were seen, and ended
    assert "Traceback" not in log.read_text()
