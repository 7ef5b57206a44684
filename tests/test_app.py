"""The app factory serves the bundled examples with no configuration."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

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


def test_a_missing_plugin_directory_stops_the_app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PLUGIN_HEALTH_PLUGIN_PATH", str(tmp_path / "nowhere"))
    with pytest.raises(ConfigError, match=r"PLUGIN_HEALTH_PLUGIN_PATH=.*nowhere.* does not exist"):
        create_app({"store_url": "memory://"})
    with pytest.raises(ConfigError, match="PLUGIN_HEALTH_PLUGIN_PATH"):
        create_app({"plugin_path": str(tmp_path / "nowhere"), "store_url": "memory://"})
