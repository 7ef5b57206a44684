"""Schemathesis fuzzes the app's own ``/openapi.json`` in-process: no 5xx, and every answer is the documented one."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from flask import Flask
from hypothesis import HealthCheck, settings
from werkzeug.http import parse_options_header

import plugin_health
from plugin_health import create_app
from plugin_health.api import openapi
from plugin_health.app import EXTENSION
from tests.test_api import PLUGINS, TOKEN, build, write_plugins

#: Real plugins (healthy, sick, FAILED, UNAVAILABLE: 200 and 503) and an unknown one (404), for the name parameter.
NAMES = [*sorted(PLUGINS), "ghost"]
CONFIG = schemathesis.Config.from_dict({
    # 503 is how the API says "unhealthy" (only where documented: status_code_conformance); any other 5xx fails.
    # The operator routes answer 502 and 504 for a tool that failed or passed its timeout, as documented.
    "checks": {"not_a_server_error": {"expected-statuses": ["2xx", "3xx", "4xx", "502", "503", "504"]},
               # It re-sends a request without the token through a transport of its own (not this app), which
               # fails for want of a base URL; tests/test_operations.py checks every refusal of a missing token.
               "ignored_auth": {"enabled": False}},
    "dictionaries": {"plugins": {"values": NAMES}},
    "parameters": {"path.name": {"dictionary": "plugins", "probability": 0.5}},
    # Probes take any query (as Kubernetes' own: any ``verbose``, any ``exclude`` string), so no request to them is
    # invalid; schemathesis still calls ``exclude=-1`` a non-array, although exploded on the wire it is one string.
    "operations": [{"include-path-regex": "^/(livez|readyz|startupz)$",
                    "checks": {"negative_data_rejection": {"enabled": False}}}],
})
# Loaded at import from what /openapi.json serves (each fixture checks that its app serves exactly this), as the lazy
# `schemathesis.pytest.from_fixture` loader fails under pytest 9. Each operation is a test of its own, run with every
# check schemathesis enables by default (server errors; status code, content type, headers and body as documented;
# invalid input refused; 405 for other methods), plus `assert_contract`.
schema = schemathesis.openapi.from_dict(copy.deepcopy(openapi.document()), config=CONFIG)
AUTH = {"Authorization": f"Bearer {TOKEN}"}
#: Nothing moves while fuzzing: no health check, no restart (whose jitter would also draw from ``random`` on a
#: background thread while Hypothesis draws, which it reports as a strategy using ``random``).
#: An event stream (GET /v1/events) ends at once, so that each case is answered whole.
QUIET = {"health_interval": 3600, "backoff_base": 3600, "backoff_max": 3600, "events_lifetime": 0.01}
FUZZ = settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
)


def serves_the_fuzzed_document(app: Flask) -> Flask:
    """``app`` after checking that its ``/openapi.json`` is the document being fuzzed."""
    response = app.test_client().get("/openapi.json")
    assert response.status_code == 200
    assert response.get_json() == schema.raw_schema
    return app


@pytest.fixture(scope="module")
def hosted_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Flask]:
    """The app of tests/test_api.py, hosting the same plugins in-process."""
    directory = tmp_path_factory.mktemp("plugins")
    write_plugins(directory, PLUGINS)
    app = build(directory, **QUIET)
    try:
        yield serves_the_fuzzed_document(app)
    finally:
        app.extensions[EXTENSION].shutdown()


@pytest.fixture(scope="module")
def hostless_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Flask]:
    """An app over a shared store whose plugin host has stopped: it serves the last states published."""
    directory = tmp_path_factory.mktemp("plugins")
    write_plugins(directory, PLUGINS)
    store_url = f"sqlite:///{tmp_path_factory.mktemp('store') / 'state.db'}"
    build(directory, store_url=store_url, host_mode="embedded", **QUIET).extensions[EXTENSION].shutdown()
    app = create_app({"plugin_path": str(directory), "store_url": store_url, "host_mode": "external",
                      "admin_token": TOKEN, **QUIET})
    try:
        assert app.extensions[EXTENSION].host is None
        yield serves_the_fuzzed_document(app)
    finally:
        app.extensions[EXTENSION].shutdown()


def assert_contract(response: Any, app: Flask, authorized: bool) -> None:
    """What schemathesis does not check: one well-formed Content-Type, problem+json errors, nothing leaked."""
    text = response.text
    assert "Traceback" not in text
    for path in (app.extensions[EXTENSION].settings.plugin_path, str(Path(plugin_health.__file__).parent)):
        assert path not in text
    if response.status_code != 304:
        content_types = response.headers.get("content-type", [])
        assert len(content_types) == 1
        _, options = parse_options_header(content_types[0])
        assert content_types[0].lower().count(";") == len(options), content_types  # no repeated parameter
    if response.status_code >= 400 and response.status_code != 503:  # 503: the documented "unhealthy" answers
        assert response.headers["content-type"] == ["application/problem+json"]
        body = response.json()
        assert body["status"] == response.status_code
        assert {"type", "title", "status", "detail"} <= set(body)
    if not authorized:
        assert "hunter2" not in text


#: Schemathesis asks for gzip as HTTP libraries do, but reads the Flask test client's bodies as they come (no
#: decoding): the fuzz reads identity answers; tests/test_list_pages.py checks the gzip ones.
IDENTITY = {"Accept-Encoding": "identity"}


def fuzz(case: schemathesis.Case[Any], app: Flask) -> None:
    """Send ``case`` without and with the admin token (error messages hidden, then shown) and validate both."""
    for headers in (IDENTITY, {**IDENTITY, **AUTH}):
        response = case.call_and_validate(app=app, headers=headers)
        assert_contract(response, app, authorized="Authorization" in headers)


@schema.parametrize()
@FUZZ
def test_hosted_app_conforms_to_its_openapi_document(case: schemathesis.Case[Any], hosted_app: Flask) -> None:
    """The plugins of tests/test_api.py hosted in-process: 200, 503 (sick, FAILED, UNAVAILABLE), 304, 400, 404."""
    fuzz(case, hosted_app)


@schema.parametrize()
@FUZZ
def test_hostless_app_conforms_to_its_openapi_document(case: schemathesis.Case[Any], hostless_app: Flask) -> None:
    """No live plugin host: the aggregate, readyz and startupz fail (503) with a host:heartbeat check."""
    fuzz(case, hostless_app)
