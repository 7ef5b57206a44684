"""``PluginHealth`` embedded in a host app with routes and error handlers of its own: everything of ours under the
prefix (API, probes, metrics, OpenAPI, dashboard), problem+json only there, the host's app left as it was."""

from __future__ import annotations

import json
import re
import textwrap
from collections.abc import Callable, Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import pytest
from flask import Flask, Response, jsonify, url_for
from waiting import wait_for
from werkzeug.exceptions import HTTPException

from plugin_health import PluginHealth
from plugin_health.app import EXTENSION, Service
from plugin_health.coordination.locks import lock_is_free
from plugin_health.errors import AlreadyInitializedError, ConfigError
from plugin_health.runtime.hosting import lock_path
from tests.test_shutdown import members

TOKEN = "app-config-token"
PREFIX = "/plugins"
PLUGINS = {
    "core": "critical = True\n@tool\ndef ping(self):\n    return 'pong'\n",
    "sick": "def health_check(self):\n    return False\n",
}
#: Requests to the host's own routes and paths, as (method, path).
HOST_REQUESTS = [
    ("GET", "/"), ("GET", "/items/7"), ("GET", "/items/x"), ("GET", "/nowhere"), ("POST", "/"), ("GET", "/boom"),
    ("GET", "/v1/plugins/"), ("GET", "/readyz"), ("GET", "/openapi.json"), ("GET", "/metrics"),
    ("GET", "/pluginsx"), ("GET", "/dashboard.js"),
]


def write_plugins(directory: Path, plugins: dict[str, str]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, body in plugins.items():
        (directory / f"{name}.py").write_text(
            "from plugin_health import Plugin, tool\n\nclass P(Plugin):\n" + textwrap.indent(body, "    ")
        )
    return directory


def host(**config: Any) -> Flask:
    """A host app with routes, a JSON 404, a 413 and a 500 handler of its own (its 405 is Flask's HTML)."""
    app = Flask("host")
    app.config.update(config)

    @app.get("/")
    def home() -> str:
        return "<h1>host home</h1>"

    @app.get("/items/<int:item>")
    def item(item: int) -> Response:
        return jsonify(item=item)

    @app.get("/boom")
    def boom() -> str:
        raise ValueError("host bug")

    @app.errorhandler(404)
    def not_found(error: HTTPException) -> tuple[Response, int]:
        return jsonify(error="host-404"), 404

    @app.errorhandler(413)
    def too_large(error: HTTPException) -> tuple[str, int]:
        return "host 413", 413

    @app.errorhandler(500)
    def broken(error: HTTPException) -> tuple[str, int]:
        return "host 500", 500

    return app


def settings(plugins: Path, **extra: Any) -> dict[str, Any]:
    return {"PLUGIN_HEALTH_PLUGIN_PATH": plugins, "PLUGIN_HEALTH_STORE_URL": "memory://",
            "PLUGIN_HEALTH_HEALTH_INTERVAL": 3600, "PLUGIN_HEALTH_ADMIN_TOKEN": TOKEN, **extra}


def service_of(app: Flask) -> Service:
    service: Service = app.extensions[EXTENSION]
    return service


def checked(app: Flask) -> Flask:
    """``app`` after the first health checks of its plugins."""
    core = service_of(app).host
    assert core is not None
    core.supervisor.tick()
    return app


@pytest.fixture
def made() -> Iterator[list[Flask]]:
    apps: list[Flask] = []
    yield apps
    for app in apps:
        if EXTENSION in app.extensions:
            app.extensions[EXTENSION].shutdown()


@pytest.fixture
def build(made: list[Flask], tmp_path: Path) -> Callable[..., Flask]:
    """A host app embedding plugin-health under ``url_prefix``, configured through ``app.config``."""

    def make(url_prefix: str = PREFIX, plugins: dict[str, str] = PLUGINS, **extra: Any) -> Flask:
        directory = write_plugins(tmp_path / f"plugins{len(made)}", plugins)
        app = host(**settings(directory, **extra))
        PluginHealth(app, url_prefix=url_prefix)
        made.append(app)
        return checked(app)

    return make


@pytest.fixture
def app(build: Callable[..., Flask]) -> Flask:
    return build()


def answer(response: Any) -> tuple[int, str, bytes]:
    return response.status_code, response.mimetype, response.get_data()


def assert_problem(response: Any, status: int, slug: str) -> dict[str, Any]:
    assert (response.status_code, response.mimetype) == (status, "application/problem+json")
    body: dict[str, Any] = response.get_json(force=True)
    assert body["type"] == f"https://plugin-health.dev/problems/{slug}"
    assert body["status"] == status
    return body


# -- the host's app stays as it was ------------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "path"), HOST_REQUESTS, ids=[f"{m} {p}" for m, p in HOST_REQUESTS])
def test_the_host_answers_as_it_did_without_the_extension(app: Flask, method: str, path: str) -> None:
    alone = host()
    expected = answer(alone.test_client().open(path, method=method))
    assert answer(app.test_client().open(path, method=method)) == expected


def test_the_hosts_errors_are_its_own(app: Flask) -> None:
    client = app.test_client()
    missing = client.get("/nowhere")
    assert (missing.status_code, missing.mimetype, missing.get_json()) == (404, "application/json",
                                                                          {"error": "host-404"})
    refused = client.post("/")  # no 405 handler of its own: Flask's HTML page
    assert (refused.status_code, refused.mimetype) == (405, "text/html")
    assert "Method Not Allowed" in refused.get_data(as_text=True)
    broken = client.get("/boom")
    assert (broken.status_code, broken.get_data(as_text=True)) == (500, "host 500")


def test_the_extension_adds_no_error_handler_to_the_app(tmp_path: Path) -> None:
    app = host(**settings(write_plugins(tmp_path / "plugins", PLUGINS)))
    before = {code: dict(handlers) for code, handlers in app.error_handler_spec[None].items()}
    PluginHealth(app, url_prefix=PREFIX)
    try:
        assert {code: dict(handlers) for code, handlers in app.error_handler_spec[None].items()} == before
    finally:
        service_of(app).shutdown()


def test_requests_of_the_host_are_not_counted_in_our_metrics(app: Flask) -> None:
    client = app.test_client()
    client.get("/items/7")
    client.get("/plugins/livez")
    metrics = client.get("/plugins/metrics").get_data(as_text=True)
    assert 'route="/plugins/livez"' in metrics
    assert "/items" not in metrics


# -- ours, under the prefix ----------------------------------------------------------------------------------------


def test_health_routes_answer_under_the_prefix(app: Flask) -> None:
    client = app.test_client()
    listed = client.get("/plugins/v1/plugins/")
    assert listed.status_code == 200
    assert [(p["name"], p["healthy"]) for p in listed.get_json()] == [("core", True), ("sick", False)]
    assert client.get("/plugins/v1/plugins/core/health").status_code == 200
    assert client.get("/plugins/v1/plugins/sick/health").status_code == 503
    assert client.get("/plugins/v1/plugins/core/history").get_json()[-1]["to"] == "RUNNING"
    aggregate = client.get("/plugins/v1/health")
    assert (aggregate.status_code, aggregate.mimetype, aggregate.get_json()["status"]) == (
        200, "application/health+json", "warn")
    for probe in ("livez", "readyz", "startupz"):
        response = client.get(f"/plugins/{probe}")
        assert (response.status_code, response.get_data(as_text=True)) == (200, "ok"), probe
    assert client.get("/plugins/v1/cluster").get_json()["plugins"] == ["core", "sick"]
    assert client.get("/plugins/v1/lifecycle/diagram?format=dot").status_code == 200
    assert "plugin_health_plugins_healthy 1.0" in client.get("/plugins/metrics").get_data(as_text=True)


def test_the_redirect_to_the_slash_stays_under_the_prefix(app: Flask) -> None:
    client = app.test_client()
    for path, target in (("/plugins", "/plugins/"), ("/plugins/v1/plugins?state=RUNNING",
                                                    "/plugins/v1/plugins/?state=RUNNING")):
        response = client.get(path, headers={"Host": "evil.example"})
        assert (response.status_code, response.headers["Location"]) == (308, target)


@pytest.mark.parametrize(("method", "path", "status", "slug"), [
    ("GET", "/plugins/nowhere", 404, "not-found"),
    ("GET", "/plugins/v1/nowhere/at/all", 404, "not-found"),
    ("POST", "/plugins/v1/health", 405, "method-not-allowed"),
    ("GET", "/plugins/v1/plugins/ghost/health", 404, "unknown-plugin"),
    ("GET", "/plugins/v1/plugins/bad$name/health", 400, "invalid-plugin-name"),
    ("GET", "/plugins/v1/lifecycle/diagram?format=gif", 400, "invalid-request"),
    ("POST", "/plugins/v1/plugins/core/restart", 401, "unauthorized"),
], ids=["unknown-path", "deep-unknown-path", "method", "unknown-plugin", "bad-name", "bad-format", "no-token"])
def test_our_errors_under_the_prefix_are_problems(app: Flask, method: str, path: str, status: int,
                                                  slug: str) -> None:
    response = app.test_client().open(path, method=method)
    assert_problem(response, status, slug)
    if status == 405:
        assert sorted(response.headers["Allow"].split(", ")) == ["GET", "HEAD", "OPTIONS"]


def test_our_http_errors_are_problems_though_the_host_handles_that_status(build: Callable[..., Flask]) -> None:
    # The host answers 413 with its own handler; a body past its MAX_CONTENT_LENGTH sent to one of our routes is
    # werkzeug's RequestEntityTooLarge raised in our view: ours to answer.
    app = build(MAX_CONTENT_LENGTH=512)
    client = app.test_client()
    body = json.dumps({"args": [], "kwargs": {}, "padding": "x" * 1024})
    response = client.post("/plugins/v1/plugins/core/tools/ping", data=body, content_type="application/json",
                           headers={"Authorization": f"Bearer {TOKEN}"})
    assert_problem(response, 413, "body-too-large")


def test_the_openapi_document_names_the_prefix(app: Flask) -> None:
    client = app.test_client()
    document = client.get("/plugins/openapi.json").get_json()
    assert [server["url"] for server in document["servers"]] == ["/plugins"]
    assert "/v1/plugins/{name}/health" in document["paths"]
    # Every documented path answers under the server's URL (a GET at least is not an unknown route).
    for path, operations in document["paths"].items():
        concrete = "/plugins" + path.replace("{name}", "core").replace("{tool}", "ping")
        method = "GET" if "get" in operations else "POST"
        assert client.open(concrete, method=method).status_code not in (404, 405), concrete
    mounted = client.get("/plugins/openapi.json", environ_overrides={"SCRIPT_NAME": "/site"})
    assert [server["url"] for server in mounted.get_json()["servers"]] == ["/site/plugins"]


def test_url_for_builds_our_urls_under_the_prefix(app: Flask) -> None:
    with app.test_request_context():
        assert url_for("home") == "/"
        assert url_for("plugin_health.dashboard.page") == "/plugins/"
        assert url_for("plugin_health.plugins.plugin_health", name="core") == "/plugins/v1/plugins/core/health"
        assert url_for("plugin_health.health.readyz") == "/plugins/readyz"
        assert url_for("plugin_health.openapi.openapi_json") == "/plugins/openapi.json"
        assert url_for("plugin_health.metrics.metrics") == "/plugins/metrics"


def test_our_json_does_not_take_the_hosts_json_settings(app: Flask) -> None:
    assert app.json.sort_keys  # type: ignore[attr-defined]  # Flask's default, which create_app turns off
    body = app.test_client().get("/plugins/v1/plugins/core/health").get_data(as_text=True)
    assert list(json.loads(body))[:3] == ["name", "version", "state"]  # the schema's order, not sorted


# -- the dashboard -------------------------------------------------------------------------------------------------


class Links(HTMLParser):
    """The URLs a page loads: style sheets, scripts, images and links."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in ("href", "src") and value:
                self.urls.append(value)


def test_the_dashboard_loads_everything_from_under_the_prefix(app: Flask) -> None:
    client = app.test_client()
    page = client.get("/plugins/")
    assert (page.status_code, page.mimetype) == (200, "text/html")
    links = Links()
    links.feed(page.get_data(as_text=True))
    script = client.get("/plugins/dashboard.js").get_data(as_text=True)
    # Every path the script reads, relative to the page: the polled ones, the diagram, the event stream, and a
    # plugin's history and diagram (templates, filled in with a plugin's name).
    read = set(re.findall(r'["`](v1/[^"`?$]*)', script))
    assert read == {"v1/cluster", "v1/health", "v1/plugins/", "v1/lifecycle/diagram", "v1/events"}
    per_plugin = re.findall(r"`v1/plugins/\$\{encodeURIComponent\(\w+\)\}(/\w+)", script)
    assert sorted(per_plugin) == ["/diagram", "/history"]
    name = client.get("/plugins/v1/plugins/").get_json()[0]["name"]
    read |= {f"v1/plugins/{name}{tail}" for tail in per_plugin}
    urls = [urljoin("/plugins/", url) for url in [*links.urls, *sorted(read)]]
    assert {"/plugins/dashboard.js", "/plugins/dashboard.css", "/plugins/palette.css", "/plugins/v1/events"} <= set(
        urls)
    for url in urls:
        assert url.startswith("/plugins/"), url
        response = client.get(url)
        try:
            assert response.status_code in (200, 503), url  # 503: /v1/health of a failing service
        finally:
            response.close()  # the event stream's, above all
    assert client.get("/plugins/dashboard.css").mimetype == "text/css"
    assert client.get("/plugins/palette.css").mimetype == "text/css"
    assert client.get("/plugins/dashboard.js").mimetype == "text/javascript"
    assert client.get("/").get_data(as_text=True) == "<h1>host home</h1>"  # the host's page, not ours


# -- configuration -------------------------------------------------------------------------------------------------


def test_settings_come_from_app_config(app: Flask) -> None:
    settings = service_of(app).settings
    assert settings.admin_token == TOKEN
    assert settings.store_url == "memory://"
    client = app.test_client()
    refused = client.post("/plugins/v1/plugins/core/restart", headers={"Authorization": "Bearer nope"})
    assert_problem(refused, 401, "unauthorized")
    done = client.post("/plugins/v1/plugins/core/restart", headers={"Authorization": f"Bearer {TOKEN}"})
    assert (done.status_code, done.get_json()["state"]) == (200, "RUNNING")


def test_app_config_beats_the_environment(build: Callable[..., Flask], tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    elsewhere = write_plugins(tmp_path / "from-env", {"stranger": "pass\n"})
    monkeypatch.setenv("PLUGIN_HEALTH_PLUGIN_PATH", str(elsewhere))
    monkeypatch.setenv("PLUGIN_HEALTH_ADMIN_TOKEN", "env-token")
    monkeypatch.setenv("PLUGIN_HEALTH_SHOW_DETAILS", "always")  # not in app.config: the environment's
    app = build()
    client = app.test_client()
    assert [p["name"] for p in client.get("/plugins/v1/plugins/").get_json()] == ["core", "sick"]
    env_token = client.post("/plugins/v1/plugins/core/restart", headers={"Authorization": "Bearer env-token"})
    assert_problem(env_token, 401, "unauthorized")
    config_token = client.post("/plugins/v1/plugins/core/restart", headers={"Authorization": f"Bearer {TOKEN}"})
    assert config_token.status_code == 200
    assert service_of(app).settings.show_details == "always"


def test_a_bad_app_config_value_stops_the_app_naming_the_key(tmp_path: Path) -> None:
    app = host(**settings(write_plugins(tmp_path / "plugins", PLUGINS), PLUGIN_HEALTH_DEFAULT_TIMEOUT="soon"))
    rules = len(list(app.url_map.iter_rules()))
    with pytest.raises(ConfigError, match=r"^PLUGIN_HEALTH_DEFAULT_TIMEOUT='soon' is invalid"):
        PluginHealth(app, url_prefix=PREFIX)
    assert EXTENSION not in app.extensions
    assert len(list(app.url_map.iter_rules())) == rules  # nothing mounted


def test_an_unknown_plugin_health_key_is_refused(tmp_path: Path) -> None:
    app = host(**settings(write_plugins(tmp_path / "plugins", PLUGINS), PLUGIN_HEALTH_ADMIN_TOKN="typo"))
    with pytest.raises(ConfigError, match=r"^PLUGIN_HEALTH_ADMIN_TOKN='typo' is invalid: expected a known setting"):
        PluginHealth(app)


# -- one extension per app, several apps ---------------------------------------------------------------------------


def test_init_app_twice_on_one_app_is_refused(app: Flask) -> None:
    rules = len(list(app.url_map.iter_rules()))
    service = service_of(app)
    for again in (lambda: PluginHealth(app, url_prefix="/again"), lambda: PluginHealth().init_app(app)):
        with pytest.raises(AlreadyInitializedError) as caught:
            again()
        assert str(caught.value) == (
            "plugin-health is already initialized on the Flask app 'host' (app.extensions['plugin_health']): "
            "call PluginHealth(app) or init_app(app) once per app")
        assert caught.value.app_name == "host"
    assert service_of(app) is service
    assert len(list(app.url_map.iter_rules())) == rules


def test_two_host_apps_in_one_process_each_serve_their_own(build: Callable[..., Flask]) -> None:
    first = build(url_prefix="/plugins", plugins={"alpha": "pass\n"})
    second = build(url_prefix="/ops/health/", plugins={"beta": "pass\n"})  # slashes at either end are dropped
    assert [p["name"] for p in first.test_client().get("/plugins/v1/plugins/").get_json()] == ["alpha"]
    assert [p["name"] for p in second.test_client().get("/ops/health/v1/plugins/").get_json()] == ["beta"]
    assert second.test_client().get("/plugins/v1/plugins/").get_json() == {"error": "host-404"}
    service_of(first).shutdown()
    assert second.test_client().get("/ops/health/readyz").status_code == 200


def test_one_extension_object_serves_several_apps(made: list[Flask], tmp_path: Path) -> None:
    extension = PluginHealth(url_prefix="/plugins")
    apps = [host(**settings(write_plugins(tmp_path / f"p{n}", {f"p{n}": "pass\n"}))) for n in range(2)]
    for n, app in enumerate(apps):
        made.append(app)
        extension.init_app(app, url_prefix="/elsewhere" if n else None)
    assert [p["name"] for p in apps[0].test_client().get("/plugins/v1/plugins/").get_json()] == ["p0"]
    assert [p["name"] for p in apps[1].test_client().get("/elsewhere/v1/plugins/").get_json()] == ["p1"]
    assert extension.service(apps[1]) is service_of(apps[1])
    with apps[0].app_context():
        assert extension.service() is service_of(apps[0])


def test_an_app_may_mount_it_at_its_root(build: Callable[..., Flask]) -> None:
    app = build(url_prefix="/")
    client = app.test_client()
    assert client.get("/readyz").get_data(as_text=True) == "ok"
    assert client.get("/").get_data(as_text=True) == "<h1>host home</h1>"  # the host's own route wins
    assert_problem(client.get("/nowhere"), 404, "not-found")  # everything is under the root


# -- shutdown --------------------------------------------------------------------------------------------------------


def test_shutdown_stops_the_plugins_and_releases_the_store(tmp_path: Path, made: list[Flask]) -> None:
    marker = tmp_path / "stopped"
    stopping = f"def stop(self):\n    open({str(marker)!r}, 'w').close()\n"
    config = settings(write_plugins(tmp_path / "plugins", {"core": stopping}), PLUGIN_HEALTH_RUN_DIR=tmp_path / "run")
    del config["PLUGIN_HEALTH_STORE_URL"]  # the default store, SQLite in the run directory, with its host lock
    app = host(**config)
    extension = PluginHealth(app, url_prefix=PREFIX)
    service = service_of(app)
    assert service.host is not None
    groups = {runner.pgid for runner in service.host.runners.runners()}
    lock = lock_path(service.settings)
    assert lock is not None
    assert groups
    assert members(groups)
    assert not lock_is_free(lock)
    extension.shutdown(app)
    extension.shutdown(app)  # twice is harmless
    assert marker.exists()
    assert service.host.manager.history("core")[-1].reason == "stopped"
    wait_for(lambda: not members(groups), timeout=5)
    assert lock_is_free(lock)
    successor = host(**config)
    PluginHealth(successor, url_prefix=PREFIX)
    made.append(successor)
    assert service_of(successor).host is not None  # it took the lock the first one released
