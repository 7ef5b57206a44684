"""A core's link to the other instances over Redis: its states and heartbeat copied there, their requests answered.

Nothing an instance does for itself waits on this link: its core records every transition in its own local store
first (its workers read that), and :class:`ClusterLink` copies it to Redis on a thread of its own, in order and
exactly once (:class:`plugin_health.store.redis.Replicator`). While Redis is slow or away the copy waits, the local
store says why (``store:degraded`` in ``/v1/health``), and the instance goes on hosting, supervising and serving
its own plugins; when Redis answers again, what was recorded meanwhile is copied. Singletons' leases are kept by
:class:`plugin_health.runtime.singletons.SingletonKeeper`, which this link starts and stops.
"""

from __future__ import annotations

import logging
import os
import threading
import time

import redis

from plugin_health.config import Settings
from plugin_health.coordination.control_redis import SLICE, RedisControlServer
from plugin_health.runtime.core import Core
from plugin_health.runtime.operations import Operations
from plugin_health.runtime.singletons import SingletonKeeper
from plugin_health.store import is_shared
from plugin_health.store.cluster import InstanceInfo
from plugin_health.store.redis import WRITE_TIMEOUT, Replicator, connect
from plugin_health.store.sqlite import SHARED_PROBLEM_KEY, SQLiteStore

logger = logging.getLogger(__name__)

#: Seconds between two looks at the local store for news to copy.
POLL = 0.05
#: Seconds between two heartbeats in Redis.
BEAT = 0.5
#: Seconds between two attempts while Redis does not answer.
RETRY = 0.25
#: Seconds between two sweeps of instances gone for longer than the retention period.
PRUNE_EVERY = 10.0


class ClusterLink:
    """Copies one instance's states and heartbeat to Redis, and answers the requests other instances send it."""

    def __init__(self, settings: Settings, store: SQLiteStore, operations: Operations,
                 singletons: SingletonKeeper | None = None) -> None:
        assert settings.store_url is not None
        self.singletons = singletons
        self.settings = settings
        self.instance = settings.instance_id
        self.store = store
        self.replicator = Replicator(settings.store_url, self.instance, store, settings.history_limit)
        client, keys = connect(settings.store_url, SLICE + RETRY)
        self.control = RedisControlServer(client, keys, self.instance, operations.answer)
        self.started = time.time()
        self._problem: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Copy what the local store holds now (or note why not), then keep copying on a daemon thread."""
        self._step(beat=True, prune=False)
        self.control.start()
        if self.singletons is not None:
            self.singletons.start()
        self._thread = threading.Thread(target=self._run, name="plugin-health-cluster-link", daemon=True)
        self._thread.start()

    def halt(self) -> None:
        """Before the core shuts down: take over no singleton from now on."""
        if self.singletons is not None:
            self.singletons.halt()

    def stop(self) -> None:
        """Stop answering; copy what is left and say goodbye (each tried once: a Redis away then is told later)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5.0)
        self.control.stop()
        if self.singletons is not None:
            self.singletons.stop()  # the core stopped its plugins first: give their leases back
        try:
            self.replicator.replicate()
            self.replicator.beat(self._info(stopped=True))
        except redis.RedisError as err:
            logger.warning("redis did not take this instance's last states (%s); it copies them when it returns",
                           type(err).__name__)
        self.replicator.close()

    def _info(self, stopped: bool = False) -> InstanceInfo:
        return InstanceInfo(self.instance, os.getpid(), self.started, time.time(), stopped)

    def _run(self) -> None:
        seen = self.store.version()
        next_beat = next_prune = time.monotonic()
        while not self._stop.wait(POLL if self._problem is None else RETRY):
            now = time.monotonic()
            version = self.store.version()
            beat, prune = now >= next_beat, now >= next_prune
            if version == seen and not beat and self._problem is None:
                continue
            if self._step(beat, prune):
                seen = version
            if beat:
                next_beat = now + BEAT
            if prune:
                next_prune = now + PRUNE_EVERY

    def _step(self, beat: bool, prune: bool) -> bool:
        """One round: copy, beat, sweep; whether Redis took it (the problem is noted either way)."""
        try:
            if beat:
                self.replicator.beat(self._info())
            self.replicator.replicate()
            if prune:
                for gone in self.replicator.prune(self.settings.instance_retention, time.time()):
                    logger.info("instance %s silent past the retention period: dropped from the cluster", gone)
        except redis.RedisError as err:
            self._note(f"redis unreachable ({type(err).__name__}); this instance's states are kept here and copied "
                       "when it returns")
            return False
        self._note(None)
        return True

    def _note(self, problem: str | None) -> None:
        if problem == self._problem:
            return
        if problem is None:
            logger.warning("redis answers again: this instance's states are copied there")
        else:
            logger.warning("%s", problem)
        self._problem = problem
        self.store.set_meta(SHARED_PROBLEM_KEY, problem or "")


def keep_singletons(settings: Settings, core: Core) -> SingletonKeeper | None:
    """With a shared (Redis) store, the keeper of this instance's singletons' leases, set as the loader's gate
    before the plugins load (so a singleton starts only where its lease is held); else None."""
    if not is_shared(settings.store_url):
        return None
    assert settings.store_url is not None
    client, keys = connect(settings.store_url, WRITE_TIMEOUT)
    keeper = SingletonKeeper(core, client, keys, settings.instance_id, settings.singleton_lease)
    core.loader.singletons = keeper
    return keeper
