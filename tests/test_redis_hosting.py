"""Two instances on a real Redis, each hosting its own plugins: actions on the other travel over Redis, and fail
fast (503) when Redis cannot carry them."""

from __future__ import annotations

import json
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from redis_server import RedisServer
from waiting import wait_for

from plugin_health import create_app
from plugin_health.app import EXTENSION, Service
from plugin_health.coordination.control import HostUnavailableError
from plugin_health.coordination.control_redis import RedisRemoteControl
from plugin_health.errors import UnknownInstanceError
from plugin_health.lifecycle import PluginLifecycleState
from plugin_health.store.redis import connect

S = PluginLifecycleState


@pytest.fixture
def plugins(tmp_path: Path) -> Path:
    directory = tmp_path / "plugins"
    directory.mkdir()
    (directory / "core.py").write_text(textwrap.dedent("""
        import os
        from plugin_health import Plugin, tool

        class Core(Plugin):
            @tool
            def whoami(self):
                return os.getpid()
    """))
    return directory


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()


@pytest.fixture
def pair(own_redis: RedisServer, plugins: Path, tmp_path: Path) -> Iterator[tuple[Flask, Flask]]:
    made = [create_app({"store_url": own_redis.url, "plugin_path": str(plugins), "run_dir": str(tmp_path / name),
                        "instance": name, "host_mode": "embedded", "health_interval": 3600})
            for name in ("a", "b")]
    yield made[0], made[1]
    for app in made:
        app.extensions[EXTENSION].shutdown()


def service(app: Flask) -> Service:
    found: Service = app.extensions[EXTENSION]
    return found


def test_an_action_on_another_instance_travels_over_redis(pair: tuple[Flask, Flask]) -> None:
    a, b = pair
    wait_for(lambda: {i.id for i in service(a).cluster.instances()} == {"a", "b"}, timeout=5)  # type: ignore[union-attr]
    snapshot = service(a).control_for("b").disable("core")
    assert snapshot.reason == "disabled"
    assert service(b).host.manager.state_of("core") is S.UNAVAILABLE  # type: ignore[union-attr]
    assert service(a).host.manager.state_of("core") is S.RUNNING  # type: ignore[union-attr]
    with pytest.raises(UnknownInstanceError):
        service(a).control_for("nobody")


def test_redis_away_an_action_on_another_instance_fails_within_a_second(
    pair: tuple[Flask, Flask], own_redis: RedisServer
) -> None:
    a, _ = pair
    wait_for(lambda: {i.id for i in service(a).cluster.instances()} == {"a", "b"}, timeout=5)  # type: ignore[union-attr]
    own_redis.pause()
    try:
        started = time.monotonic()
        with pytest.raises(HostUnavailableError):
            service(a).control_for("b").restart("core")
        assert time.monotonic() - started < 1.0
        # This instance's own plugins are served as ever.
        assert service(a).control_for(None).run_tool("core", "whoami", [], {}).ok
    finally:
        own_redis.resume()


def test_a_request_that_waited_past_its_deadline_is_dropped_not_run_late(
    pair: tuple[Flask, Flask], own_redis: RedisServer
) -> None:
    _, b = pair
    client, keys = connect(own_redis.url, 2.0)
    stale = {"reply": keys.key("control-reply", "stale"), "deadline": time.time() - 1,
             "request": '{"op":"disable","plugin":"core"}'}
    client.rpush(keys.control("b"), json.dumps(stale))  # asked while b was down, long ago
    asking = RedisRemoteControl(own_redis.url, "b", timeout=5)
    try:
        assert asking.run_tool("core", "whoami", [], {}).ok  # answered: the stale one came first
        assert service(b).host.manager.state_of("core") is S.RUNNING  # type: ignore[union-attr]
        assert client.llen(keys.key("control-reply", "stale")) == 0  # and never answered
    finally:
        asking.close()
        client.close()
