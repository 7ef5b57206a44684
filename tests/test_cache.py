"""The answer cache of the read routes: one build per key and store version, even under concurrent misses."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime

from plugin_health.api.cache import ResponseCache
from plugin_health.lifecycle import PluginLifecycleState
from plugin_health.store import MemoryStore, PluginSnapshot


def wait_for_users(cache: ResponseCache, key: str, users: int) -> None:
    """Until ``users`` threads hold or wait for ``key``'s build (bounded)."""
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        gate = cache._gates.get(key)
        if gate is not None and gate.users >= users:
            return
        time.sleep(0.005)
    raise AssertionError(f"{users} threads never reached the build of {key!r}")


def test_threads_missing_the_same_key_build_it_once() -> None:
    store = MemoryStore()
    cache = ResponseCache(store)
    builds: list[int] = []
    release = threading.Event()

    def build() -> tuple[bytes, int]:
        builds.append(store.version())
        release.wait(5.0)  # the first builder holds on until every thread has missed
        return b"body", 200

    answers = []
    threads = [threading.Thread(target=lambda: answers.append(cache.get("list", build))) for _ in range(4)]
    for thread in threads:
        thread.start()
    wait_for_users(cache, "list", 4)
    release.set()
    for thread in threads:
        thread.join(5.0)
    assert builds == [0]
    assert len({id(answer) for answer in answers}) == 1
    assert cache._gates == {}  # nothing left behind


def test_a_waiter_builds_again_when_the_store_moved_meanwhile() -> None:
    store = MemoryStore()
    cache = ResponseCache(store)
    builds: list[int] = []
    started, release = threading.Event(), threading.Event()

    def slow() -> tuple[bytes, int]:
        builds.append(store.version())
        started.set()
        release.wait(5.0)
        return b"old", 200

    first = threading.Thread(target=lambda: cache.get("list", slow))
    first.start()
    assert started.wait(5.0)
    answers = []
    second = threading.Thread(target=lambda: answers.append(cache.get("list", lambda: (b"new", 200))))
    second.start()
    wait_for_users(cache, "list", 2)
    # A change while the first build runs: its answer is stale, and the waiter must not take it.
    store.put(PluginSnapshot("a", PluginLifecycleState.LOADED, datetime.now(UTC)))
    release.set()
    first.join(5.0)
    second.join(5.0)
    assert builds == [0]
    assert [(a.body, a.version) for a in answers] == [(b"new", 1)]
