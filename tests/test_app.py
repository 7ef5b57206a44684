"""The app factory serves the bundled examples with no configuration."""

from __future__ import annotations

import logging
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


@pytest.mark.parametrize("group", ["plugin_health.plugins", ""], ids=["with-entry-points", "directories-only"])
def test_a_plugin_path_without_plugins_says_so_naming_the_variable(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, group: str
) -> None:
    caplog.set_level(logging.WARNING)
    app = create_app({"plugin_path": str(tmp_path), "entry_point_group": group, "store_url": "memory://"})
    app.extensions[EXTENSION].shutdown()
    entry_points = f" and no package has a {group!r} entry point" if group else ""
    assert [(r.levelname, r.name, r.getMessage()) for r in caplog.records] == [
        ("WARNING", "plugin_health.runtime.core",
         f"no plugins found: PLUGIN_HEALTH_PLUGIN_PATH={str(tmp_path)!r} holds none{entry_points}; "
         "this service hosts 0 plugins"),
    ]


def test_plugins_found_raise_no_warning(app: Flask, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    app.extensions[EXTENSION].host.warn_if_empty()
    assert caplog.records == []


def test_bad_setting_stops_the_app() -> None:
    with pytest.raises(ConfigError, match="PLUGIN_HEALTH_DEFAULT_TIMEOUT"):
        create_app({"PLUGIN_HEALTH_DEFAULT_TIMEOUT": "soon"})


def test_a_missing_plugin_directory_stops_the_app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PLUGIN_HEALTH_PLUGIN_PATH", str(tmp_path / "nowhere"))
    with pytest.raises(ConfigError, match=r"PLUGIN_HEALTH_PLUGIN_PATH=.*nowhere.* does not exist"):
        create_app({"store_url": "memory://"})
    with pytest.raises(ConfigError, match="PLUGIN_HEALTH_PLUGIN_PATH"):
        create_app({"plugin_path": str(tmp_path / "nowhere"), "store_url": "memory://"})


def test_an_app_refuses_to_run_a_core_in_a_process_gevent_has_patched(tmp_path: Path) -> None:
    # A core waits on runners with real threads and hard deadlines; under gevent's patches it cannot: refused,
    # naming what to do, rather than every plugin failing later.
    import subprocess
    import sys

    script = (
        "from gevent import monkey; monkey.patch_all()\n"
        "from plugin_health import create_app\n"
        "from plugin_health.errors import ConfigError\n"
        "try:\n"
        f"    create_app({{'store_url': 'memory://', 'plugin_path': {str(tmp_path)!r}}})\n"
        "except ConfigError as err:\n"
        "    print('refused:', err)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert "refused: PLUGIN_HEALTH_HOST_MODE" in done.stdout
    assert "-k gthread" in done.stdout
