"""The ``flask plugins`` commands: outputs, exit statuses, the isolated ``check``, and a real ``flask`` process."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result
from flask import Flask

from plugin_health import create_app, diagrams
from plugin_health.api.schemas import ClusterDocument
from plugin_health.app import EXTENSION, Service
from plugin_health.diagrams import RendererUnavailableError
from plugin_health.lifecycle import PluginLifecycleState
from tests.test_cluster_api import fake_cluster

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "t0ken-for-tests"
SECRET = "password=hunter2 at /etc/secret"

PLUGINS = {
    "core": "critical = True\nversion = '2.0'\n",
    "sick": "def health_check(self):\n    return False\n",
    "broken": f"def initialize(self, context):\n    raise RuntimeError({SECRET!r})\n",
    "needy": "requires = ('missing>=1',)\n",
    "user": "requires = ('core>=1.5',)\n",
}
# stop() leaves a mark beside the plugin, so that a test can see that ``check`` shut its host down.
GOOD = {
    "alpha": "def stop(self):\n    import pathlib\n    pathlib.Path(__file__).with_suffix('.stopped').touch()\n",
    "beta": "version = '1.0'\ndef health_check(self):\n    return True\n",
}


def write_plugins(directory: Path, plugins: dict[str, str]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, body in plugins.items():
        (directory / f"{name}.py").write_text(
            "from plugin_health import Plugin, tool\n\nclass P(Plugin):\n" + textwrap.indent(body or "pass\n", "    ")
        )
    return directory


def build(directory: Path, **config: Any) -> Flask:
    return create_app({"plugin_path": str(directory), "store_url": "memory://", "health_interval": 3600,
                       "admin_token": TOKEN, **config})


@pytest.fixture
def app(tmp_path: Path) -> Iterator[Flask]:
    app = build(write_plugins(tmp_path / "service", PLUGINS))
    yield app
    app.extensions[EXTENSION].shutdown()


def invoke(app: Flask, *args: str) -> Result:
    result: Result = app.test_cli_runner().invoke(args=["plugins", *args])
    assert "Traceback" not in result.output
    return result


def table(text: str) -> list[list[str]]:
    return [re.split(r"\s{2,}", line) for line in text.splitlines()]


def test_list_is_a_table_ordered_by_name(app: Flask) -> None:
    result = invoke(app, "list")
    assert result.exit_code == 0
    rows = table(result.stdout)
    assert rows[0] == ["NAME", "STATE", "VERSION", "REASON", "ERROR_TYPE", "SINCE", "RESTARTS"]
    assert [row[:5] for row in rows[1:]] == [
        ["broken", "FAILED", "0.0.0", "initialize failed", "RuntimeError"],
        ["core", "RUNNING", "2.0", "-", "-"],
        ["needy", "UNAVAILABLE", "0.0.0", "dependency_missing: missing is not installed", "-"],
        ["sick", "RUNNING", "0.0.0", "-", "-"],
        ["user", "RUNNING", "0.0.0", "-", "-"],
    ]
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", row[5]) and row[6] == "0" for row in rows[1:])


@pytest.mark.parametrize(("state", "names"), [("FAILED", ["broken"]), ("running", ["core", "sick", "user"]),
                                              ("LOADED", [])])
def test_list_filters_by_state(app: Flask, state: str, names: list[str]) -> None:
    result = invoke(app, "list", "--state", state)
    assert result.exit_code == 0
    assert [row[0] for row in table(result.stdout)[1:]] == names
    assert [i["name"] for i in json.loads(invoke(app, "list", "--state", state, "--json").stdout)] == names


def test_list_refuses_an_unknown_state(app: Flask) -> None:
    result = invoke(app, "list", "--state", "SLEEPING")
    assert result.exit_code == 2
    assert "Invalid value for '--state'" in result.stderr
    for state in PluginLifecycleState:
        assert state.value in result.stderr


@pytest.mark.parametrize("spelling", [
    "FAILED", "failed", "Failed", "fAiLeD", "SLEEPING", "", " failed", "failed ", "runn\u0131ng", "RUNN\u0130NG",
    "\uff26\uff21\uff29\uff2c\uff25\uff24",  # full-width FAILED
])
def test_list_takes_the_spellings_the_http_api_takes(app: Flask, spelling: str) -> None:
    response = app.test_client().get("/v1/plugins/", query_string={"state": spelling},
                                     headers={"Authorization": f"Bearer {TOKEN}"})
    result = invoke(app, "list", "--state", spelling, "--json")
    assert response.status_code in (200, 400)
    if response.status_code == 200:
        assert result.exit_code == 0, result.stderr
        assert json.loads(result.stdout) == response.get_json()
    else:
        assert result.exit_code == 2
        assert "Invalid value for '--state'" in result.stderr


def test_list_json_is_the_api_list_with_errors_shown(app: Flask) -> None:
    result = invoke(app, "list", "--json")
    assert result.exit_code == 0
    api = app.test_client().get("/v1/plugins/", headers={"Authorization": f"Bearer {TOKEN}"}).get_json()
    assert json.loads(result.stdout) == api
    assert SECRET in result.stdout


def test_list_cluster_is_a_line_per_instance_then_the_grid(app: Flask) -> None:
    result = invoke(app, "list", "--cluster")
    assert result.exit_code == 0
    me = app.extensions[EXTENSION].instance
    instances, grid = result.stdout.split("\n\n")
    rows = table(instances)
    assert rows[0] == ["INSTANCE", "STATUS", "READY", "AGE", "GONE"]
    assert len(rows) == 2
    assert rows[1][:3] == [f"{me} (self)", "warn", "yes"]  # as GET /v1/health judges it: warn, and ready
    assert re.fullmatch(r"\d+\.\d s|never beat", rows[1][3]), rows[1][3]
    assert rows[1][4] == "no"
    assert table(grid) == [
        ["PLUGIN", me],  # the id as it is, not upper-cased
        ["broken", "FAILED"],
        ["core", "RUNNING"],
        ["needy", "UNAVAILABLE"],
        ["sick", "RUNNING unhealthy"],  # RUNNING, but its last health check failed
        ["user", "RUNNING"],
    ]


def test_list_cluster_shows_every_instance_gone_or_not(app: Flask) -> None:
    app.extensions[EXTENSION].cluster = fake_cluster()
    result = invoke(app, "list", "--cluster")
    assert result.exit_code == 0
    instances, grid = result.stdout.split("\n\n")
    rows = [row[:3] + row[4:] for row in table(instances)[1:]]  # the ages are checked below
    assert rows == [
        ["a-1 (self)", "warn", "yes", "no"],
        ["b-2", "fail", "no", "gone"],
        ["c-3", "fail", "no", "no"],
        ["d-4", "fail", "no", "gone"],
    ]
    ages = [row[3] for row in table(instances)[1:]]
    assert [re.sub(r"\.\d", ".x", age) for age in ages] == ["0.x s", "60.x s", "0.x s", "never beat"]
    assert table(grid) == [
        ["PLUGIN", "a-1", "b-2", "c-3", "d-4"],
        ["core", "RUNNING", "RUNNING", "FAILED", "RUNNING"],
        ["extra", "-", "-", "RUNNING", "-"],  # only c-3 has it
        ["sick", "RUNNING stale", "RUNNING", "-", "-"],
    ]


def test_list_cluster_json_is_the_api_cluster_with_error_types_shown(app: Flask) -> None:
    app.extensions[EXTENSION].cluster = fake_cluster()
    result = invoke(app, "list", "--cluster", "--json")
    assert result.exit_code == 0
    printed = json.loads(result.stdout)
    assert ClusterDocument().validate(printed) == {}
    api = app.test_client().get("/v1/cluster", headers={"Authorization": f"Bearer {TOKEN}"}).get_json()
    for document in (printed, api):  # heartbeat ages move on between the two
        for instance in document["instances"]:
            instance.pop("age")
    assert printed == api
    assert printed["instances"][2]["plugins"]["core"]["error_type"] == "SecretNamedError"  # an operator's view
    assert "hunter2" not in result.stdout


def test_list_cluster_takes_no_state(app: Flask) -> None:
    result = invoke(app, "list", "--cluster", "--state", "FAILED")
    assert (result.exit_code, result.stdout) == (2, "")
    assert "--state and --cluster cannot be combined" in result.stderr


@pytest.mark.parametrize(("name", "status"), [("core", 0), ("user", 0), ("sick", 1), ("broken", 1), ("needy", 1)])
def test_health_exit_status(app: Flask, name: str, status: int) -> None:
    result = invoke(app, "health", name)
    assert result.exit_code == status
    body = json.loads(result.stdout)
    assert (body["name"], body["healthy"]) == (name, status == 0)
    api = app.test_client().get(f"/v1/plugins/{name}/health", headers={"Authorization": f"Bearer {TOKEN}"})
    assert body == api.get_json()


def test_health_shows_the_error(app: Flask) -> None:
    body = json.loads(invoke(app, "health", "broken").stdout)
    assert (body["state"], body["reason"], body["error_type"], body["error"]) == (
        "FAILED", "initialize failed", "RuntimeError", SECRET)


@pytest.mark.parametrize(("command", "name", "message"), [
    ("health", "ghost", "Error: unknown plugin 'ghost'"),
    ("history", "ghost", "Error: unknown plugin 'ghost'"),
    ("health", "semi;colon", "Error: invalid plugin name 'semi;colon'"),
    ("history", "a" * 101, "Error: invalid plugin name"),
    ("health", "../etc", "Error: invalid plugin name '../etc'"),
])
def test_unknown_or_invalid_name_is_2(app: Flask, command: str, name: str, message: str) -> None:
    result = invoke(app, command, name)
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr.startswith(message)


def test_history_table_oldest_first(app: Flask) -> None:
    result = invoke(app, "history", "broken")
    assert result.exit_code == 0
    rows = table(result.stdout)
    assert rows[0] == ["INSTANCE", "FROM", "TO", "TRIGGER", "REASON", "ERROR_TYPE", "AT"]
    here = app.extensions["plugin_health"].instance
    assert [row[:6] for row in rows[1:]] == [
        [here, "-", "LOADED", "load", "-", "-"],
        [here, "LOADED", "FAILED", "fail", "initialize failed", "RuntimeError"],
    ]


def test_history_json_is_the_api_history(app: Flask) -> None:
    result = invoke(app, "history", "broken", "--json")
    assert result.exit_code == 0
    api = app.test_client().get("/v1/plugins/broken/history", headers={"Authorization": f"Bearer {TOKEN}"})
    assert json.loads(result.stdout) == api.get_json()
    assert json.loads(result.stdout)[-1]["error"] == SECRET


def stream_data(app: Flask, count: int, **headers: str) -> list[dict[str, Any]]:
    """The data of the first ``count`` events of GET /v1/events sent with ``headers``."""
    response = app.test_client().get("/v1/events", headers=headers, buffered=False)
    found: list[dict[str, Any]] = []
    try:
        for chunk in response.response:
            text = chunk.decode() if isinstance(chunk, bytes) else chunk
            found += [json.loads(line.removeprefix("data: ")) for line in text.splitlines() if line.startswith("data:")]
            if len(found) >= count:
                return found[:count]
    finally:
        response.close()
    raise AssertionError(f"the stream ended after {found}")


def test_watch_since_prints_what_get_v1_events_sends(app: Flask) -> None:
    """Same source, same entries: the store's transitions after a sequence number (here: all of them)."""
    result = invoke(app, "watch", "--since", "0", "--count", "4", "--json")
    assert result.exit_code == 0
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert lines == stream_data(app, 4, **{"Last-Event-ID": "0", "Authorization": f"Bearer {TOKEN}"})
    assert (lines[0]["plugin"], lines[0]["from"], lines[0]["to"]) == ("broken", None, "LOADED")


def test_watch_prints_a_transition_as_it_happens(app: Flask) -> None:
    def disable_soon() -> None:
        time.sleep(0.3)
        app.test_client().post("/v1/plugins/sick/disable", headers={"Authorization": f"Bearer {TOKEN}"})

    worker = threading.Thread(target=disable_soon)
    started = time.monotonic()
    worker.start()
    try:
        result = invoke(app, "watch", "--count", "1", "--timeout", "20")
    finally:
        worker.join()
    assert result.exit_code == 0
    assert time.monotonic() - started < 5
    [line] = result.stdout.splitlines()
    at, instance, plugin, move, trigger, why = re.split(r"\s{2,}", line)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", at)  # ISO 8601, UTC
    assert (instance, plugin, move, trigger, why) == (
        app.extensions[EXTENSION].instance, "sick", "RUNNING -> UNAVAILABLE", "make_unavailable", "disabled")


def test_watch_ends_after_its_timeout_with_nothing_to_say(app: Flask) -> None:
    started = time.monotonic()
    result = invoke(app, "watch", "--timeout", "0.4", "--json")
    assert (result.exit_code, result.stdout) == (0, "")
    assert 0.4 <= time.monotonic() - started < 3


def test_watch_line_of_a_failure_and_of_a_first_state(app: Flask) -> None:
    result = invoke(app, "watch", "--since", "0", "--timeout", "0.2")
    broken = [re.split(r"\s{2,}", line)[2:] for line in result.stdout.splitlines() if "  broken  " in line]
    # Its error message too: the CLI runs with operator rights.
    assert broken == [["broken", "(new) -> LOADED", "load"],
                      ["broken", "LOADED -> FAILED", "fail", f"initialize failed: RuntimeError: {SECRET}"]]


@pytest.mark.parametrize("args", [("--count", "0"), ("--timeout", "0"), ("--since", "-1"), ("--count", "x")])
def test_watch_mistakes_are_2(app: Flask, args: tuple[str, ...]) -> None:
    result = invoke(app, "watch", *args)
    assert result.exit_code == 2
    assert "Error: Invalid value" in result.output


def test_diagram_counts_plugins_per_state(app: Flask) -> None:
    result = invoke(app, "diagram", "--format", "mermaid")
    assert result.exit_code == 0
    for label in ('"LOADED (0)"', '"RUNNING (3)"', '"FAILED (1)"', '"UNAVAILABLE (1)"'):
        assert label in result.stdout
    # Nothing highlighted: each state in its own colour.
    assert re.findall(r"Class \w+ (\w+)", result.stdout) == [f"s_{s.value.lower()}" for s in PluginLifecycleState]
    # The arrows count the transitions in the histories: GET /v1/lifecycle/diagram's picture.
    assert "LOADED --> INITIALIZED: initialize (3)" in result.stdout
    assert result.stdout == app.test_client().get("/v1/lifecycle/diagram?format=mermaid").get_data(as_text=True)


def test_diagram_highlights_a_plugin(app: Flask) -> None:
    result = invoke(app, "diagram", "--format", "MERMAID", "--plugin", "broken")
    assert result.exit_code == 0
    assert result.stdout.startswith('---\ntitle: "broken"\n---\n')
    assert "Class FAILED s_failed_current" in result.stdout
    assert "LOADED --> FAILED: fail (1)" in result.stdout  # its own history
    assert result.stdout == app.test_client().get("/v1/plugins/broken/diagram?format=mermaid").get_data(as_text=True)


@pytest.mark.skipif("svg" not in diagrams.available_formats(), reason="no SVG renderer here")
def test_diagram_to_a_file(app: Flask, tmp_path: Path) -> None:
    out = tmp_path / "lifecycle.svg"
    result = invoke(app, "diagram", "--plugin", "core", "--output", str(out))
    assert (result.exit_code, result.stdout) == (0, "")
    assert out.read_bytes() == app.test_client().get("/v1/plugins/core/diagram").get_data()
    assert b"<svg" in out.read_bytes()


@pytest.mark.parametrize(("args", "message"), [
    (("--plugin", "ghost"), "Error: unknown plugin 'ghost'"),
    (("--format", "png"), "Invalid value for '--format'"),
    (("--format", "mermaid", "--output", "no/such/dir/out.mmd"), "Error: cannot write 'no/such/dir/out.mmd'"),
])
def test_diagram_mistakes_are_2(app: Flask, args: tuple[str, ...], message: str) -> None:
    result = invoke(app, "diagram", *args)
    assert result.exit_code == 2
    assert message in result.stderr


def test_diagram_without_a_renderer_is_1(app: Flask, monkeypatch: pytest.MonkeyPatch) -> None:
    def unavailable(format: str, **_: object) -> bytes:
        raise RendererUnavailableError(format, ("mermaid",), "pygraphviz is not installed")

    monkeypatch.setattr(diagrams, "render", unavailable)
    result = invoke(app, "diagram", "--format", "svg")
    assert result.exit_code == 1
    assert "cannot be rendered here (pygraphviz is not installed); available formats: mermaid" in result.stderr


def test_check_reports_every_problem(app: Flask, tmp_path: Path) -> None:
    faults = {name: PLUGINS[name] for name in ("broken", "sick", "needy")}
    directory = write_plugins(tmp_path / "faults", {**GOOD, **faults})
    result = invoke(app, "check", str(directory))
    assert result.exit_code == 1
    assert result.stdout.splitlines() == [
        f"broken: FAILED (initialize failed) RuntimeError: {SECRET}",
        "needy: UNAVAILABLE (dependency_missing: missing is not installed)",
        "sick: RUNNING (health check failed) health check returned False",
        "3 of 5 plugins failed the check",
    ]


def test_check_reports_a_health_check_error(app: Flask, tmp_path: Path) -> None:
    body = "def health_check(self):\n    raise ConnectionError('db down')\n"
    directory = write_plugins(tmp_path / "flaky", {"flaky": body})
    result = invoke(app, "check", str(directory))
    assert result.exit_code == 1
    assert result.stdout.splitlines() == [
        "flaky: RUNNING (health check failed) ConnectionError: db down", "1 of 1 plugin failed the check"]


def test_check_passes_good_plugins_and_shuts_them_down(app: Flask, tmp_path: Path) -> None:
    first, second = write_plugins(tmp_path / "one", GOOD), write_plugins(tmp_path / "two", {"gamma": ""})
    result = invoke(app, "check", str(first), str(second))
    assert (result.exit_code, result.stdout) == (0, "3 plugins OK\n")
    assert (first / "alpha.stopped").exists()


def test_check_leaves_the_service_alone(app: Flask, tmp_path: Path) -> None:
    service: Service = app.extensions[EXTENSION]
    before = (service.store.version(), service.store.snapshots(), service.store.history("core"))
    result = invoke(app, "check", str(write_plugins(tmp_path / "core", {"core": "def start(self):\n    1 / 0\n"})))
    assert result.exit_code == 1
    assert result.stdout.startswith("core: FAILED (start failed) ZeroDivisionError: division by zero\n")
    assert (service.store.version(), service.store.snapshots(), service.store.history("core")) == before


def test_check_defaults_to_the_configured_plugin_path(app: Flask) -> None:
    result = invoke(app, "check")
    assert result.exit_code == 1
    assert result.stdout.splitlines()[-1] == "3 of 5 plugins failed the check"


@pytest.mark.parametrize(("kind", "message"), [
    ("missing", "plugin directory {!r} does not exist"),
    ("file", "{!r} is not a directory"),
])
def test_check_refuses_a_bad_path(app: Flask, tmp_path: Path, kind: str, message: str) -> None:
    path = tmp_path / "plugin.py"
    if kind == "file":
        path.write_text("")
    result = invoke(app, "check", str(write_plugins(tmp_path / "ok", GOOD)), str(path))
    assert result.exit_code == 2
    assert result.stderr == f"Error: {message.format(str(path))}\n"
    assert result.stdout == ""


def test_check_refuses_a_bad_setting(app: Flask, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PLUGIN_HEALTH_BACKOFF_BASE", "soon")
    result = invoke(app, "check", str(write_plugins(tmp_path / "ok", GOOD)))
    assert result.exit_code == 2
    assert result.stderr == "Error: PLUGIN_HEALTH_BACKOFF_BASE='soon' is invalid: expected a positive number\n"


def test_check_of_an_empty_directory_fails(app: Flask, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    result = invoke(app, "check", str(tmp_path / "empty"))
    assert result.exit_code == 1
    assert result.stderr == f"Error: no plugins found in {tmp_path / 'empty'}\n"


def test_real_flask_command_lists_and_exits(tmp_path: Path) -> None:
    plugins = write_plugins(tmp_path / "plugins", {"alpha": "", "broken": PLUGINS["broken"]})
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PLUGIN_HEALTH_", "FLASK_"))}
    env.update(PLUGIN_HEALTH_PLUGIN_PATH=str(plugins), PLUGIN_HEALTH_RUN_DIR=str(tmp_path / "run"))
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "flask", "--app", "wsgi", "plugins", "list"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=30, check=False)
    elapsed = time.monotonic() - started
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    rows = table(done.stdout)
    assert [row[:5] for row in rows[1:]] == [["alpha", "RUNNING", "0.0.0", "-", "-"],
                                             ["broken", "FAILED", "0.0.0", "initialize failed", "RuntimeError"]]
    assert elapsed < 15, f"flask plugins list took {elapsed:.1f} s to exit"


def test_the_real_check_never_hosts_the_service_s_plugins(tmp_path: Path) -> None:
    checked = tmp_path / "checked"
    checked.mkdir()
    (checked / "ok.py").write_text("from plugin_health import Plugin\n\nclass P(Plugin):\n    pass\n")
    service = tmp_path / "service"
    service.mkdir()
    marker = tmp_path / "service-plugin-started"
    (service / "loud.py").write_text(
        "from pathlib import Path\nfrom plugin_health import Plugin\n\nclass P(Plugin):\n"
        f"    def start(self):\n        Path({str(marker)!r}).touch()\n"
    )
    run_dir = tmp_path / "run"
    env = {**os.environ, "PLUGIN_HEALTH_PLUGIN_PATH": str(service), "PLUGIN_HEALTH_RUN_DIR": str(run_dir)}
    done = subprocess.run([sys.executable, "-m", "flask", "--app", "wsgi", "plugins", "check", str(checked)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert (done.returncode, done.stdout.strip()) == (0, "1 plugin OK"), done.stderr
    assert not marker.exists()  # the service's own plugins were not started to check another directory
    assert not run_dir.exists()  # nor was its store touched


def test_check_survives_a_plugin_that_kills_its_process_at_import(app: Flask, tmp_path: Path) -> None:
    # Its runner dies, not the check: the plugin is reported, and the others are checked in a fresh runner.
    directory = write_plugins(tmp_path / "deadly", {**GOOD, "deadly": ""})
    deadly = directory / "deadly.py"
    deadly.write_text("import os\nos._exit(9)\n" + deadly.read_text())
    result = invoke(app, "check", str(directory))
    assert result.exit_code == 1
    lines = result.stdout.splitlines()
    assert lines[0].startswith("deadly: FAILED (import failed) PluginCrashedError"), lines
    assert lines[-1] == "1 of 3 plugins failed the check"
