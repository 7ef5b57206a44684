"""Operator actions and tool calls over HTTP: the token, every status, and what each action changes."""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from waiting import wait_for

from plugin_health import create_app
from plugin_health.app import EXTENSION
from plugin_health.errors import PluginBusyError
from plugin_health.testing import (
    PluginHostFactory,
    assert_history,
    assert_illegal,
    assert_states,
    run_host_state_machine,
)

TOKEN = "s3cret-operator-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}

PLUGINS = {
    "core": """
        critical = True
        @tool
        def echo(self, *args, **kwargs):
            return {"args": list(args), "kwargs": kwargs}
        @tool
        def boom(self):
            raise ValueError("password=hunter2")
        @tool
        def hang(self):
            import time
            time.sleep(30)
        @tool
        def lies(self):
            return object()
    """,
    "user": "requires = ('core',)\n@tool\ndef hello(self):\n    return 'hi'\n",
    "broken": "def initialize(self, context):\n    raise RuntimeError('no database')\n",
    "crashy": """
        isolation = 'process'
        @tool
        def crash(self):
            import os
            os._exit(9)
    """,
}


def write_plugins(directory: Path) -> None:
    for name, body in PLUGINS.items():
        (directory / f"{name}.py").write_text(
            "from plugin_health import Plugin, tool\n\nclass P(Plugin):\n    timeout = 0.5\n"
            + textwrap.indent(textwrap.dedent(body), "    ")
        )


def failing_while_flagged(directory: Path, name: str, method: str) -> Path:
    """Write plugin ``name`` whose ``method`` raises while the returned flag file exists (it does, at first)."""
    flag = directory / f"{name}.flag"
    flag.touch()
    (directory / f"{name}.py").write_text(
        "from pathlib import Path\nfrom plugin_health import Plugin\n\nclass P(Plugin):\n"
        f"    def {method}:\n        if Path({str(flag)!r}).exists():\n            raise OSError('not yet')\n"
    )
    return flag


def build(directory: Path, **config: Any) -> Flask:
    settings = {"plugin_path": str(directory), "store_url": "memory://", "health_interval": 3600,
                "admin_token": TOKEN, "max_restarts": 0, **config}
    return create_app(settings)


@pytest.fixture
def app(tmp_path: Path) -> Iterator[Flask]:
    write_plugins(tmp_path)
    app = build(tmp_path)
    yield app
    app.extensions[EXTENSION].shutdown()


def problem(response: Any, status: int, fragment: str = "") -> dict[str, Any]:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/problem+json"
    body: dict[str, Any] = response.get_json()
    assert body["status"] == status
    assert fragment in body["detail"]
    assert "hunter2" not in response.get_data(as_text=True)
    return body


def state(client: FlaskClient, name: str) -> tuple[str, str | None]:
    body = client.get(f"/v1/plugins/{name}/health").get_json()
    return body["state"], body["reason"]


ACTIONS = ["restart", "disable", "enable"]


@pytest.mark.parametrize("action", [*ACTIONS, "tools/echo"])
def test_without_a_token_nothing_happens(client: FlaskClient, action: str) -> None:
    before = client.get("/v1/plugins/").get_json()
    response = client.post(f"/v1/plugins/core/{action}")
    body = problem(response, 401, "Bearer")
    assert body["type"].endswith("/unauthorized")
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    problem(client.post(f"/v1/plugins/core/{action}", headers={"Authorization": "Bearer wrong"}), 401)
    problem(client.post(f"/v1/plugins/core/{action}", headers={"Authorization": f"Basic {TOKEN}"}), 401)
    assert client.get("/v1/plugins/").get_json() == before


@pytest.mark.parametrize("action", [*ACTIONS, "tools/echo"])
def test_with_no_token_configured_every_action_is_refused(tmp_path: Path, action: str) -> None:
    write_plugins(tmp_path)
    app = build(tmp_path, admin_token="")
    try:
        client = app.test_client()
        before = client.get("/v1/plugins/").get_json()
        problem(client.post(f"/v1/plugins/core/{action}", headers=AUTH), 403, "no PLUGIN_HEALTH_ADMIN_TOKEN")
        assert client.get("/v1/plugins/").get_json() == before
    finally:
        app.extensions[EXTENSION].shutdown()


@pytest.mark.parametrize("action", [*ACTIONS, "tools/echo"])
def test_unknown_and_invalid_plugins(client: FlaskClient, action: str) -> None:
    problem(client.post(f"/v1/plugins/nobody/{action}", headers=AUTH), 404, "unknown plugin 'nobody'")
    problem(client.post(f"/v1/plugins/{'x' * 101}/{action}", headers=AUTH), 400)


def test_restart_brings_a_failed_plugin_back_and_counts(tmp_path: Path) -> None:
    flag = failing_while_flagged(tmp_path, "flaky", "initialize(self, context)")
    app = build(tmp_path)
    client = app.test_client()
    try:
        assert state(client, "flaky") == ("FAILED", "initialize failed")
        flag.unlink()  # what was wrong is fixed: the operator restarts it
        response = client.post("/v1/plugins/flaky/restart", headers=AUTH)
        assert response.status_code == 200
        body = response.get_json()
        assert (body["state"], body["restarts"]) == ("RUNNING", 1)
        triggers = [h["trigger"] for h in client.get("/v1/plugins/flaky/history").get_json()]
        assert triggers[-3:] == ["reset", "initialize", "start"]
    finally:
        app.extensions[EXTENSION].shutdown()


def test_restart_of_a_running_plugin_stops_it_first(client: FlaskClient) -> None:
    assert client.post("/v1/plugins/core/restart", headers=AUTH).get_json()["state"] == "RUNNING"
    moves = [(h["from"], h["to"], h["reason"]) for h in client.get("/v1/plugins/core/history").get_json()]
    assert moves[-4:] == [("RUNNING", "UNAVAILABLE", "stopped"), ("UNAVAILABLE", "LOADED", None),
                          ("LOADED", "INITIALIZED", None), ("INITIALIZED", "RUNNING", None)]
    assert state(client, "user") == ("RUNNING", None)  # its dependent came back with it


def test_disable_then_enable(client: FlaskClient) -> None:
    body = client.post("/v1/plugins/core/disable", headers=AUTH).get_json()
    assert (body["state"], body["reason"]) == ("UNAVAILABLE", "disabled")
    assert state(client, "user") == ("UNAVAILABLE", "dependency_unavailable: core")
    assert client.get("/readyz").status_code == 503  # a critical plugin is disabled
    body = client.post("/v1/plugins/core/enable", headers=AUTH).get_json()
    assert (body["state"], body["reason"]) == ("RUNNING", None)
    assert state(client, "user") == ("RUNNING", None)


def test_illegal_moves_are_409_with_the_state_and_what_is_allowed(client: FlaskClient) -> None:
    body = problem(client.post("/v1/plugins/core/enable", headers=AUTH), 409)
    assert (body["plugin"], body["state"], body["attempted"], body["allowed"]) == (
        "core", "RUNNING", "reset", ["fail", "make_unavailable"])
    body = problem(client.post("/v1/plugins/broken/disable", headers=AUTH), 409)
    assert (body["state"], body["allowed"]) == ("FAILED", ["reset"])
    client.post("/v1/plugins/core/disable", headers=AUTH)
    body = problem(client.post("/v1/plugins/core/disable", headers=AUTH), 409)
    assert (body["state"], body["allowed"]) == ("UNAVAILABLE", ["reset"])


def test_actions_move_each_plugin_by_the_table(plugin_host: PluginHostFactory, tmp_path: Path) -> None:
    """The actions without HTTP: every plugin's exact moves, and refusals that change nothing, on any plugin."""
    write_plugins(tmp_path)
    host = plugin_host(tmp_path)
    host.disable("core")
    assert_history(host, "core", [("RUNNING", "UNAVAILABLE", "disabled")], tail=True)
    assert_history(host, "user", [("RUNNING", "UNAVAILABLE", "dependency_unavailable: core")], tail=True)
    for name, action in [("core", "disable"), ("user", "disable"), ("broken", "disable"), ("crashy", "enable")]:
        assert_illegal(host, name, action)
    host.enable("core")
    assert_states(host, {"core": "RUNNING", "user": "RUNNING", "broken": "FAILED", "crashy": "RUNNING"})
    assert_history(host, "user", [("UNAVAILABLE", "LOADED"), ("LOADED", "INITIALIZED"), ("INITIALIZED", "RUNNING")],
                   tail=True)


def test_random_actions_follow_the_table(plugin_host: PluginHostFactory, tmp_path: Path) -> None:
    write_plugins(tmp_path)
    run_host_state_machine(plugin_host(tmp_path))


def test_disabled_stays_disabled_across_restarts_of_the_service(tmp_path: Path) -> None:
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    write_plugins(plugins)
    marker = tmp_path / "initialized"
    (plugins / "user.py").write_text(
        "from pathlib import Path\nfrom plugin_health import Plugin\n\nclass P(Plugin):\n"
        f"    def initialize(self, context):\n        Path({str(marker)!r}).touch()\n"
    )
    config = {"store_url": f"sqlite:///{tmp_path}/state.sqlite3", "host_mode": "embedded"}
    first = build(plugins, **config)
    try:
        assert first.test_client().post("/v1/plugins/user/disable", headers=AUTH).status_code == 200
    finally:
        first.extensions[EXTENSION].shutdown()
    marker.unlink()
    second = build(plugins, **config)
    try:
        client = second.test_client()
        assert state(client, "user") == ("UNAVAILABLE", "disabled")
        assert not marker.exists()  # a disabled plugin's code is loaded, never initialized
        assert client.post("/v1/plugins/user/enable", headers=AUTH).get_json()["state"] == "RUNNING"
        assert marker.exists()
    finally:
        second.extensions[EXTENSION].shutdown()


def test_tool_call_returns_the_result(client: FlaskClient) -> None:
    response = client.post("/v1/plugins/core/tools/echo", headers=AUTH,
                           json={"args": [1, "two", None], "kwargs": {"three": [3]}})
    assert response.status_code == 200
    body = response.get_json()
    assert body["result"] == {"args": [1, "two", None], "kwargs": {"three": [3]}}
    assert (body["ok"], body["error"], body["error_type"]) == (True, None, None)
    assert body["duration_ms"] >= 0
    assert client.post("/v1/plugins/core/tools/echo", headers=AUTH).get_json()["result"] == {"args": [], "kwargs": {}}


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"{not json", "not JSON"),
        (b"[1, 2]", "not valid"),
        (b'{"args": 3}', "not valid"),
        (b'{"kwargs": []}', "not valid"),
        (b'{"args": [], "extra": 1}', "not valid"),
    ],
    ids=["not-json", "array", "args-not-list", "kwargs-not-object", "unknown-field"],
)
def test_tool_call_bad_bodies_are_400(client: FlaskClient, body: bytes, fragment: str) -> None:
    response = client.post("/v1/plugins/core/tools/echo", headers={**AUTH, "Content-Type": "application/json"},
                           data=body)
    problem(response, 400, fragment)


def test_tool_call_body_is_bounded(client: FlaskClient) -> None:
    huge = b'{"args": ["' + b"x" * 70_000 + b'"]}'
    problem(client.post("/v1/plugins/core/tools/echo", headers=AUTH, data=huge), 413)


def tool_problem(response: Any, status: int, slug: str, error_type: str) -> dict[str, Any]:
    """A tool failure: problem+json with the sandbox result's fields as members."""
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/problem+json"
    body: dict[str, Any] = response.get_json()
    assert body["type"] == f"https://plugin-health.dev/problems/{slug}"
    assert (body["status"], body["ok"], body["result"], body["error_type"]) == (status, False, None, error_type)
    assert {"type", "title", "status", "detail", "ok", "result", "error", "error_type", "duration_ms"} <= set(body)
    assert isinstance(body["duration_ms"], float)
    assert "hunter2" not in body["detail"]
    return body


def test_tool_call_status_mapping(client: FlaskClient) -> None:
    problem(client.post("/v1/plugins/core/tools/nothing", headers=AUTH), 404, "no tool 'nothing'")
    problem(client.post("/v1/plugins/broken/tools/anything", headers=AUTH), 404)
    failed = tool_problem(client.post("/v1/plugins/core/tools/boom", headers=AUTH), 502, "tool-failed", "ValueError")
    assert failed["error"] == "password=hunter2"  # the bearer of the token may see details
    assert "boom" in failed["detail"]
    timed_out = tool_problem(client.post("/v1/plugins/core/tools/hang", headers=AUTH), 504, "tool-timeout",
                             "PluginTimeoutError")
    assert timed_out["duration_ms"] > 0
    tool_problem(client.post("/v1/plugins/core/tools/lies", headers=AUTH), 502, "tool-failed",
                 "UnserializableResultError")
    client.post("/v1/plugins/core/disable", headers=AUTH)
    body = problem(client.post("/v1/plugins/user/tools/hello", headers=AUTH), 503, "not RUNNING")
    assert body["state"] == "UNAVAILABLE"


def test_a_busy_plugin_is_a_429_problem_with_the_result_fields(
    app: Flask, client: FlaskClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    def busy(name: str, *args: object, **kwargs: object) -> None:
        raise PluginBusyError(name, 16)

    monkeypatch.setattr(app.extensions[EXTENSION].control, "run_tool", busy)
    response = client.post("/v1/plugins/core/tools/echo", headers=AUTH)
    body = tool_problem(response, 429, "plugin-busy", "PluginBusyError")
    assert response.headers["Retry-After"] == "1"
    assert (body["plugin"], body["tool"], body["queue_limit"], body["duration_ms"]) == ("core", "echo", 16, 0.0)
    assert "16 calls waiting" in body["error"]


def test_a_successful_tool_call_stays_plain_json(client: FlaskClient) -> None:
    response = client.post("/v1/plugins/core/tools/echo", headers=AUTH)
    assert (response.status_code, response.mimetype) == (200, "application/json")
    assert set(response.get_json()) == {"ok", "result", "error", "error_type", "duration_ms"}


def test_a_crash_in_a_tool_is_502_and_fails_the_plugin(client: FlaskClient) -> None:
    response = client.post("/v1/plugins/crashy/tools/crash", headers=AUTH)
    tool_problem(response, 502, "tool-failed", "PluginCrashedError")
    # Blamed for its runner's death: FAILED, and quarantined into a runner of its own from then on.
    assert state(client, "crashy") == ("FAILED", "quarantined into a runner of its own: plugin 'crashy' crash: "
                                                 "its runner died (exit code 9)")


def test_details_never_shown_when_configured(tmp_path: Path) -> None:
    write_plugins(tmp_path)
    app = build(tmp_path, show_details="never")
    try:
        response = app.test_client().post("/v1/plugins/core/tools/boom", headers=AUTH)
        body = tool_problem(response, 502, "tool-failed", "ValueError")
        assert body["error"] is None
    finally:
        app.extensions[EXTENSION].shutdown()


def test_an_operator_restart_clears_the_restart_limit(tmp_path: Path) -> None:
    flag = failing_while_flagged(tmp_path, "stubborn", "start(self)")
    app = build(tmp_path, max_restarts=1, backoff_base=0.05, backoff_max=0.05)
    client = app.test_client()
    try:
        wait_for(lambda: state(client, "stubborn") == ("FAILED", "restart limit reached"), timeout=10)
        body = client.post("/v1/plugins/stubborn/restart", headers=AUTH).get_json()
        assert (body["state"], body["reason"]) == ("FAILED", "start failed")  # the limit is cleared: retried again
        flag.unlink()
        # the automatic restart the operator's restart gave back
        wait_for(lambda: state(client, "stubborn")[0] == "RUNNING", timeout=10)
    finally:
        app.extensions[EXTENSION].shutdown()
