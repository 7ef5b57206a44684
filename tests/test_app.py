"""The app factory serves the bundled examples with no configuration."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from flask import Flask
from flask.testing import FlaskClient

from plugin_health import create_app
from plugin_health.app import EXTENSION
from plugin_health.config import ConfigError


@pytest.fixture
def app() -> Iterator[Flask]:
    app = create_app({"health_interval": 3600, "store_url": "memory://"})
    yield app
    app.extensions[EXTENSION].shutdown()


def test_examples_are_served(client: FlaskClient) -> None:
    response = client.get("/v1/plugins/")
    assert response.status_code == 200
    states = {item["name"]: (item["state"], item["reason"], item["error_type"]) for item in response.get_json()}
    assert states == {
        "billing": ("FAILED", "initialize failed", "RuntimeError"),
        "cache": ("RUNNING", None, None),
        "clock": ("RUNNING", None, None),
        "database": ("RUNNING", None, None),
        "weather": ("UNAVAILABLE", "dependency_missing: geo is not installed", None),
    }


def test_bad_setting_stops_the_app() -> None:
    with pytest.raises(ConfigError, match="PLUGIN_HEALTH_DEFAULT_TIMEOUT"):
        create_app({"PLUGIN_HEALTH_DEFAULT_TIMEOUT": "soon"})
