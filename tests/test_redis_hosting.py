"""Several service instances on one Redis: one host leads, the others stand by; actions and reads cross over."""

from __future__ import annotations

import json
import os
import signal
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient
from redis_server import RedisServer
from waiting import wait_for

from plugin_health import create_app
from plugin_health.app import EXTENSION
from plugin_health.runtime.hosting import HostProcess, read_beat
from plugin_health.store.redis import RedisStore

TOKEN = "redis-operator-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def parent(pid: int) -> int:
    """The parent of ``pid`` (0 if it is gone)."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except OSError:
        return 0


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()


@pytest.fixture
def plugins(tmp_path: Path) -> Path:
    directory = tmp_path / "plugins"
    directory.mkdir()
    flag = tmp_path / "sick.flag"
    (directory / "core.py").write_text(textwrap.dedent(f"""
        import os
        from plugin_health import Plugin, tool

        class Core(Plugin):
            critical = True

            @tool
            def whoami(self):
                return os.getpid()

            def health_check(self):
                return not os.path.exists({str(flag)!r})
    """))
    (directory / "user.py").write_text(
        "from plugin_health import Plugin\n\nclass User(Plugin):\n    requires = ('core',)\n")
    return directory


def instance_env(redis: RedisServer, plugins: Path, run_dir: Path) -> dict[str, str]:
    return {**os.environ, "PLUGIN_HEALTH_STORE_URL": redis.url, "PLUGIN_HEALTH_PLUGIN_PATH": str(plugins),
            "PLUGIN_HEALTH_RUN_DIR": str(run_dir), "PLUGIN_HEALTH_ADMIN_TOKEN": TOKEN,
            "PLUGIN_HEALTH_HEALTH_INTERVAL": "0.2", "PLUGIN_HEALTH_FAILURE_THRESHOLD": "1",
            "PLUGIN_HEALTH_MAX_RESTARTS": "0"}


@pytest.fixture
def reader(redis: RedisServer, plugins: Path, tmp_path: Path) -> Iterator[Flask]:
    """A worker of a third instance: it only reads Redis, and asks whoever leads to act."""
    env = instance_env(redis, plugins, tmp_path / "reader")
    config = {k: v for k, v in env.items() if k.startswith("PLUGIN_HEALTH_")}
    app = create_app({**config, "host_mode": "external"})
    yield app
    app.extensions[EXTENSION].shutdown()


def leader_pid(store: RedisStore) -> int | None:
    beat = read_beat(store)
    return None if beat is None else beat.pid


def states(client: FlaskClient) -> dict[str, str]:
    return {p["name"]: p["state"] for p in client.get("/v1/plugins/").get_json()}


def test_one_host_leads_the_other_takes_over(
    redis: RedisServer, plugins: Path, tmp_path: Path, reader: Flask
) -> None:
    hosts = [HostProcess(instance_env(redis, plugins, tmp_path / f"instance{i}")) for i in range(2)]
    store = RedisStore(redis.url)
    client = reader.test_client()
    try:
        for host in hosts:
            host.start(wait=0.5)  # a standby never beats: do not wait long for it
        wait_for(lambda: client.get("/readyz").status_code == 200)
        first = leader_pid(store)
        assert first in {h.pid for h in hosts}
        assert states(client) == {"core": "RUNNING", "user": "RUNNING"}
        # A tool call from an instance that hosts nothing reaches the leader over Redis.
        answer = client.post("/v1/plugins/core/tools/whoami", headers=AUTH)
        assert answer.status_code == 200
        # An inline plugin runs in the leading core's shared runner: a serving child whose guard is the core's child.
        assert parent(parent(answer.get_json()["result"])) == first
        assert client.post("/v1/plugins/user/disable", headers=AUTH).get_json()["reason"] == "disabled"
        # The leader dies without a word: the standby takes the lease once it expires, and loads the plugins.
        assert first is not None
        os.kill(first, signal.SIGKILL)
        wait_for(lambda: leader_pid(store) not in (None, first) and client.get("/readyz").status_code == 200)
        second = leader_pid(store)
        assert second in {h.pid for h in hosts}
        assert states(client) == {"core": "RUNNING", "user": "UNAVAILABLE"}  # still disabled
        answer = client.post("/v1/plugins/core/tools/whoami", headers=AUTH)
        assert parent(parent(answer.get_json()["result"])) == second
    finally:
        for host in hosts:
            host.stop()
        store.close()


def test_redis_away_the_service_answers_and_catches_up(
    redis: RedisServer, plugins: Path, tmp_path: Path, reader: Flask
) -> None:
    host = HostProcess(instance_env(redis, plugins, tmp_path / "instance"))
    client = reader.test_client()
    try:
        host.start()
        wait_for(lambda: client.get("/readyz").status_code == 200)
        assert states(client) == {"core": "RUNNING", "user": "RUNNING"}
        redis.pause()
        (tmp_path / "sick.flag").touch()  # core fails its next check while Redis is away
        time.sleep(1.0)
        ready = client.get("/readyz?verbose")
        assert ready.status_code == 200, ready.get_data(as_text=True)  # last known states beat no answer
        assert "[+]store ok: degraded: redis unreachable" in ready.get_data(as_text=True)
        health = client.get("/v1/health").get_json()
        assert health["checks"]["store:degraded"][0]["status"] == "warn"
        assert states(client) == {"core": "RUNNING", "user": "RUNNING"}  # what it knew
        redis.resume()
        wait_for(lambda: states(client)["core"] == "FAILED")
        assert client.get("/readyz").status_code == 503  # the critical plugin failed, and now all know it
        history = client.get("/v1/plugins/core/history").get_json()
        assert [(h["from"], h["to"]) for h in history][-1] == ("RUNNING", "FAILED")
        assert states(client)["user"] == "UNAVAILABLE"  # the cascade recorded meanwhile arrived too
        assert "store:degraded" not in client.get("/v1/health").get_json()["checks"]
    finally:
        redis.resume()
        host.stop()


def test_a_request_that_waited_past_its_deadline_is_dropped_not_run_late(redis_url: str, plugins: Path) -> None:
    from plugin_health.coordination.control_redis import RedisControlServer, RedisRemoteControl
    from plugin_health.runtime.operations import Operations

    app = create_app({"plugin_path": str(plugins), "store_url": redis_url, "host_mode": "embedded",
                      "health_interval": 3600})
    service = app.extensions[EXTENSION]
    store = service.store
    assert isinstance(store, RedisStore)
    stale = {"reply": store.key("control-reply", "stale"), "deadline": time.time() - 1,
             "request": '{"op":"disable","plugin":"core"}'}
    store.client.rpush(store.key("control"), json.dumps(stale))  # asked while no host ran, long ago
    server = RedisControlServer(store, Operations(service.host).answer)
    server.start()
    try:
        asking = RedisRemoteControl(store, timeout=5)
        fresh = asking.disable("user")  # answered: the stale one came first
        asking.close()
        assert fresh.reason == "disabled"
        assert store.snapshot("core").state.value == "RUNNING"  # type: ignore[union-attr]
        assert store.client.llen(store.key("control-reply", "stale")) == 0  # and never answered
    finally:
        server.stop()
        service.shutdown()
