"""``GET /metrics``: plugins per state from the store, transitions, sandbox calls and HTTP requests counted."""

from __future__ import annotations

import re
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient

from plugin_health import create_app
from plugin_health.app import EXTENSION

TOKEN = "metrics-token"


@pytest.fixture
def app(tmp_path: Path) -> Iterator[Flask]:
    plugins = {
        "alpha": "@tool\ndef ping(self):\n    return 'pong'\n@tool\ndef boom(self):\n    raise KeyError('x')\n",
        "beta": "requires = ('gone',)\n",
        "gamma": "def start(self):\n    raise OSError('port taken')\n",
    }
    for name, body in plugins.items():
        (tmp_path / f"{name}.py").write_text(
            "from plugin_health import Plugin, tool\n\nclass P(Plugin):\n" + textwrap.indent(body, "    "))
    app = create_app({"plugin_path": str(tmp_path), "store_url": "memory://", "health_interval": 3600,
                      "max_restarts": 0, "admin_token": TOKEN})
    yield app
    app.extensions[EXTENSION].shutdown()


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one sample of the exposition ``text`` (0 when absent)."""
    for line in text.splitlines():
        match = re.fullmatch(r"([a-z_]+)(?:\{(.*)\})? (\S+)", line)
        if match is None or match.group(1) != name:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2) or ""))
        if found == labels:
            return float(match.group(3))
    return 0.0


def delta(before: str, after: str, name: str, **labels: str) -> float:
    """How much one sample grew between two scrapes (counters are shared by every app of this process)."""
    return sample(after, name, **labels) - sample(before, name, **labels)


def scrape(client: FlaskClient) -> str:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.mimetype == "text/plain"
    return response.get_data(as_text=True)


def test_plugins_per_state_come_from_the_store(client: FlaskClient) -> None:
    text = scrape(client)
    states = {s: sample(text, "plugin_health_plugins", state=s)
              for s in ("LOADED", "INITIALIZED", "RUNNING", "FAILED", "UNAVAILABLE")}
    assert states == {"LOADED": 0, "INITIALIZED": 0, "RUNNING": 1, "FAILED": 1, "UNAVAILABLE": 1}
    assert sample(text, "plugin_health_plugins_healthy") == 1
    assert sample(text, "plugin_health_host_up") == 1


def test_transitions_are_counted(client: FlaskClient) -> None:
    text = scrape(client)
    assert sample(text, "plugin_health_transitions_total", from_state="INITIALIZED", to_state="FAILED",
                  trigger="fail") >= 1
    assert sample(text, "plugin_health_transitions_total", from_state="", to_state="LOADED", trigger="load") >= 3


def test_sandbox_calls_are_counted_by_plugin_and_outcome(client: FlaskClient) -> None:
    before = scrape(client)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    for _ in range(3):
        assert client.post("/v1/plugins/alpha/tools/ping", headers=auth).status_code == 200
    assert client.post("/v1/plugins/alpha/tools/boom", headers=auth).status_code == 502
    after = scrape(client)
    calls = "plugin_health_sandbox_calls_total"
    assert delta(before, after, calls, plugin="alpha", method="ping", outcome="ok") == 3
    assert delta(before, after, calls, plugin="alpha", method="boom", outcome="error") == 1
    assert sample(after, "plugin_health_sandbox_calls_total", plugin="gamma", method="start", outcome="error") >= 1
    assert sample(after, "plugin_health_sandbox_call_duration_seconds_count", isolation="inline", call="tool") >= 4


def test_http_requests_are_counted_by_route_and_status(client: FlaskClient) -> None:
    before = scrape(client)
    client.get("/v1/plugins/alpha/health")
    client.get("/v1/plugins/beta/health")
    client.get("/no/such/page")
    after = scrape(client)
    requests = "plugin_health_http_requests_total"
    assert delta(before, after, requests, method="GET", route="/v1/plugins/<name>/health", status="200") == 1
    assert delta(before, after, requests, method="GET", route="/v1/plugins/<name>/health", status="503") == 1
    assert delta(before, after, requests, method="GET", route="<unmatched>", status="404") == 1
