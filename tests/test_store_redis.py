"""Instances on one real redis-server: each copies its own store there exactly once; any instance sees them all."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis
from redis_server import RedisServer
from waiting import wait_for

from plugin_health.errors import ConfigError
from plugin_health.lifecycle import PluginLifecycleState, TransitionRecord
from plugin_health.store import PluginSnapshot, SQLiteStore
from plugin_health.store.cluster import InstanceInfo
from plugin_health.store.redis import READ_TIMEOUT, RedisCluster, Replicator, parse_url

S = PluginLifecycleState


def snap(name: str, state: S = S.RUNNING) -> PluginSnapshot:
    return PluginSnapshot(name=name, state=state, since=datetime.now(UTC))


def rec(name: str, source: S | None, dest: S, trigger: str) -> TransitionRecord:
    return TransitionRecord.now(name, source, dest, trigger, reason=None, error_type=None, error=None)


def record(store: SQLiteStore, name: str, *moves: tuple[S | None, S, str]) -> None:
    for source, dest, trigger in moves:
        store.put(snap(name, dest), rec(name, source, dest, trigger))


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test's own, which it may pause, kill and start again."""
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()


def local(tmp_path: Path, instance: str, limit: int = 100) -> SQLiteStore:
    return SQLiteStore(tmp_path / f"{instance}.sqlite3", limit, shared=True)


def remote_history(client: redis.Redis, prefix: str, instance: str, name: str) -> list[str]:
    """The triggers of the transitions Redis keeps of ``name`` on ``instance``."""
    return [json.loads(raw)["trigger"] for raw in client.lrange(f"{prefix}:i:{instance}:history:{name}", 0, -1)]


def test_url_prefix_is_parsed_and_checked() -> None:
    assert parse_url("redis://127.0.0.1:6379/2?prefix=svc-a") == ("redis://127.0.0.1:6379/2", "svc-a")
    assert parse_url("redis://h:1/0") == ("redis://h:1/0", "plugin-health")
    with pytest.raises(ConfigError, match="PLUGIN_HEALTH_STORE_URL"):
        parse_url("redis://h:1/0?prefix=a%20b")


def test_each_transition_is_copied_once_in_order(redis_url: str, tmp_path: Path) -> None:
    store = local(tmp_path, "a")
    replicator = Replicator(redis_url, "a", store)
    prefix = replicator.keys.prefix
    record(store, "auth", (None, S.LOADED, "load"), (S.LOADED, S.INITIALIZED, "initialize"))
    assert replicator.replicate() == 2
    assert replicator.replicate() == 0  # nothing new
    record(store, "auth", (S.INITIALIZED, S.RUNNING, "start"))
    # The answer of a copy is lost (it ran): the next call must not copy it again.
    replicator._pushed, replicator._copied = None, 0
    assert replicator.replicate() == 1
    replicator._pushed, replicator._copied = None, 0
    assert replicator.replicate() == 0
    assert remote_history(replicator.client, prefix, "a", "auth") == ["load", "initialize", "start"]
    replicator.beat(InstanceInfo("a", 1, time.time(), time.time()))
    reader = RedisCluster(redis_url, "b", local(tmp_path, "b"))
    assert [(s.name, s.state) for s in reader.grid()["a"]] == [("auth", S.RUNNING)]
    assert [r.trigger for r in reader.history_of("a", "auth")] == ["load", "initialize", "start"]
    replicator.close()
    reader.close()


def test_a_redis_that_lost_everything_gets_it_all_back(own_redis: RedisServer, tmp_path: Path) -> None:
    store = local(tmp_path, "a")
    replicator = Replicator(own_redis.url, "a", store)
    record(store, "auth", (None, S.LOADED, "load"), (S.LOADED, S.INITIALIZED, "initialize"))
    replicator.beat(InstanceInfo("a", 1, 0.0, time.time()))
    replicator.replicate()
    own_redis.stop()
    record(store, "auth", (S.INITIALIZED, S.RUNNING, "start"))  # recorded while Redis is away
    with pytest.raises(redis.RedisError):
        replicator.replicate()
    own_redis.start()  # empty: no persistence
    replicator.beat(InstanceInfo("a", 1, 0.0, time.time()))  # notices the cursor is gone
    assert replicator.replicate() == 3
    assert remote_history(replicator.client, "plugin-health", "a", "auth") == ["load", "initialize", "start"]
    replicator.close()


def test_a_new_local_store_replaces_what_redis_kept_of_the_instance(redis_url: str, tmp_path: Path) -> None:
    old = local(tmp_path, "old")
    first = Replicator(redis_url, "a", old)
    record(old, "auth", (None, S.LOADED, "load"), (S.LOADED, S.INITIALIZED, "initialize"))
    record(old, "ghost", (None, S.LOADED, "load"))
    first.replicate()
    new = local(tmp_path, "new")  # the run directory was wiped: sequence numbers start again
    record(new, "auth", (None, S.FAILED, "load"))
    second = Replicator(redis_url, "a", new)
    assert second.replicate() == 1
    prefix = second.keys.prefix
    assert remote_history(second.client, prefix, "a", "auth") == ["load"]
    assert second.client.hkeys(f"{prefix}:i:a:plugins") == [b"auth"]
    first.close()
    second.close()


def test_instances_are_listed_and_the_silent_ones_dropped_after_retention(redis_url: str, tmp_path: Path) -> None:
    a, b = local(tmp_path, "a"), local(tmp_path, "b")
    now = time.time()
    ra, rb = Replicator(redis_url, "a", a), Replicator(redis_url, "b", b)
    record(b, "auth", (None, S.LOADED, "load"))
    rb.replicate()
    ra.beat(InstanceInfo("a", 1, now, now))
    rb.beat(InstanceInfo("b", 2, now - 100, now - 50))  # silent for 50 s
    view = RedisCluster(redis_url, "a", a, retention=600)
    listed = view.instances()
    assert [(i.id, i.gone(now)) for i in listed] == [("a", False), ("b", True)]
    assert set(view.grid()) == {"a", "b"}
    assert ra.prune(retention=30, now=now) == ["b"]
    fresh = RedisCluster(redis_url, "a", a, retention=30)
    assert [i.id for i in fresh.instances()] == ["a"]
    assert set(fresh.grid()) == {"a"}
    assert rb.client.keys(f"{rb.keys.prefix}:i:b:*") == []  # its states went with it
    for closing in (ra, rb, view, fresh):
        closing.close()


def test_an_instance_missing_after_redis_lost_everything_is_still_known_until_it_beats(
    own_redis: RedisServer, tmp_path: Path
) -> None:
    a, b = local(tmp_path, "a"), local(tmp_path, "b")
    rb = Replicator(own_redis.url, "b", b)
    rb.beat(InstanceInfo("b", 2, time.time(), time.time()))
    view = RedisCluster(own_redis.url, "a", a)
    assert [i.id for i in view.instances()] == ["b"]
    rb.client.flushall()  # as a Redis restarted without persistence: b says so again at its next beat
    assert [(i.id, i.gone(time.time())) for i in view.instances()] == [("b", False)]  # not an unknown instance
    rb.close()
    view.close()


def test_a_transition_recorded_during_a_copy_is_copied_once(redis_url: str, tmp_path: Path) -> None:
    store = local(tmp_path, "a")
    replicator = Replicator(redis_url, "a", store)
    record(store, "auth", (None, S.LOADED, "load"))
    replicator.replicate()
    record(store, "auth", (S.LOADED, S.INITIALIZED, "initialize"))
    read = store.records_since

    def racing(seq: int) -> list[tuple[int, str, str]]:  # a transition lands between the copy's reads
        record(store, "auth", (S.INITIALIZED, S.RUNNING, "start"))
        store.records_since = read  # type: ignore[method-assign]
        return read(seq)

    store.records_since = racing  # type: ignore[method-assign]
    replicator.replicate()
    replicator.replicate()
    assert remote_history(replicator.client, replicator.keys.prefix, "a", "auth") == ["load", "initialize", "start"]
    replicator.close()


def test_reads_never_wait_on_a_frozen_redis(own_redis: RedisServer, tmp_path: Path) -> None:
    a, b = local(tmp_path, "a"), local(tmp_path, "b")
    rb = Replicator(own_redis.url, "b", b)
    record(b, "auth", (None, S.LOADED, "load"))
    rb.replicate()
    rb.beat(InstanceInfo("b", 2, time.time(), time.time()))
    view = RedisCluster(own_redis.url, "a", a)
    assert "b" in view.grid()
    own_redis.pause()
    try:
        slowest = 0.0
        for _ in range(50):
            started = time.monotonic()
            grid = view.grid()
            view.instances()
            slowest = max(slowest, time.monotonic() - started)
            assert [s.name for s in grid["b"]] == ["auth"]  # the last known view
        # A read that waited on the frozen Redis would take redis-py's retries (5-6 s) or forever; each read here
        # costs one READ_TIMEOUT at most, but a loaded CI machine can stall the test itself by a few hundred ms.
        assert slowest < 2 * READ_TIMEOUT + 0.9, slowest
        assert view.degraded() is not None
        assert "redis unreachable" in view.degraded()
    finally:
        own_redis.resume()
    wait_for(lambda: view.grid() is not None and view.degraded() is None, timeout=5)
    rb.close()
    view.close()
