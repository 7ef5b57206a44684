"""Promises of the contract that broke when tried (issue 10): dependencies on every path that brings a plugin up,
a caller's mistake that is not the plugin's failure, return values that mean something, and answers that keep
secrets. Plugins run in runners, as in the service."""

from __future__ import annotations

import logging
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient

from plugin_health import PluginLifecycleManager, PluginLifecycleState, create_app
from plugin_health.app import EXTENSION
from plugin_health.errors import IllegalTransitionError

S = PluginLifecycleState
TOKEN = "promises-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def plugin(directory: Path, name: str, body: str, head: str = "") -> None:
    (directory / f"{name}.py").write_text(
        f"import os\nfrom plugin_health import Plugin, tool\n{head}\n\nclass P(Plugin):\n"
        + textwrap.indent(textwrap.dedent(body), "    ")
    )


@pytest.fixture
def plugins(tmp_path: Path) -> Path:
    directory = tmp_path / "plugins"
    directory.mkdir()
    return directory


@pytest.fixture
def make_app(plugins: Path) -> Iterator[callable]:  # type: ignore[valid-type]
    made: list[Flask] = []

    def make(**settings: object) -> Flask:
        app = create_app({"plugin_path": str(plugins), "store_url": "memory://", "admin_token": TOKEN,
                          "health_interval": 3600, "max_restarts": 0, **settings})
        made.append(app)
        return app

    yield make
    for app in made:
        app.extensions[EXTENSION].shutdown()


def state(client: FlaskClient, name: str) -> tuple[str, str | None]:
    body = client.get(f"/v1/plugins/{name}/health").get_json()
    return body["state"], body["reason"]


# -- 1. dependencies on every path --------------------------------------------------------------------------


@pytest.mark.parametrize("action", ["restart", "enable"])
def test_an_operator_cannot_start_a_plugin_whose_dependency_is_missing(
    plugins: Path, make_app: callable, action: str  # type: ignore[valid-type]
) -> None:
    plugin(plugins, "weather", "requires = ('geo>=2.0',)\n")
    client = make_app().test_client()
    assert state(client, "weather") == ("UNAVAILABLE", "dependency_missing: geo is not installed")
    answer = client.post(f"/v1/plugins/weather/{action}", headers=AUTH)
    assert answer.status_code == 409
    problem = answer.get_json()
    assert (problem["plugin"], problem["dependency"]) == ("weather", "geo")
    assert state(client, "weather") == ("UNAVAILABLE", "dependency_missing: geo is not installed")


@pytest.mark.parametrize("action", ["restart", "enable"])
def test_an_operator_cannot_start_a_plugin_against_a_refused_version(
    plugins: Path, make_app: callable, action: str  # type: ignore[valid-type]
) -> None:
    plugin(plugins, "geo", "version = '1.5'\n")
    plugin(plugins, "weather", "requires = ('geo>=2.0',)\n")
    client = make_app().test_client()
    reason = "dependency_version: geo 1.5 does not satisfy geo>=2.0"
    assert state(client, "weather") == ("UNAVAILABLE", reason)
    answer = client.post(f"/v1/plugins/weather/{action}", headers=AUTH)
    assert (answer.status_code, answer.get_json()["dependency"]) == (409, "geo")
    assert state(client, "weather") == ("UNAVAILABLE", reason)


def test_a_cycle_stays_a_cycle_after_a_restart(plugins: Path, make_app: callable) -> None:  # type: ignore[valid-type]
    plugin(plugins, "a", "requires = ('b',)\n")
    plugin(plugins, "b", "requires = ('a',)\n")
    client = make_app().test_client()
    assert state(client, "a") == ("UNAVAILABLE", "dependency_cycle: a -> b -> a")
    assert client.post("/v1/plugins/a/restart", headers=AUTH).status_code == 409
    assert state(client, "a") == ("UNAVAILABLE", "dependency_cycle: a -> b -> a")


@pytest.mark.parametrize("action", ["restart", "disable"])
def test_dependents_are_stopped_before_their_dependency(
    plugins: Path, make_app: callable, action: str  # type: ignore[valid-type]
) -> None:
    log = plugins.parent / "stops.log"
    for name, requires in (("db", ()), ("cache", ("db",)), ("web", ("cache",))):
        plugin(plugins, name, f"requires = {requires!r}\n"
                              f"def stop(self):\n    open({str(log)!r}, 'a').write('{name}\\n')\n")
    client = make_app().test_client()
    assert client.post(f"/v1/plugins/db/{action}", headers=AUTH).status_code == 200
    assert log.read_text().split() == ["web", "cache", "db"]
    expected = "RUNNING" if action == "restart" else "UNAVAILABLE"
    assert state(client, "web")[0] == expected
    assert state(client, "cache")[0] == expected


# -- 3. return values ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("phase", ["initialize", "start"])
def test_a_setup_phase_returning_false_fails(plugins: Path, make_app: callable, phase: str) -> None:  # type: ignore[valid-type]
    args = "self, context" if phase == "initialize" else "self"
    plugin(plugins, "shy", f"def {phase}({args}):\n    return False\n")
    client = make_app().test_client()
    body = client.get("/v1/plugins/shy/health").get_json()
    assert (body["state"], body["reason"], body["error_type"]) == ("FAILED", f"{phase} failed", "PluginSetupError")


@pytest.mark.parametrize(
    ("value", "healthy", "error"),
    [
        ("True", True, None),
        ("None", True, None),
        ("False", False, "health check returned False"),
        ("'yes'", False, "health_check returned a str, not True, False, None or a HealthResult"),
        ("[]", False, "health_check returned a list, not True, False, None or a HealthResult"),
        ("(i for i in ())", False, "a generator is not a JSON value"),
    ],
    ids=["true", "none", "false", "str", "list", "generator"],
)
def test_what_a_health_check_returns(
    plugins: Path, make_app: callable, value: str, healthy: bool, error: str | None  # type: ignore[valid-type]
) -> None:
    plugin(plugins, "probe", f"def health_check(self):\n    return {value}\n")
    body = make_app(show_details="always", failure_threshold=1).test_client().get("/v1/plugins/probe/health")
    answer = body.get_json()
    assert answer["healthy"] is healthy
    if error is None:
        assert answer["state"] == "RUNNING"
    else:
        assert answer["state"] == "FAILED"
        assert error in answer["error"]


def test_tool_on_a_lifecycle_method_is_a_declaration_error(plugins: Path, make_app: callable) -> None:  # type: ignore[valid-type]
    plugin(plugins, "odd", "@tool\ndef start(self):\n    pass\n")
    body = make_app(show_details="always").test_client().get("/v1/plugins/odd/health").get_json()
    assert (body["state"], body["reason"], body["error_type"]) == ("FAILED", "declaration failed",
                                                                   "InvalidPluginError")
    assert "start" in body["error"]


def test_get_state_answers_none_for_an_untracked_name() -> None:
    manager = PluginLifecycleManager()
    assert manager.get_state("ghost") is None
    with pytest.raises(IllegalTransitionError):
        manager.set_state("ghost", "RUNNING")
    assert manager.get_state("ghost") is None  # a refused first state leaves it untracked
    assert "ghost" not in manager


# -- 4. logs and answers keep secrets -----------------------------------------------------------------------


def test_no_log_line_carries_a_plugins_error_message(
    plugins: Path, make_app: callable, caplog: pytest.LogCaptureFixture  # type: ignore[valid-type]
) -> None:
    plugin(plugins, "leaky", "def stop(self):\n    raise RuntimeError('db password is hunter2')\n"
                             "def health_check(self):\n    raise RuntimeError('token hunter2')\n")
    plugin(plugins, "broken", "def start(self):\n    raise OSError('secret hunter2')\n")
    caplog.set_level(logging.DEBUG)
    app = make_app()
    app.extensions[EXTENSION].shutdown()
    assert caplog.records
    assert not [r for r in caplog.records if "hunter2" in r.getMessage() or "hunter2" in str(r.__dict__)]
    failures = [r for r in caplog.records if r.levelno >= logging.WARNING and "broken" in r.getMessage()]
    assert failures, "a setup failure is logged at WARNING or above"
    assert "start" in failures[0].getMessage()
    assert "OSError" in failures[0].getMessage()


def test_no_answer_carries_a_path(plugins: Path, make_app: callable) -> None:  # type: ignore[valid-type]
    (plugins / "empty.py").write_text("X = 1\n")
    plugin(plugins, "dup_a", "name = 'dup'\n")
    plugin(plugins, "dup_b", "name = 'dup'\n")
    client = make_app(show_details="always").test_client()
    for name in ("empty", "dup.2"):
        text = client.get(f"/v1/plugins/{name}/health").get_data(as_text=True)
        assert str(plugins) not in text, text
        assert client.get(f"/v1/plugins/{name}/health").get_json()["error"]


# -- 2. a caller's mistake is not a plugin failure ------------------------------------------------------------


@pytest.mark.parametrize("isolation", ["inline", "process"])
def test_arguments_that_do_not_fit_a_tool_are_refused_and_counted_nowhere(
    plugins: Path, make_app: callable, isolation: str  # type: ignore[valid-type]
) -> None:
    calls = plugins.parent / "calls.log"
    plugin(plugins, "database", f"critical = True\nisolation = {isolation!r}\n"
                                "@tool\ndef add(self, a, b=0):\n"
                                f"    open({str(calls)!r}, 'a').write('x')\n    return a + b\n")
    client = make_app(failure_threshold=3).test_client()
    for body in ({"args": [1, 2, 3]}, {"kwargs": {"c": 1}}, {"args": []}):
        answer = client.post("/v1/plugins/database/tools/add", json=body, headers=AUTH)
        assert answer.status_code == 422, answer.get_json()
        assert answer.mimetype == "application/problem+json"
        problem = answer.get_json()
        assert (problem["plugin"], problem["tool"]) == ("database", "add")
        assert problem["type"].endswith("/invalid-arguments")
    assert not calls.exists()  # nothing ran
    health = client.get("/v1/plugins/database/health").get_json()
    assert (health["state"], health["consecutive_failures"]) == ("RUNNING", 0)
    assert client.get("/readyz").status_code == 200
    answer = client.post("/v1/plugins/database/tools/add", json={"args": [1], "kwargs": {"b": 2}}, headers=AUTH)
    assert (answer.status_code, answer.get_json()["result"]) == (200, 3)


def test_anonymous_callers_never_see_the_name_of_a_class_a_plugin_defined(
    plugins: Path, make_app: callable  # type: ignore[valid-type]
) -> None:
    plugin(plugins, "vault", "critical = True\ndef start(self):\n    raise Hunter2IsThePassword('x')\n",
           head="class Hunter2IsThePassword(Exception):\n    pass\n")
    plugin(plugins, "plain", "def start(self):\n    raise OSError('disk')\n")
    client = make_app().test_client()
    anonymous = [client.get(path).get_data(as_text=True) for path in (
        "/v1/plugins/vault/health", "/v1/plugins/", "/v1/plugins/vault/history", "/v1/health", "/readyz?verbose")]
    assert all("Hunter2" not in text for text in anonymous), anonymous
    assert client.get("/v1/plugins/vault/health").get_json()["error_type"] == "PluginDefinedError"
    assert client.get("/v1/plugins/plain/health").get_json()["error_type"] == "OSError"  # Python's own: shown
    authorized = client.get("/v1/plugins/vault/health", headers=AUTH).get_json()
    assert authorized["error_type"] == "Hunter2IsThePassword"
