"""HTTP edges: weak If-None-Match, hostile bodies, bounded metric labels, redirects, probes that agree, spellings."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from plugin_health.api import problems
from plugin_health.app import EXTENSION, Service
from plugin_health.errors import PluginBusyError
from plugin_health.lifecycle import PluginLifecycleState
from plugin_health.store import PluginSnapshot
from tests.test_api import PLUGINS, TOKEN, assert_problem, build, write_plugins

AUTH = {"Authorization": f"Bearer {TOKEN}"}
ROOT = Path(__file__).resolve().parent.parent
MiB = 1024 * 1024


@pytest.fixture
def app(tmp_path: Path) -> Iterator[Flask]:
    write_plugins(tmp_path, PLUGINS)
    app = build(tmp_path)
    yield app
    app.extensions[EXTENSION].shutdown()


# -- If-None-Match: weak comparison (RFC 9110 13.1.2) ----------------------------------------------------------


@pytest.mark.parametrize("route", ["/v1/plugins/", "/v1/plugins/core/health", "/v1/plugins/broken/history",
                                   "/v1/health", "/v1/lifecycle/diagram?format=dot", "/openapi.json"])
def test_if_none_match_uses_weak_comparison(client: FlaskClient, route: str) -> None:
    etag = client.get(route).headers["ETag"]
    assert etag.startswith('"')  # what we send is strong
    for held in (f"W/{etag}", f'"nope", W/{etag}', f'W/"nope", {etag}', "*"):
        response = client.get(route, headers={"If-None-Match": held})
        assert response.status_code == 304, held
        assert response.get_data() == b""
        assert response.headers["ETag"] == etag
    assert client.get(route, headers={"If-None-Match": 'W/"nope"'}).status_code != 304


def test_a_fresh_worker_takes_a_weak_tag_without_building(
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
    response = client.get("/v1/plugins/", headers={"If-None-Match": f'"other", W/{etag}'})
    assert (response.status_code, response.headers["ETag"]) == (304, etag)


# -- tool-call bodies: nesting and chunked size ----------------------------------------------------------------


@pytest.mark.parametrize("body", [
    b"[" * 1000 + b"]" * 1000,
    b'{"args": ' + b"[" * 1000 + b"]" * 1000 + b"}",
    b'{"kwargs": ' + b'{"a": ' * 1000 + b"1" + b"}" * 1000 + b"}",
    b'{"args": ' + b"[" * 300 + b"]" * 300 + b"}",  # JSON parses it, but nothing downstream should have to
], ids=["top-1000", "args-1000", "kwargs-1000", "args-300"])
def test_a_deeply_nested_body_is_400(client: FlaskClient, body: bytes) -> None:
    response = client.post("/v1/plugins/core/tools/ping", headers={**AUTH, "Content-Type": "application/json"},
                           data=body)
    assert_problem(response, 400, "nested")


def test_a_moderately_nested_body_is_fine(client: FlaskClient) -> None:
    body = b'{"args": ' + b"[" * 20 + b"]" * 20 + b"}"
    response = client.post("/v1/plugins/core/tools/ping", headers={**AUTH, "Content-Type": "application/json"},
                           data=body)
    assert response.status_code != 400, response.get_data(as_text=True)


class Dribble:
    """A request body of ``total`` bytes handed out in 1 MiB chunks, counting how many were taken."""

    def __init__(self, total: int, chunk: bytes = b" " * MiB) -> None:
        self.chunks = self._chunks(total, chunk)
        self.taken = 0
        self.buffer = bytearray()

    def _chunks(self, total: int, chunk: bytes) -> Iterator[bytes]:
        sent = 0
        while sent < total:
            piece = chunk[: total - sent]
            self.taken += 1
            sent += len(piece)
            yield piece

    def read(self, size: int = -1) -> bytes:
        while size < 0 or len(self.buffer) < size:
            piece = next(self.chunks, b"")
            if not piece:
                break
            self.buffer += piece
        if size < 0:
            size = len(self.buffer)
        out = bytes(self.buffer[:size])
        del self.buffer[:size]
        return out

    def readline(self, size: int = -1) -> bytes:
        return self.read(size)


def chunked_post(client: FlaskClient, stream: Any) -> Any:
    """POST ``stream`` as a chunked body (no Content-Length), as gunicorn hands one to the app."""
    headers = {**AUTH, "Transfer-Encoding": "chunked", "Content-Type": "application/json"}
    environ = {"wsgi.input": stream, "wsgi.input_terminated": True}
    return client.post("/v1/plugins/core/tools/ping", headers=headers, environ_overrides=environ)


def test_a_chunked_body_past_the_limit_is_413_without_reading_the_rest(client: FlaskClient) -> None:
    stream = Dribble(400 * MiB)
    response = chunked_post(client, stream)
    assert_problem(response, 413, "at most")
    assert stream.taken <= 2  # 64 KiB + 1 byte were read: the other 399 MiB never were


def test_a_small_chunked_body_is_read(client: FlaskClient) -> None:
    body = b'{"args": []}'
    response = chunked_post(client, Dribble(len(body), body))
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.get_json()["result"] == "pong"


# -- metrics: a bounded method label ---------------------------------------------------------------------------


def test_unknown_methods_share_one_metric_series(client: FlaskClient) -> None:
    methods = [f"BREW{i}" for i in range(30)]
    for method in methods:
        assert client.open("/v1/plugins/", method=method).status_code == 405
    client.open("/v1/plugins/", method="PATCH")
    client.get("/livez")
    text = client.get("/metrics").get_data(as_text=True)
    labels = set(re.findall(r'plugin_health_http_requests_total\{method="([^"]*)"', text))
    assert labels <= {"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "other"}
    assert {"other", "PATCH", "GET"} <= labels


# -- the trailing-slash redirect -------------------------------------------------------------------------------


@pytest.mark.parametrize(("path", "location"), [("/v1/plugins", "/v1/plugins/"),
                                                ("/v1/plugins?state=FAILED", "/v1/plugins/?state=FAILED")])
def test_the_trailing_slash_redirect_is_relative(client: FlaskClient, path: str, location: str) -> None:
    response = client.get(path, headers={"Host": "evil.example"})
    assert response.status_code in (301, 308)
    assert response.headers["Location"] == location
    assert "evil" not in response.get_data(as_text=True)


def test_the_redirect_is_never_protocol_relative(client: FlaskClient) -> None:
    response = client.get("//evil.example/v1/plugins", headers={"Host": "evil.example"})
    location = response.headers.get("Location", "")
    assert not location.startswith("//")
    assert "evil" not in location


# -- /readyz and /v1/health judge a critical plugin the same way ------------------------------------------------


def critical(state: PluginLifecycleState, *, ok: bool | None = True, stale: bool = False,
             warned: bool = False) -> PluginSnapshot:
    now = datetime.now(UTC)
    running = state is PluginLifecycleState.RUNNING
    return PluginSnapshot(
        name="db", state=state, since=now - timedelta(seconds=60), critical=True,
        reason=None if running else "start failed", error_type=None if running else "OSError",
        last_check=now - timedelta(seconds=5) if ok is not None else None, last_check_ok=ok,
        stale_after=(now - timedelta(seconds=1) if stale else now + timedelta(hours=1)) if running else None,
        check_status=None if ok is None else "warn" if warned else "pass" if ok else "fail",
    )


CASES = {
    "running": (critical(PluginLifecycleState.RUNNING), True),
    "never-checked": (critical(PluginLifecycleState.RUNNING, ok=None), True),
    "warned": (critical(PluginLifecycleState.RUNNING, warned=True), True),
    "check-failed": (critical(PluginLifecycleState.RUNNING, ok=False), False),
    "stale": (critical(PluginLifecycleState.RUNNING, stale=True), False),
    "stale-and-warned": (critical(PluginLifecycleState.RUNNING, stale=True, warned=True), False),
    "stale-and-failed": (critical(PluginLifecycleState.RUNNING, ok=False, stale=True), False),
    "failed": (critical(PluginLifecycleState.FAILED), False),
    "failed-after-a-warning": (critical(PluginLifecycleState.FAILED, warned=True), False),
    "unavailable": (critical(PluginLifecycleState.UNAVAILABLE), False),
    "loaded": (critical(PluginLifecycleState.LOADED), False),
}


@pytest.mark.parametrize(("snapshot", "healthy"), CASES.values(), ids=CASES.keys())
def test_readyz_and_the_aggregate_agree_on_a_critical_plugin(
    app: Flask, client: FlaskClient, monkeypatch: pytest.MonkeyPatch, snapshot: PluginSnapshot, healthy: bool
) -> None:
    """A critical plugin that warns is healthy but degraded: ready, and the aggregate says warn (200)."""
    store = app.extensions[EXTENSION].store
    monkeypatch.setattr(store, "snapshots", lambda: [snapshot])
    monkeypatch.setattr(store, "version", lambda: 10_000 + list(CASES).index(next(
        k for k, v in CASES.items() if v[0] is snapshot)))
    ready = client.get("/readyz?verbose")
    aggregate = client.get("/v1/health")
    one = client.get("/v1/plugins/").get_json()[0]
    assert (ready.status_code, aggregate.status_code) == ((200, 200) if healthy else (503, 503)), (
        ready.get_data(as_text=True), aggregate.get_json())
    warned = healthy and snapshot.check_status == "warn"
    assert aggregate.get_json()["checks"]["db:health"][0]["status"] == (
        ("warn" if warned else "pass") if healthy else "fail")
    assert aggregate.get_json()["status"] == (("warn" if warned else "pass") if healthy else "fail")
    assert (one["healthy"], one["degraded"]) == (healthy, warned)
    line = next(line for line in ready.get_data(as_text=True).splitlines() if "plugin/db" in line)
    assert line.startswith("[+]" if healthy else "[-]")


def test_a_critical_plugin_failing_its_checks_fails_readyz_and_the_aggregate_at_once(tmp_path: Path) -> None:
    write_plugins(tmp_path, {"db": "critical = True\ndef health_check(self):\n    return False\n"})
    app = build(tmp_path, failure_threshold=100)  # it stays RUNNING: only its checks fail
    try:
        client = app.test_client()
        assert client.get("/v1/plugins/db/health").get_json()["state"] == "RUNNING"
        ready = client.get("/readyz")
        assert ready.status_code == 503
        assert "[-]plugin/db failed: " in ready.get_data(as_text=True)
        assert client.get("/v1/health").get_json()["status"] == "fail"
    finally:
        app.extensions[EXTENSION].shutdown()


# -- ?exclude= names that match nothing -------------------------------------------------------------------------

NO_MATCH = 'warn: some health checks cannot be excluded: no matches for "nosuch", "plugin/ghost"'


def test_unknown_excludes_are_reported_in_verbose_output(client: FlaskClient) -> None:
    response = client.get("/readyz?verbose&exclude=plugin/ghost&exclude=nosuch&exclude=core")
    assert response.status_code == 200
    assert response.get_data(as_text=True) == f"[+]loading ok\n{NO_MATCH}\nreadyz check passed\n"
    assert client.get("/readyz?exclude=nosuch").get_data(as_text=True) == "ok"  # the probe's answer is unchanged
    assert "warn" not in client.get("/readyz?verbose&exclude=core").get_data(as_text=True)
    assert "nosuch" in client.get("/livez?verbose&exclude=nosuch").get_data(as_text=True)


def test_unknown_excludes_are_reported_when_the_probe_fails(tmp_path: Path) -> None:
    write_plugins(tmp_path, {"core": "critical = True\ndef start(self):\n    raise OSError('down')\n"})
    app = build(tmp_path)
    try:
        response = app.test_client().get("/readyz?exclude=nosuch&exclude=plugin/ghost")
        assert response.status_code == 503
        assert f"{NO_MATCH}\nreadyz check failed\n" in response.get_data(as_text=True)
    finally:
        app.extensions[EXTENSION].shutdown()


# -- ?state= spellings -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("spelling", ["FAILED", "failed", "Failed", "fAiLeD"])
def test_state_names_are_case_insensitive(client: FlaskClient, spelling: str) -> None:
    response = client.get(f"/v1/plugins/?state={spelling}")
    assert response.status_code == 200
    assert [i["name"] for i in response.get_json()] == ["broken"]


@pytest.mark.parametrize("bad", ["BOGUS", "", " FAILED", "FAILED ", "runn\u0131ng", "RUNN\u0130NG"])
def test_an_unknown_state_is_400_listing_the_valid_ones(client: FlaskClient, bad: str) -> None:
    body = assert_problem(client.get("/v1/plugins/", query_string={"state": bad}), 400)
    message = " ".join(body["errors"]["state"])
    for state in PluginLifecycleState:
        assert state.value in message


# -- one scheme of problem types -------------------------------------------------------------------------------

TYPE = re.compile(r"https://plugin-health\.dev/problems/([a-z0-9]+(?:-[a-z0-9]+)*)")


def readme_slugs() -> set[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("**Problem types.**", 1)[1].split("\n\n", 1)[0]
    return set(re.findall(r"`([a-z0-9-]+)` \(", section))


def emitted(app: Flask, client: FlaskClient, monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """A problem of every kind the app answers."""
    answers = [
        client.get("/nope"), client.post("/v1/health"), client.get("/v1/plugins/a%20b/health"),
        client.get("/v1/plugins/ghost/health"), client.get("/v1/plugins/?state=BOGUS"),
        client.get("/v1/lifecycle/diagram?format=png"), client.post("/v1/plugins/core/restart"),
        client.post("/v1/plugins/core/enable", headers=AUTH),
        client.post("/v1/plugins/core/tools/nothing", headers=AUTH),
        client.post("/v1/plugins/core/tools/ping", headers=AUTH, data=b"{"),
        client.post("/v1/plugins/core/tools/ping", headers=AUTH, data=b"x" * 70_000),
        client.post("/v1/plugins/broken/tools/x", headers=AUTH),
    ]
    service: Service = app.extensions[EXTENSION]

    def busy(name: str, *args: object, **kwargs: object) -> None:
        raise PluginBusyError(name, 16)

    assert service.control is not None
    monkeypatch.setattr(service.control, "run_tool", busy)
    answers.append(client.post("/v1/plugins/core/tools/ping", headers=AUTH))
    monkeypatch.setattr(service.store, "version", lambda: -1)
    monkeypatch.setattr(service.store, "snapshots", lambda: 1 / 0)
    answers.append(client.get("/v1/plugins/"))
    return answers


def test_every_problem_type_follows_the_documented_scheme(
    app: Flask, client: FlaskClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    documented = readme_slugs()
    assert documented == set(problems.PROBLEM_TYPES)
    seen = set()
    for response in emitted(app, client, monkeypatch):
        assert response.mimetype == "application/problem+json"
        match = TYPE.fullmatch(response.get_json()["type"])
        assert match is not None, response.get_json()["type"]
        assert match.group(1) in documented
        seen.add(match.group(1))
    assert seen == {"not-found", "method-not-allowed", "invalid-plugin-name", "unknown-plugin", "invalid-request",
                    "unauthorized", "illegal-transition", "unknown-tool", "body-too-large", "plugin-busy",
                    "internal-error"}


def test_problem_types_of_every_werkzeug_error_are_documented(app: Flask) -> None:
    from werkzeug.exceptions import default_exceptions

    with app.test_request_context():
        for code, error in default_exceptions.items():
            response = problems.problem_for_http(error())
            match = TYPE.fullmatch(response.get_json()["type"])
            assert match is not None, code
            assert match.group(1) in problems.PROBLEM_TYPES, code


# -- the OpenAPI document --------------------------------------------------------------------------------------


def test_openapi_has_an_etag_and_answers_304(client: FlaskClient) -> None:
    first = client.get("/openapi.json")
    etag = first.headers["ETag"]
    assert first.headers["Cache-Control"] == "no-cache"
    again = client.get("/openapi.json", headers={"If-None-Match": etag})
    assert (again.status_code, again.get_data()) == (304, b"")


def test_openapi_names_a_relative_server(client: FlaskClient) -> None:
    assert [server["url"] for server in client.get("/openapi.json").get_json()["servers"]] == ["/"]
    mounted = client.get("/openapi.json", environ_overrides={"SCRIPT_NAME": "/health"})
    assert [server["url"] for server in mounted.get_json()["servers"]] == ["/health"]


def test_openapi_documents_server_limits_and_busy(client: FlaskClient) -> None:
    document = client.get("/openapi.json").get_json()
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            assert {"414", "431"} <= set(operation["responses"]), (path, method)
    tool = document["paths"]["/v1/plugins/{name}/tools/{tool}"]["post"]["responses"]
    assert "Retry-After" in tool["429"]["headers"]
    for status in ("429", "502", "504"):
        assert list(tool[status]["content"]) == ["application/problem+json"]
    assert list(tool["200"]["content"]) == ["application/json"]
    failure = document["components"]["schemas"]["ToolFailure"]
    assert {"type", "title", "status", "detail", "ok", "result", "error", "error_type", "duration_ms"} <= set(
        failure["properties"])
