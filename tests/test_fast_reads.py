"""The cached reads answered in front of Flask (``api.fastpath``): the same bytes as Flask's path, counted the same,
and everything they do not answer handed to Flask unchanged."""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from prometheus_client import REGISTRY
from werkzeug.test import EnvironBuilder

from plugin_health.api.fastpath import FastReads
from plugin_health.app import EXTENSION, Service
from tests.test_api import build as api_app

TOKEN = "t0ken-for-tests"
PLUGINS = {
    "core": "critical = True\n",
    "sick": "def health_check(self):\n    return False\n",
    "broken": "def initialize(self, context):\n    raise RuntimeError('password=hunter2 at /etc/secret')\n",
    # Long enough an answer to be gzip-compressed (cache.GZIP_MIN): its check output is shown with the token.
    "chatty": "def health_check(self):\n    from plugin_health import HealthResult\n"
              "    return HealthResult('warn', 1.0, 'ratio', 'x' * 2000)\n",
}
Answer = tuple[str, list[tuple[str, str]], bytes]


def write_plugins(directory: Path) -> None:
    for name, body in PLUGINS.items():
        (directory / f"{name}.py").write_text(
            "from plugin_health import Plugin\n\nclass P(Plugin):\n" + textwrap.indent(body, "    "))


def build(directory: Path, **config: Any) -> Flask:
    """The API tests' app (a memory store, first health checks run) over this file's plugins and token."""
    write_plugins(directory)
    return api_app(directory, **{"admin_token": TOKEN, **config})


@pytest.fixture
def app(tmp_path: Path) -> Iterator[Flask]:
    app = build(tmp_path)
    yield app
    app.extensions[EXTENSION].shutdown()


def fast(app: Flask) -> FastReads:
    assert isinstance(app.wsgi_app, FastReads)
    return app.wsgi_app


def call(wsgi: Any, method: str, path: str, headers: dict[str, str] | None = None,
         query: str = "", raw_path: str | None = None) -> Answer:
    """One request as a WSGI server makes it: status line, header list (in order) and body."""
    environ = EnvironBuilder(path=path, method=method, headers=headers or {}, query_string=query).get_environ()
    if raw_path is not None:
        environ["PATH_INFO"] = raw_path  # as a server gives it: decoded bytes, latin-1
    got: list[Any] = []
    result = wsgi(environ, lambda status, header_list, exc_info=None: got.extend([status, header_list]))
    try:
        body = b"".join(result)
    finally:
        getattr(result, "close", lambda: None)()
    return got[0], list(got[1]), body


def both(app: Flask, method: str, path: str, headers: dict[str, str] | None = None, **kwargs: Any) -> Answer:
    """The answer of Flask's path (first: it fills the cache) and of the fast path, which must be the same."""
    flask_answer = call(fast(app).flask, method, path, headers, **kwargs)
    fast_answer = call(app.wsgi_app, method, path, headers, **kwargs)
    assert fast_answer == flask_answer
    again = call(fast(app).flask, method, path, headers, **kwargs)
    assert again == flask_answer
    return fast_answer


class Spy:
    """Counts the requests that reach Flask."""

    def __init__(self, app: Flask) -> None:
        self.inner = fast(app).flask
        self.calls = 0
        fast(app).flask = self

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        self.calls += 1
        return self.inner(environ, start_response)


AUTH = {"Authorization": f"Bearer {TOKEN}"}
READS = [
    ("/v1/plugins/core/health", {}),
    ("/v1/plugins/sick/health", {}),
    ("/v1/plugins/broken/health", {}),
    ("/v1/plugins/broken/health", AUTH),
    ("/v1/plugins/chatty/health", AUTH),
    ("/v1/plugins/chatty/health", {**AUTH, "Accept-Encoding": "gzip"}),
    ("/v1/plugins/chatty/health", {**AUTH, "Accept-Encoding": "gzip;q=0, br"}),
    ("/v1/health", {}),
    ("/v1/health", AUTH),
    ("/v1/health", {"Accept-Encoding": "gzip, deflate"}),
    ("/v1/health", {"Authorization": "Bearer wrong"}),
    ("/v1/plugins/", {}),
    ("/v1/plugins/", AUTH),
    ("/v1/plugins/", {**AUTH, "Accept-Encoding": "gzip"}),
    ("/readyz", {}),
    ("/livez", {}),
]


@pytest.mark.parametrize(("path", "headers"), READS, ids=[f"{p} {sorted(h)}" for p, h in READS])
def test_a_cached_read_is_answered_as_flask_answers_it(app: Flask, path: str, headers: dict[str, str]) -> None:
    answer = both(app, "GET", path, headers)
    spy = Spy(app)
    assert call(app.wsgi_app, "GET", path, headers) == answer
    assert spy.calls == 0  # answered in front of Flask
    etag = dict(answer[1]).get("ETag")
    if etag is None:
        return
    weak = f"W/{etag}"
    for held in (etag, weak, f'"nope", {etag}', "*", f'"nope", {weak}'):
        conditional = both(app, "GET", path, {**headers, "If-None-Match": held})
        assert conditional[0] == "304 NOT MODIFIED"
    for other in ('"nope"', "W/\"nope\"", "garbage,,", '""'):
        assert both(app, "GET", path, {**headers, "If-None-Match": other})[0] == answer[0]


ODD = [
    ("GET", "/v1/plugins/nosuch/health", {}, ""),
    ("GET", "/v1/plugins/core/health", {}, "verbose"),
    ("GET", "/v1/plugins/core/health", {"Range": "bytes=0-3"}, ""),
    ("HEAD", "/v1/plugins/core/health", {}, ""),
    ("POST", "/v1/plugins/core/health", {}, ""),
    ("BREW", "/v1/plugins/core/health", {}, ""),
    ("GET", "/v1/plugins/" + "a" * 101 + "/health", {}, ""),
    ("GET", "/v1/plugins//health", {}, ""),
    ("GET", "/v1/plugins/a/b/health", {}, ""),
    ("GET", "/v1/plugins/core/health/", {}, ""),
    ("GET", "/v1/plugins/core/healthz", {}, ""),
    ("GET", "/readyz", {}, "verbose"),
    ("GET", "/readyz", {}, "exclude=core"),
    ("GET", "/livez", {}, "verbose"),
    ("GET", "/livez/", {}, ""),
    ("HEAD", "/livez", {}, ""),
    ("GET", "/v1/health", {"If-None-Match": "W/"}, ""),
    ("GET", "/v1/plugins", {}, ""),
    ("GET", "/v1/plugins/", {}, "state=FAILED"),
    ("GET", "/v1/plugins/", {}, "limit=2"),
    ("GET", "/v1/plugins/", {}, "limit=0"),
    ("HEAD", "/v1/plugins/", {}, ""),
    ("GET", "/v1/plugins/core/health", {"Authorization": "Bearer"}, ""),
    ("GET", "/v1/plugins/core/health", {"Authorization": f"bearer   {TOKEN}  "}, ""),
]


@pytest.mark.parametrize(("method", "path", "headers", "query"), ODD,
                         ids=[f"{m} {p[:40]} {sorted(h)} {q}" for m, p, h, q in ODD])
def test_odd_requests_are_answered_as_before(app: Flask, method: str, path: str, headers: dict[str, str],
                                             query: str) -> None:
    both(app, method, path, headers, query=query)
    both(app, method, path, headers, query=query)  # the second time the cache is warm


@pytest.mark.parametrize("raw", ["/v1/plugins/../health", "/v1/plugins/caf\xc3\xa9/health", "/v1/plugins/\x00/health",
                                 "/v1/plugins/core\n/health", "/v1/plugins/%2e%2e/health"])
def test_hostile_paths_are_answered_as_before(app: Flask, raw: str) -> None:
    both(app, "GET", "/", raw_path=raw)
    both(app, "GET", "/", raw_path=raw)


def test_a_read_is_counted_in_the_same_series_as_flasks(app: Flask) -> None:
    def counted(route: str, status: str) -> tuple[float, float]:
        count = REGISTRY.get_sample_value("plugin_health_http_requests_total",
                                          {"method": "GET", "route": route, "status": status}) or 0.0
        seconds = REGISTRY.get_sample_value("plugin_health_http_request_duration_seconds_count",
                                            {"route": route}) or 0.0
        return count, seconds

    reads = [("/v1/plugins/core/health", "/v1/plugins/<name>/health", "200"),
             ("/v1/plugins/sick/health", "/v1/plugins/<name>/health", "503"),
             ("/v1/health", "/v1/health", "200"), ("/v1/plugins/", "/v1/plugins/", "200"),
             ("/readyz", "/readyz", "200"), ("/livez", "/livez", "200")]
    for path, _, _ in reads:
        call(app.wsgi_app, "GET", path)  # cached
    spy = Spy(app)
    for path, route, status in reads:
        before = counted(route, status)
        call(app.wsgi_app, "GET", path)
        assert counted(route, status) == (before[0] + 1, before[1] + 1), path
    etag = dict(call(app.wsgi_app, "GET", "/v1/health")[1])["ETag"]
    before = counted("/v1/health", "304")
    call(app.wsgi_app, "GET", "/v1/health", {"If-None-Match": etag})
    assert counted("/v1/health", "304") == (before[0] + 1, before[1] + 1)
    assert spy.calls == 0


def test_a_change_in_the_store_is_answered_at_once(app: Flask) -> None:
    first = call(app.wsgi_app, "GET", "/v1/plugins/core/health")
    etag = dict(first[1])["ETag"]
    assert call(app.wsgi_app, "GET", "/v1/plugins/core/health", {"If-None-Match": etag})[0] == "304 NOT MODIFIED"
    service: Service = app.extensions[EXTENSION]
    assert service.host is not None
    service.host.manager.trigger("core", "make_unavailable", reason="disabled")
    for answer in (call(app.wsgi_app, "GET", "/v1/plugins/core/health", {"If-None-Match": etag}),
                   call(app.wsgi_app, "GET", "/v1/plugins/core/health")):
        assert answer[0] == "503 SERVICE UNAVAILABLE"
        assert b'"UNAVAILABLE"' in answer[2]
    assert call(app.wsgi_app, "GET", "/readyz")[0] == "503 SERVICE UNAVAILABLE"


def test_a_store_error_is_left_to_flask(app: Flask, monkeypatch: pytest.MonkeyPatch) -> None:
    call(app.wsgi_app, "GET", "/v1/plugins/core/health")

    def explode() -> int:
        raise RuntimeError("cannot open /etc/secret/db.py")

    monkeypatch.setattr(app.extensions[EXTENSION].store, "version", explode)
    status, headers, body = both(app, "GET", "/v1/plugins/core/health")
    assert status.startswith("500")
    assert dict(headers)["Content-Type"] == "application/problem+json"
    assert b"secret" not in body


def test_an_app_with_hooks_of_its_own_gets_every_request_through_flask(app: Flask) -> None:
    seen: list[str] = []

    @app.before_request
    def note() -> None:
        from flask import request

        seen.append(request.path)

    spy = Spy(app)
    for _ in range(2):
        call(app.wsgi_app, "GET", "/v1/plugins/core/health")
        call(app.wsgi_app, "GET", "/livez")
    assert (spy.calls, seen) == (4, ["/v1/plugins/core/health", "/livez"] * 2)


def test_an_app_with_a_server_name_gets_every_request_through_flask(app: Flask) -> None:
    app.config["SERVER_NAME"] = "health.example"
    spy = Spy(app)
    call(app.wsgi_app, "GET", "/livez", {"Host": "elsewhere.example"})
    assert spy.calls == 1


@pytest.mark.parametrize("mode", ["always", "never"])
def test_details_follow_the_setting(tmp_path: Path, mode: str) -> None:
    app = build(tmp_path, show_details=mode)
    try:
        for headers in ({}, AUTH):
            _, _, body = both(app, "GET", "/v1/plugins/broken/health", headers)
            assert (b"hunter2" in body) is (mode == "always")
            both(app, "GET", "/v1/health", headers)
    finally:
        app.extensions[EXTENSION].shutdown()


def test_a_server_that_adds_to_the_header_list_changes_no_later_answer(app: Flask) -> None:
    call(app.wsgi_app, "GET", "/v1/plugins/core/health")
    answers = []
    for _ in range(2):
        environ = EnvironBuilder(path="/v1/plugins/core/health").get_environ()

        def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> None:
            answers.append(list(headers))
            headers.append(("Date", "Tue, 01 Dec 2026 00:00:00 GMT"))  # as gevent's pywsgi does

        b"".join(app.wsgi_app(environ, start_response))
    assert answers[0] == answers[1]
    assert "Date" not in dict(answers[1])


def _token(name: str) -> str:
    from plugin_health.api.pages import encode_token

    return encode_token(name)


PAGES = [
    ("limit=2", {}),
    ("limit=2", {"Accept-Encoding": "gzip"}),
    ("limit=2", AUTH),
    (f"limit=2&continue={_token('broken')}", {}),
    (f"continue={_token('broken')}&limit=2", {}),
    (f"continue={_token('core')}", {}),
    ("state=RUNNING&limit=1", {}),
    ("state=running", {}),
    ("limit=1000", {}),
]


@pytest.mark.parametrize(("query", "headers"), PAGES, ids=[f"{q} {sorted(h)}" for q, h in PAGES])
def test_a_cached_page_is_answered_as_flask_answers_it(app: Flask, query: str, headers: dict[str, str]) -> None:
    """A page of the list (``?limit=``, ``?continue=``, ``?state=``) once Flask has built it: from the cache, in
    front of Flask, to the byte (its Link and X-Continue included), 304s too (a page of 500 took 160-190 us
    through Flask's query parsing, 15-20 us so)."""
    answer = both(app, "GET", "/v1/plugins/", headers, query=query)
    spy = Spy(app)
    assert call(app.wsgi_app, "GET", "/v1/plugins/", headers, query=query) == answer
    assert spy.calls == 0
    etag = dict(answer[1])["ETag"]
    assert both(app, "GET", "/v1/plugins/", {**headers, "If-None-Match": etag}, query=query)[0] == "304 NOT MODIFIED"


ODD_PAGES = ["limit=0", "limit=01", "limit=1001", "limit=", "limit", "limit=2&limit=3", "limit=2&x=1", "limit=%32",
             "limit=+2", "limit=2&", "&limit=2", "continue=!!", "continue=", "continue=a", "state=nosuch",
             "state=RUNNING%20", "limit=2&continue=" + _token("broken") + "&state=FAILED&state=RUNNING", "verbose",
             "limit=99999999999999999999"]


@pytest.mark.parametrize("query", ODD_PAGES)
def test_an_odd_page_query_is_answered_as_flask_answers_it(app: Flask, query: str) -> None:
    """What the fast path does not read exactly as the view does goes to Flask: the same answer (a 400, or what
    Flask makes of it), before and after the cache is warm."""
    both(app, "GET", "/v1/plugins/", {}, query=query)
    both(app, "GET", "/v1/plugins/", {}, query=query)
