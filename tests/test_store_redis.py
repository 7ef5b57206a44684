"""The Redis store against a real redis-server: shared by processes, and losing nothing when Redis goes away."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from redis_server import RedisServer
from waiting import wait_for

from plugin_health.errors import ConfigError
from plugin_health.lifecycle import PluginLifecycleState, TransitionRecord
from plugin_health.store import PluginSnapshot, open_store
from plugin_health.store.redis import RedisStore, parse_url

S = PluginLifecycleState


def snap(name: str, state: S = S.RUNNING) -> PluginSnapshot:
    return PluginSnapshot(name=name, state=state, since=datetime.now(UTC))


def rec(name: str, source: S | None, dest: S, trigger: str) -> TransitionRecord:
    return TransitionRecord.now(name, source, dest, trigger, reason=None, error_type=None, error=None)


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test's own, which it may pause, kill and start again."""
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()


def test_url_prefix_is_parsed_and_checked() -> None:
    assert parse_url("redis://127.0.0.1:6379/2?prefix=svc-a") == ("redis://127.0.0.1:6379/2", "svc-a")
    assert parse_url("redis://h:1/0") == ("redis://h:1/0", "plugin-health")
    with pytest.raises(ConfigError, match="PLUGIN_HEALTH_STORE_URL"):
        parse_url("redis://h:1/0?prefix=a%20b")


def test_open_store_picks_redis(redis_url: str, tmp_path: Path) -> None:
    store = open_store(redis_url, tmp_path)
    assert isinstance(store, RedisStore)
    store.close()


def test_a_second_client_sees_every_write(redis_url: str) -> None:
    writer, reader = RedisStore(redis_url), RedisStore(redis_url)
    writer.put(snap("a", S.LOADED), rec("a", None, S.LOADED, "load"))
    writer.put(snap("a", S.INITIALIZED), rec("a", S.LOADED, S.INITIALIZED, "initialize"))
    version = reader.version()
    assert reader.snapshot("a") == writer.snapshot("a")
    assert [r.trigger for r in reader.history("a")] == ["load", "initialize"]
    writer.put_many([snap("b"), snap("c")])
    assert reader.version() == version + 1
    assert [s.name for s in reader.snapshots()] == ["a", "b", "c"]
    writer.begin(["a"])
    assert [s.name for s in reader.snapshots()] == ["a"]
    writer.close()
    reader.close()


def test_redis_away_then_back_loses_no_transition(own_redis: RedisServer) -> None:
    writer, reader = RedisStore(own_redis.url), RedisStore(own_redis.url)
    writer.put(snap("auth", S.LOADED), rec("auth", None, S.LOADED, "load"))
    assert [s.state for s in reader.snapshots()] == [S.LOADED]
    own_redis.pause()
    started = time.monotonic()
    writer.put(snap("auth", S.INITIALIZED), rec("auth", S.LOADED, S.INITIALIZED, "initialize"))
    writer.put(snap("auth", S.RUNNING), rec("auth", S.INITIALIZED, S.RUNNING, "start"))
    writer.set_meta("loaded", "1")
    assert time.monotonic() - started < 3  # a degraded write costs one timeout, then queues at once
    assert writer.degraded() is not None
    assert writer.pending() == 3
    # Each process answers from what it knows: the writer its own news, the reader the last it read.
    assert writer.snapshot("auth") is not None
    assert writer.snapshot("auth").state is S.RUNNING  # type: ignore[union-attr]
    assert [s.state for s in reader.snapshots()] == [S.LOADED]
    assert reader.degraded() is not None
    assert writer.version() < 0  # a version of its own, never confused with Redis's
    own_redis.resume()
    wait_for(lambda: writer.pending() == 0 and writer.degraded() is None)
    assert [s.state for s in reader.snapshots()] == [S.RUNNING]
    assert reader.degraded() is None
    assert [r.trigger for r in reader.history("auth")] == ["load", "initialize", "start"]
    assert reader.get_meta("loaded") == "1"
    writer.close()
    reader.close()


def test_redis_restarted_empty_gets_everything_back(own_redis: RedisServer) -> None:
    writer = RedisStore(own_redis.url)
    writer.put(snap("auth", S.LOADED), rec("auth", None, S.LOADED, "load"))
    writer.put(snap("auth", S.RUNNING), rec("auth", S.LOADED, S.RUNNING, "start"))
    writer.set_meta("loaded", "1")
    before = RedisStore(own_redis.url).version()
    own_redis.stop()
    writer.put(snap("auth", S.FAILED), rec("auth", S.RUNNING, S.FAILED, "fail"))  # while it is down
    own_redis.start()  # empty: no persistence
    wait_for(lambda: writer.pending() == 0 and writer.degraded() is None)
    reader = RedisStore(own_redis.url)
    assert [s.state for s in reader.snapshots()] == [S.FAILED]
    assert [r.trigger for r in reader.history("auth")] == ["load", "start", "fail"]
    assert reader.get_meta("loaded") == "1"
    assert reader.version() > before  # readers' caches of the lost data can never match again
    writer.close()
    reader.close()


def test_a_restart_between_heartbeats_is_noticed(own_redis: RedisServer) -> None:
    writer = RedisStore(own_redis.url)
    writer.put(snap("auth"), rec("auth", None, S.LOADED, "load"))
    own_redis.stop()
    own_redis.start()  # quick enough that no write failed
    writer.set_meta("host", "beat")  # the next heartbeat sees the version gone and writes everything again
    reader = RedisStore(own_redis.url)
    assert [s.name for s in reader.snapshots()] == ["auth"]
    assert len(reader.history("auth")) == 1
    writer.close()
    reader.close()
