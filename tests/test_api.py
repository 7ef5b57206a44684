"""The read routes of DESIGN.md section 7 with pytest-flask: every route, status code and problem shape."""

from __future__ import annotations

import re
import textwrap
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from plugin_health import create_app, diagrams
from plugin_health.app import EXTENSION, Service
from plugin_health.diagrams import RendererUnavailableError
from plugin_health.lifecycle.states import LEGAL_MOVES
from plugin_health.runtime.core import LOADED_KEY

TOKEN = "t0ken-for-tests"

PLUGINS = {
    "core": "critical = True\nversion = '2.0'\n@tool\ndef ping(self):\n    return 'pong'\n",
    "sick": "def health_check(self):\n    return False\n",
    "broken": "def initialize(self, context):\n    raise RuntimeError('password=hunter2 at /etc/secret')\n",
    "needy": "requires = ('missing>=1',)\n",
    "user": "requires = ('core>=1.5',)\n",
    "disk": "def health_check(self):\n    from plugin_health import HealthResult\n"
            "    return HealthResult('warn', 0.93, 'ratio', 'disk 93% full (password=hunter2)')\n",
}
FIELDS = {
    "name", "version", "state", "healthy", "reason", "error_type", "error", "since", "requires", "critical",
    "isolation", "tools", "consecutive_failures", "restarts", "last_check", "allowed", "stale",
    "singleton", "owner", "standby", "check_status", "observed_value", "observed_unit", "check_output", "degraded",
}


def write_plugins(directory: Path, plugins: dict[str, str]) -> None:
    for name, body in plugins.items():
        (directory / f"{name}.py").write_text(
            "from plugin_health import Plugin, tool\n\nclass P(Plugin):\n" + textwrap.indent(body or "pass\n", "    ")
        )


def build(directory: Path, **config: Any) -> Flask:
    app = create_app({"plugin_path": str(directory), "store_url": "memory://", "health_interval": 3600,
                      "admin_token": TOKEN, **config})
    service: Service = app.extensions[EXTENSION]
    assert service.host is not None
    service.host.supervisor.tick()  # run the first health checks now
    return app


@pytest.fixture
def app(tmp_path: Path) -> Iterator[Flask]:
    write_plugins(tmp_path, PLUGINS)
    app = build(tmp_path)
    yield app
    app.extensions[EXTENSION].shutdown()


def assert_problem(response: Any, status: int, fragment: str = "") -> dict[str, Any]:
    assert response.status_code == status
    assert response.mimetype == "application/problem+json"
    body: dict[str, Any] = response.get_json(force=True)
    assert body["status"] == status
    assert {"type", "title", "status", "detail"} <= set(body)
    assert fragment in body["detail"]
    text = response.get_data(as_text=True)
    assert "Traceback" not in text
    assert "/etc/secret" not in text
    assert ".py" not in text
    return body


def test_list_is_ordered_with_every_field(client: FlaskClient) -> None:
    response = client.get("/v1/plugins/")
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    items = response.get_json()
    assert [i["name"] for i in items] == ["broken", "core", "disk", "needy", "sick", "user"]
    assert all(set(i) == FIELDS for i in items)
    states = {i["name"]: (i["state"], i["healthy"], i["degraded"], i["check_status"]) for i in items}
    assert states == {"broken": ("FAILED", False, False, None), "core": ("RUNNING", True, False, "pass"),
                      "disk": ("RUNNING", True, True, "warn"), "needy": ("UNAVAILABLE", False, False, None),
                      "sick": ("RUNNING", False, False, "fail"), "user": ("RUNNING", True, False, "pass")}
    disk = items[2]
    assert (disk["observed_value"], disk["observed_unit"], disk["check_output"]) == (0.93, "ratio", None)
    core = items[1]
    assert (core["version"], core["critical"], core["tools"], core["allowed"]) == (
        "2.0", True, ["ping"], ["fail", "make_unavailable"])
    assert core["since"].endswith("+00:00")
    assert core["last_check"] is not None
    assert (core["observed_value"], core["observed_unit"], core["check_output"]) == (None, None, None)
    assert items[5]["requires"] == ["core>=1.5"]


@pytest.mark.parametrize(("state", "names"), [("FAILED", ["broken"]), ("RUNNING", ["core", "disk", "sick", "user"]),
                                              ("LOADED", [])])
def test_list_filters_by_state(client: FlaskClient, state: str, names: list[str]) -> None:
    response = client.get(f"/v1/plugins/?state={state}")
    assert [i["name"] for i in response.get_json()] == names


@pytest.mark.parametrize("bad", ["BOGUS", ""])
def test_list_refuses_an_unknown_state(client: FlaskClient, bad: str) -> None:
    body = assert_problem(client.get(f"/v1/plugins/?state={bad}"), 400)
    assert "state" in body["errors"]


def test_healthy_plugin_is_200(client: FlaskClient) -> None:
    response = client.get("/v1/plugins/core/health")
    assert response.status_code == 200
    assert response.get_json()["healthy"] is True


@pytest.mark.parametrize("name", ["sick", "broken", "needy"])
def test_unhealthy_plugin_is_503(client: FlaskClient, name: str) -> None:
    response = client.get(f"/v1/plugins/{name}/health")
    assert response.status_code == 503
    assert response.mimetype == "application/json"
    assert response.get_json()["healthy"] is False


def test_failing_health_check_is_reported(client: FlaskClient) -> None:
    body = client.get("/v1/plugins/sick/health").get_json()
    assert (body["state"], body["consecutive_failures"]) == ("RUNNING", 1)


def test_unknown_plugin_is_404(client: FlaskClient) -> None:
    body = assert_problem(client.get("/v1/plugins/ghost/health"), 404, "unknown plugin 'ghost'")
    assert body["plugin"] == "ghost"
    assert_problem(client.get("/v1/plugins/ghost/history"), 404)
    assert_problem(client.get("/v1/plugins/ghost/diagram"), 404)


@pytest.mark.parametrize("name", ["a" * 101, "semi;colon", "sp ace", "%00", "caf%C3%A9"])
def test_invalid_names_are_400_before_any_lookup(client: FlaskClient, name: str) -> None:
    for route in ("health", "history", "diagram"):
        assert_problem(client.get(f"/v1/plugins/{name}/{route}"), 400, "plugin name")


def test_error_messages_hidden_without_token(client: FlaskClient) -> None:
    body = client.get("/v1/plugins/broken/health").get_json()
    assert (body["reason"], body["error_type"], body["error"]) == ("initialize failed", "RuntimeError", None)
    history = client.get("/v1/plugins/broken/history").get_json()
    assert all(entry["error"] is None for entry in history)
    assert "hunter2" not in client.get("/v1/health").get_data(as_text=True)
    assert "hunter2" not in client.get("/v1/plugins/").get_data(as_text=True)


def test_error_messages_shown_with_token(client: FlaskClient) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    assert "hunter2" in client.get("/v1/plugins/broken/health", headers=auth).get_json()["error"]
    assert "hunter2" in client.get("/v1/plugins/broken/history", headers=auth).get_json()[-1]["error"]
    wrong = {"Authorization": "Bearer nope"}
    assert client.get("/v1/plugins/broken/health", headers=wrong).get_json()["error"] is None


@pytest.mark.parametrize(("mode", "with_token", "shown"), [
    ("never", True, False), ("always", False, True), ("when-authorized", False, False),
])
def test_show_details_modes(tmp_path: Path, mode: str, with_token: bool, shown: bool) -> None:
    write_plugins(tmp_path, {"broken": PLUGINS["broken"]})
    app = build(tmp_path, show_details=mode)
    try:
        headers = {"Authorization": f"Bearer {TOKEN}"} if with_token else {}
        error = app.test_client().get("/v1/plugins/broken/health", headers=headers).get_json()["error"]
        assert (error is not None) is shown
    finally:
        app.extensions[EXTENSION].shutdown()


def test_history_oldest_first(client: FlaskClient) -> None:
    response = client.get("/v1/plugins/broken/history")
    assert response.status_code == 200
    history = response.get_json()
    assert [(e["from"], e["to"], e["trigger"]) for e in history] == [
        (None, "LOADED", "load"), ("LOADED", "FAILED", "fail")]
    assert set(history[0]) == {"plugin", "from", "to", "trigger", "reason", "error_type", "error", "at",
                               "instance"}
    assert history[0]["instance"] == client.application.extensions["plugin_health"].instance


def test_aggregate_fails_on_a_critical_plugin(tmp_path: Path) -> None:
    write_plugins(tmp_path, {"core": "critical = True\ndef start(self):\n    raise OSError('down')\n",
                             "other": ""})
    app = build(tmp_path)
    try:
        response = app.test_client().get("/v1/health")
        assert response.status_code == 503
        assert response.mimetype == "application/health+json"
        body = response.get_json()
        assert body["status"] == "fail"
        assert body["checks"]["core:health"][0]["status"] == "fail"
        assert body["checks"]["core:health"][0]["output"] == "FAILED: start failed: OSError"
        assert body["checks"]["other:health"][0]["status"] == "pass"
        assert "output" not in body["checks"]["other:health"][0]
    finally:
        app.extensions[EXTENSION].shutdown()


def test_aggregate_warns_on_non_critical_plugins(client: FlaskClient) -> None:
    response = client.get("/v1/health")
    assert response.status_code == 200
    body = response.get_json()
    assert body["status"] == "warn"
    assert {k: v[0]["status"] for k, v in body["checks"].items()} == {
        "broken:health": "warn", "core:health": "pass", "disk:health": "warn", "needy:health": "warn",
        "sick:health": "warn", "user:health": "pass"}
    assert (body["checks"]["core:health"][0]["observedValue"], body["checks"]["core:health"][0]["observedUnit"]) == (
        None, None)
    disk = body["checks"]["disk:health"][0]
    assert (disk["observedValue"], disk["observedUnit"], disk["output"]) == (0.93, "ratio", "last health check warned")


def test_aggregate_passes_when_all_healthy(tmp_path: Path) -> None:
    write_plugins(tmp_path, {"a": "", "b": "critical = True\n"})
    app = build(tmp_path)
    try:
        response = app.test_client().get("/v1/health")
        assert (response.status_code, response.get_json()["status"]) == (200, "pass")
    finally:
        app.extensions[EXTENSION].shutdown()


def test_livez_never_depends_on_plugins(client: FlaskClient) -> None:
    response = client.get("/livez")
    assert (response.status_code, response.get_data(as_text=True), response.mimetype) == (200, "ok", "text/plain")
    assert client.get("/livez?verbose").get_data(as_text=True) == "[+]ping ok\nlivez check passed\n"


def test_readyz_passes_when_critical_plugins_run(client: FlaskClient) -> None:
    assert client.get("/readyz").get_data(as_text=True) == "ok"
    assert client.get("/readyz?verbose").get_data(as_text=True) == (
        "[+]loading ok\n[+]plugin/core ok\nreadyz check passed\n")
    assert client.get("/readyz?verbose&exclude=core").get_data(as_text=True) == (
        "[+]loading ok\nreadyz check passed\n")


def test_readyz_fails_on_a_critical_plugin(tmp_path: Path) -> None:
    write_plugins(tmp_path, {"core": "critical = True\ndef start(self):\n    raise OSError('down')\n",
                             "db": "critical = True\n"})
    app = build(tmp_path)
    try:
        client = app.test_client()
        response = client.get("/readyz")
        assert response.status_code == 503
        assert response.get_data(as_text=True) == (
            "[+]loading ok\n[-]plugin/core failed: FAILED start failed OSError\n[+]plugin/db ok\n"
            "readyz check failed\n")
        assert client.get("/readyz?exclude=core").status_code == 200
        assert client.get("/readyz?exclude=plugin/core").status_code == 200
        assert client.get("/startupz").get_data(as_text=True) == "ok"
    finally:
        app.extensions[EXTENSION].shutdown()


def test_readyz_while_loading_fails_on_loading_alone_and_reads_no_snapshot(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """While plugins load, the store's version moves at every batch of transitions: judging the critical plugins then
    would read every snapshot in every worker at every probe, for an answer that fails on loading anyway."""
    write_plugins(tmp_path, {"core": "critical = True\ndef start(self):\n    raise OSError('down')\n"})
    app = build(tmp_path)
    try:
        store = app.extensions[EXTENSION].store
        store.set_meta(LOADED_KEY, "")  # as while the core loads
        reads = Counter[str]()
        for read in ("snapshots", "critical_snapshots"):  # every way to read snapshots, counted
            monkeypatch.setattr(store, read, lambda read=read: reads.update([read]) or [])
        client = app.test_client()
        response = client.get("/readyz")
        assert (response.status_code, response.get_data(as_text=True)) == (
            503, "[-]loading failed: plugins are still loading\nreadyz check failed\n")
        assert reads == Counter()
        store.set_meta(LOADED_KEY, "1")
        monkeypatch.undo()
        assert client.get("/readyz").get_data(as_text=True) == (
            "[+]loading ok\n[-]plugin/core failed: FAILED start failed OSError\nreadyz check failed\n")
    finally:
        app.extensions[EXTENSION].shutdown()


@pytest.mark.parametrize("fmt", ["svg", "dot", "mermaid"])
def test_lifecycle_diagram(client: FlaskClient, fmt: str) -> None:
    response = client.get(f"/v1/lifecycle/diagram?format={fmt}")
    assert response.status_code == 200
    assert response.content_type == diagrams.MEDIA_TYPES[fmt]
    text = response.get_data(as_text=True)
    for state in ("LOADED", "INITIALIZED", "RUNNING", "FAILED", "UNAVAILABLE"):
        assert state in text


def test_diagram_defaults_to_svg_and_highlights_the_plugin(client: FlaskClient) -> None:
    response = client.get("/v1/plugins/broken/diagram")
    assert response.content_type == "image/svg+xml"
    running = client.get("/v1/plugins/core/diagram?format=dot").get_data(as_text=True)
    failed = client.get("/v1/plugins/broken/diagram?format=dot").get_data(as_text=True)
    assert running != failed
    assert "broken" in failed


def history_moves(client: FlaskClient, *names: str) -> Counter[tuple[str, str]]:
    """How often each move (from, to) appears in the histories of ``names``."""
    return Counter((e["from"], e["to"]) for name in names for e in client.get(f"/v1/plugins/{name}/history").json
                   if e["from"] is not None)


def arrows(mermaid: str) -> dict[tuple[str, str], str]:
    """The label of each arrow of a Mermaid diagram (``A --> B: label``)."""
    found = (re.fullmatch(r"(\w+) --> (\w+): (.*)", line.strip()) for line in mermaid.splitlines())
    return {(m[1], m[2]): m[3] for m in found if m}


def test_lifecycle_diagram_counts_plugins_and_transitions(client: FlaskClient) -> None:
    """States: plugins in each now; arrows: the moves every plugin's history holds."""
    listed = client.get("/v1/plugins/").json
    moves = history_moves(client, *(plugin["name"] for plugin in listed))
    # Each RUNNING plugin was initialized once; broken failed in initialize, needy never got that far.
    running = sum(plugin["state"] == "RUNNING" for plugin in listed)
    assert moves[("LOADED", "INITIALIZED")] == running
    text = client.get("/v1/lifecycle/diagram?format=mermaid").get_data(as_text=True)
    assert arrows(text) == {(str(src), str(dst)): f"{trigger} ({moves[(str(src), str(dst))]})"
                            for (src, trigger), dst in LEGAL_MOVES.items()}
    assert f'state "RUNNING ({running})" as RUNNING' in text


def test_plugin_diagram_counts_its_own_transitions(client: FlaskClient) -> None:
    text = client.get("/v1/plugins/broken/diagram?format=mermaid").get_data(as_text=True)
    labels = arrows(text)
    assert labels[("LOADED", "FAILED")] == "fail (1)"
    assert labels[("LOADED", "INITIALIZED")] == "initialize (0)"
    assert sum(int(label.rsplit("(", 1)[1][:-1]) for label in labels.values()) == sum(
        history_moves(client, "broken").values())
    assert "Class FAILED s_failed_current" in text


def test_diagram_refuses_unknown_formats(client: FlaskClient) -> None:
    body = assert_problem(client.get("/v1/lifecycle/diagram?format=png"), 400)
    assert "format" in body["errors"]


def test_missing_renderer_is_501(client: FlaskClient, monkeypatch: pytest.MonkeyPatch) -> None:
    def unavailable(fmt: str = "svg", **_: Any) -> bytes:
        raise RendererUnavailableError(fmt, ("mermaid",), "pygraphviz is not installed")

    monkeypatch.setattr(diagrams, "render", unavailable)
    body = assert_problem(client.get("/v1/lifecycle/diagram?format=svg"), 501, "mermaid")
    assert body["available"] == ["mermaid"]


def test_openapi_document(client: FlaskClient) -> None:
    response = client.get("/openapi.json")
    assert response.status_code == 200
    document = response.get_json()
    assert document["openapi"].startswith("3.")
    assert "/v1/plugins/{name}/health" in document["paths"]
    schema = document["components"]["schemas"]["PluginHealthResponse"]
    assert set(schema["properties"]) == FIELDS
    assert schema["properties"]["state"]["enum"] == ["LOADED", "INITIALIZED", "RUNNING", "FAILED", "UNAVAILABLE"]


def test_unknown_route_and_method_are_problems(client: FlaskClient) -> None:
    assert_problem(client.get("/nope"), 404)
    response = client.post("/v1/health")
    assert_problem(response, 405)
    assert "GET" in response.headers["Allow"]


def test_unexpected_error_is_a_bare_500(client: FlaskClient, app: Flask, monkeypatch: pytest.MonkeyPatch) -> None:
    def explode() -> None:
        raise RuntimeError("cannot open /etc/secret/db.py")

    monkeypatch.setattr(app.extensions[EXTENSION].store, "snapshots", explode)
    monkeypatch.setattr(app.extensions[EXTENSION].store, "version", lambda: -1)
    assert_problem(client.get("/v1/plugins/"), 500)


def test_etag_and_304(client: FlaskClient, app: Flask) -> None:
    first = client.get("/v1/plugins/")
    etag = first.headers["ETag"]
    again = client.get("/v1/plugins/", headers={"If-None-Match": etag})
    assert again.status_code == 304
    assert again.get_data() == b""
    assert again.headers["ETag"] == etag
    health = client.get("/v1/plugins/core/health")
    assert client.get("/v1/plugins/core/health", headers={"If-None-Match": health.headers["ETag"]}).status_code == 304
    host = app.extensions[EXTENSION].host
    host.manager.trigger("core", "make_unavailable", reason="disabled")  # any transition invalidates
    changed = client.get("/v1/plugins/", headers={"If-None-Match": etag})
    assert changed.status_code == 200
    assert changed.headers["ETag"] != etag
    assert {i["name"]: i["state"] for i in changed.get_json()}["core"] == "UNAVAILABLE"


def test_a_fresh_worker_answers_304_for_the_list_without_building_it(
    app: Flask, client: FlaskClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    from plugin_health.api import plugins
    from plugin_health.api.cache import ResponseCache

    etag = client.get("/v1/plugins/").headers["ETag"]
    service: Service = app.extensions[EXTENSION]
    service.cache = ResponseCache(service.store)  # what a worker that never built the list holds

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the list was built for a 304")

    monkeypatch.setattr(plugins.plugin_health_list, "dump", refuse)
    response = client.get("/v1/plugins/", headers={"If-None-Match": etag})
    assert (response.status_code, response.headers["ETag"]) == (304, etag)
