"""The service one app carries: settings, store, response cache, and a core in this process or a control client."""

from __future__ import annotations

import atexit
import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from plugin_health.api.cache import ResponseCache
from plugin_health.config import Settings
from plugin_health.coordination.control import Control, HostUnavailableError, RemoteControl, socket_path
from plugin_health.coordination.locks import HostLock, Lock, lock_is_free
from plugin_health.errors import ConfigError, UnknownInstanceError
from plugin_health.runtime.core import Core
from plugin_health.runtime.host_process import read_beat
from plugin_health.runtime.hosting import Heartbeat, host_problem, lock_path, start_link
from plugin_health.runtime.operations import Operations
from plugin_health.store import SQLiteStore, StateStore, is_shared, open_instance_store
from plugin_health.store.cluster import ClusterView, InstanceInfo, LocalCluster

#: The key of an app's service in ``app.extensions``.
EXTENSION = "plugin_health"

if TYPE_CHECKING:
    from plugin_health.coordination.control_redis import RedisRemoteControl
    from plugin_health.runtime.cluster import ClusterLink

logger = logging.getLogger(__name__)


@dataclass
class Service:
    """What the views reach through ``current_app.extensions["plugin_health"]``."""

    settings: Settings
    store: StateStore
    cache: ResponseCache
    host: Core | None = None
    control: Control | None = None
    lock: Lock | None = None
    heartbeat: Heartbeat | None = None
    #: Every instance sharing the store, and their plugins (this instance alone, but for a Redis store).
    cluster: ClusterView | None = None
    #: This process's core's link to the other instances (a Redis store, a core in this process).
    link: ClusterLink | None = None
    #: Where the app mounts the routes: "" at its root, else a path prefix such as "/plugins".
    url_prefix: str = ""
    #: Whether the server process serving this app still serves (the gunicorn configuration points it at its
    #: worker's ``alive``): event streams end once it does not.
    serving: Callable[[], bool] | None = None
    _remote: dict[str, RedisRemoteControl] = field(default_factory=dict)
    _closed: bool = False
    #: The settings ``host_problem`` last worked the host lock's file out from, and that file (probes ask often).
    _lock_file: tuple[Settings, Path | None] | None = None

    def stopping(self) -> bool:
        """Whether this process is stopping: its worker is, or the service was shut down."""
        return self._closed or (self.serving is not None and not self.serving())

    @property
    def instance(self) -> str:
        """This instance's id."""
        return self.settings.instance_id

    def control_for(self, instance: str | None) -> Control:
        """Who carries out an action on ``instance`` (None: this instance): this instance's core, or, over Redis,
        another instance's; :class:`UnknownInstanceError` for an id no live instance has, and
        :class:`HostUnavailableError` when nothing can carry it now."""
        if instance is None or instance == self.instance:
            if self.control is None:
                raise HostUnavailableError("no process hosts the plugins of this instance")
            return self.control
        if not (self.settings.store_url is not None and is_shared(self.settings.store_url)):
            raise UnknownInstanceError(instance)  # no other instance to reach
        from plugin_health.coordination.control_redis import RedisRemoteControl  # Redis only here (see _cluster)
        from plugin_health.store.redis import RedisCluster
        if not isinstance(self.cluster, RedisCluster):
            raise UnknownInstanceError(instance)
        known = {i.id: i for i in self.cluster.instances()}
        if instance not in known:
            if self.cluster.degraded():
                raise HostUnavailableError(f"the cluster cannot be reached: {self.cluster.degraded()}")
            raise UnknownInstanceError(instance)
        if known[instance].gone(time.time()):
            raise HostUnavailableError(f"instance {instance} is gone (no heartbeat)")
        if instance not in self._remote:
            assert self.settings.store_url is not None
            self._remote[instance] = RedisRemoteControl(self.settings.store_url, instance, self._timeout())
        return self._remote[instance]

    def control_for_plugin(self, name: str) -> Control:
        """Who serves ``name``'s tool calls: this instance, or, for a singleton another instance runs, its owner."""
        snapshot = self.store.snapshot(name)
        if snapshot is not None and snapshot.singleton and snapshot.owner not in (None, self.instance):
            return self.control_for(snapshot.owner)
        return self.control_for(None)

    def _timeout(self) -> float:
        """Seconds a worker waits for a core's answer: the longest default call, and room to queue."""
        return self.settings.default_timeout + 10

    def host_problem(self) -> str | None:
        """None while a live process hosts the plugins (always, when this one does), else why not."""
        if self.host is not None or self.store.degraded():
            return None  # this process hosts them; or the store cannot tell now (its own check says so)
        beat = read_beat(self.store)
        problem = host_problem(beat, time.time())
        known = self._lock_file
        if known is None or known[0] is not self.settings:
            known = self._lock_file = (self.settings, lock_path(self.settings))
        path = known[1]
        if problem is None and beat is not None and path is not None and lock_is_free(path):
            problem = f"the plugin host (pid {beat.pid}) is gone"  # died without a word, its lock with it
        return problem

    def shutdown(self) -> None:
        """Stop the embedded host, if this process runs one, and release connections; safe to call twice."""
        self._closed = True
        if self.link is not None:
            self.link.halt()
        if self.host is not None:
            self.host.shutdown()
        if self.link is not None:
            self.link.stop()
            self.link = None
        for remote in self._remote.values():
            remote.close()
        self._remote.clear()
        if self.cluster is not None:
            self.cluster.close()
        if self.heartbeat is not None:
            self.heartbeat.stop()
            self.heartbeat = None
        if self.lock is not None:
            self.lock.release()
            self.lock = None
        if self.control is not None:
            self.control.close()
        self.store.close()


def _hosts_here(settings: Settings, store: StateStore) -> Lock | bool:
    """Whether this process hosts the plugins: True, False, or the lock it took to do so."""
    if settings.host_mode == "embedded" or not settings.shared_store:
        return True
    path = lock_path(settings)
    lock = None if path is None else HostLock(path)
    if settings.host_mode == "external" or lock is None:
        return lock is None
    # A little patience: readers probe a file lock for a moment when they check that the host lives.
    return lock if lock.acquire(timeout=0.2) else False


def _cluster(settings: Settings, store: StateStore, service: Service) -> ClusterView:
    """The cluster this instance sees: every instance on a Redis store, else this one alone."""
    if settings.store_url is not None and is_shared(settings.store_url) and isinstance(store, SQLiteStore):
        # Here, not at the top: Redis (60 ms of imports in each worker, five at once at start-up) only for a service
        # that shares a Redis store.
        from plugin_health.store.redis import RedisCluster
        view = RedisCluster(settings.store_url, settings.instance_id, store, settings.instance_retention)
        # Connect now (at most one short timeout if Redis is away): a worker's first connection costs up to a few
        # hundred milliseconds under gevent (its resolver's threads start), which no read should wait for.
        view.instances()
        return view
    started = time.time()

    def here() -> InstanceInfo | None:
        # A core in this process beats only when other processes need to know it lives (a shared store).
        return InstanceInfo(settings.instance_id, os.getpid(), started, time.time()) if service.host else None

    return LocalCluster(settings.instance_id, store, here)


def _refuse_green_threads(settings: Settings) -> None:
    """A core needs real threads (it waits on runners with hard deadlines): not a process gevent has patched."""
    monkey = sys.modules.get("gevent.monkey")
    if monkey is not None and monkey.is_module_patched("threading"):
        raise ConfigError(
            "PLUGIN_HEALTH_HOST_MODE", settings.host_mode,
            "a core process beside gevent workers (gunicorn.conf.py starts one), or gthread workers (-k gthread) "
            "for an app that runs its own core",
        )


def start_service(settings: Settings) -> Service:
    """Open the store and host the plugins here, unless another process already does for the same store (the core
    process that the gunicorn configuration starts, or another app): then only read the store, and send actions
    there."""
    store = open_instance_store(settings)
    service = Service(settings, store, ResponseCache(store))
    hosts = _hosts_here(settings, store)
    if hosts is not False:
        _refuse_green_threads(settings)
        service.host = Core(settings, store)
        singletons = None
        if is_shared(settings.store_url):
            from plugin_health.runtime.cluster import keep_singletons  # with Redis only (see _cluster)
            singletons = keep_singletons(settings, service.host)
        if not isinstance(hosts, bool):
            service.lock = hosts
            service.heartbeat = Heartbeat(store, lock=hosts, instance=settings.instance_id)
            service.heartbeat.start()
        service.host.start()
        service.host.warn_if_empty()
        operations = Operations(service.host)
        service.control = operations
        service.link = start_link(settings, store, operations, singletons)
        atexit.register(service.shutdown)
    else:
        logger.info("plugins are hosted by another process; this one reads the store")
        path = socket_path(settings)
        if path is not None:
            service.control = RemoteControl(path, service._timeout())
    service.cluster = _cluster(settings, store, service)
    return service
