"""Inside the core process: the host lock, the heartbeat, and ``serve`` (the core beside gunicorn's workers).

Exactly one core serves the plugins of a store: it holds an exclusive ``flock`` on a file beside the store
(:class:`HostLock`) and beats a heartbeat into the store every :data:`HEARTBEAT` seconds. Every other process
(each gunicorn worker) only reads the store, so every worker answers the same states, and a worker that dies
or is recycled takes nothing with it.

Under gunicorn, its configuration (:mod:`plugin_health.serving.gunicorn_conf`) starts the core as a process of
its own (``HostProcess`` in :mod:`plugin_health.runtime.host_process`, ``python -m plugin_health.runtime.core_main``)
from the master, before any worker is forked, restarts it if it dies, and stops it when the master exits. The core
runs no plugin code (its runners do); it is the child subreaper of what plugins fork, and exits by itself when its
owner (the master) is gone.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from plugin_health import metrics
from plugin_health.config import Settings
from plugin_health.coordination.control import ControlServer, socket_path
from plugin_health.coordination.locks import HostLock, Lock
from plugin_health.runtime.core import LOADED_KEY, Core
from plugin_health.runtime.operations import Operations
from plugin_health.store import SQLiteStore, StateStore, instance_store_file, is_shared, open_instance_store
from plugin_health.store.cluster import BEAT_KEY, InstanceInfo

if TYPE_CHECKING:
    from plugin_health.runtime.cluster import ClusterLink
    from plugin_health.runtime.singletons import SingletonKeeper

logger = logging.getLogger(__name__)

#: Seconds between two heartbeats.
HEARTBEAT = 0.5
#: A heartbeat older than this many seconds means no live host.
STALE_AFTER = 3.0
#: Exit status of a host process that found another host holding the lock.
EXIT_LOCKED = 3
_PR_SET_CHILD_SUBREAPER = 36


def host_problem(beat: InstanceInfo | None, now: float, stale_after: float = STALE_AFTER) -> str | None:
    """None when ``beat`` shows a live host at ``now``, else why not (a pure function)."""
    if beat is None:
        return "no plugin host is running"
    age = now - beat.beat
    if age > stale_after:
        return f"the plugin host (pid {beat.pid}) last beat {age:.1f} s ago"
    return None


def lock_path(settings: Settings) -> Path | None:
    """The file whose lock the hosting process holds (beside the SQLite store); None for any other store."""
    path = instance_store_file(settings)
    return None if path is None else path.with_name(path.name + ".host-lock")


class Heartbeat:
    """A daemon thread that beats into the store, renews the host's lock, and watches the owner process."""

    def __init__(
        self,
        store: StateStore,
        owner_pid: int = 0,
        on_owner_lost: Callable[[], None] | None = None,
        lock: Lock | None = None,
        instance: str = "",
    ) -> None:
        self.store = store
        self.instance = instance
        self.started = time.time()
        self.owner_pid = owner_pid
        self.on_owner_lost = on_owner_lost
        self.lock = lock
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def beat(self) -> None:
        """Write one heartbeat now."""
        self.store.set_meta(BEAT_KEY, InstanceInfo(self.instance, os.getpid(), self.started, time.time()).to_json())

    def start(self) -> None:
        """Beat now, then every ``HEARTBEAT`` seconds on a daemon thread."""
        self.beat()
        self._thread = threading.Thread(target=self._run, name="plugin-health-heartbeat", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop beating and erase the beat, so that readers know at once that no host is left."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5.0)
            self._thread = None
        self.store.set_meta(BEAT_KEY, "")

    def _run(self) -> None:
        while not self._stop.wait(HEARTBEAT):
            if self.owner_pid and os.getppid() != self.owner_pid:
                logger.warning("the owner process %d is gone; the plugin host stops", self.owner_pid)
                if self.on_owner_lost is not None:
                    self.on_owner_lost()
                return
            if self.lock is not None and not self.lock.renew():
                logger.error("another process took over hosting the plugins; this host stops")
                if self.on_owner_lost is not None:
                    self.on_owner_lost()
                return
            try:
                self.beat()
            except Exception:  # a busy or broken store must not end the heartbeat thread
                logger.exception("heartbeat not written")


def serve(settings: Settings) -> int:
    """The host process: take the lock, load and supervise every plugin on this (main) thread until told to stop.

    With a Redis store, this instance's core also copies its states to Redis and answers the other instances
    (:class:`~plugin_health.runtime.cluster.ClusterLink`).
    """
    store = open_instance_store(settings)
    path = lock_path(settings)
    lock = None if path is None else HostLock(path)
    if lock is None:
        logger.error("a memory:// store cannot be shared: nothing for a host process to do")
        return 2
    stopping = threading.Event()
    host: Core | None = None

    def stop() -> None:
        stopping.set()
        if host is not None:
            host.supervisor.request_stop()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        signal.signal(signum, signal.SIG_IGN)  # a second one must not kill the plugins' orderly stop
        stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    if not lock.acquire(timeout=10.0, stop=stopping):
        if stopping.is_set():
            return 0
        logger.error("another process hosts the plugins of this store (%s is locked)", lock_path(settings))
        return EXIT_LOCKED
    store.set_meta(LOADED_KEY, "")  # before the first beat: what a dead predecessor loaded counts no more
    metrics.observe_host_start()
    become_subreaper()  # what plugins fork and orphan becomes ours to reap, not init's
    host = Core(settings, store)
    host.own_process = True
    singletons = None
    if is_shared(settings.store_url):
        # Here, not at the top: Redis (0.1 s of imports) only for a core that shares a Redis store, since the
        # core's imports delay its first beat, and the master forks the workers after it.
        from plugin_health.runtime.cluster import keep_singletons
        singletons = keep_singletons(settings, host)
    heartbeat = Heartbeat(store, settings.owner_pid, stop, lock, settings.instance_id)
    heartbeat.start()
    reaper = threading.Thread(target=_reap_orphans_until, args=(stopping,), name="plugin-health-reaper", daemon=True)
    reaper.start()
    control: ControlServer | None = None
    link: ClusterLink | None = None
    try:
        host.start(background=False, announce=False)
        host.warn_if_empty()
        operations = Operations(host)
        listen = socket_path(settings)
        if listen is not None:
            control = ControlServer(listen, operations.answer)
            control.start()
        link = start_link(settings, store, operations, singletons)
        # Only now: /readyz passes on this mark, and a ready instance takes the tool calls and actions its workers
        # forward (marked before the control server listened, they were 503 for a moment).
        host.announce_loaded()
        logger.info("plugin host %d serves %d plugins", os.getpid(), len(host.manager))
        if not stopping.is_set():
            host.supervisor.run_forever()
    finally:
        if control is not None:
            control.stop()
        if link is not None:
            link.halt()
        host.shutdown()
        if link is not None:
            link.stop()  # after the shutdown: the last transitions are copied too
        reap_orphans()  # the last sweep: nothing a plugin started outlives the service
        heartbeat.stop()
        store.close()
        lock.release()
    return 0


def start_link(settings: Settings, store: StateStore, operations: Operations,
               singletons: SingletonKeeper | None = None) -> ClusterLink | None:
    """Link this instance to the others when the store is shared (Redis), else None."""
    if not (is_shared(settings.store_url) and isinstance(store, SQLiteStore)):
        return None
    from plugin_health.runtime.cluster import ClusterLink  # with Redis only (see serve)
    link = ClusterLink(settings, store, operations, singletons)
    link.start()
    return link


def orphans(core: int) -> list[int]:
    """Children of ``core`` that are not runners: what plugins forked, orphaned when their runner died.

    A runner (its guard) leads a process group of its own in the core's session; anything else that became the
    core's child (it is the child subreaper) came from plugin code.
    """
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pid, ppid, pgid, sid = int(entry.name), int(fields[1]), int(fields[2]), int(fields[3])
        if ppid == core and not (pgid == pid and sid != pid):
            found.append(pid)
    return found


def reap_orphans() -> int:
    """Kill and reap every orphan a plugin left behind; how many there were."""
    found = orphans(os.getpid())
    for pid in found:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
    return len(found)


def _reap_orphans_until(stopping: threading.Event, every: float = 1.0) -> None:
    while not stopping.wait(every):
        try:
            count = reap_orphans()
        except OSError:  # /proc unreadable: nothing to do here
            return
        if count:
            logger.warning("killed %d process(es) that plugins left behind", count)


def become_subreaper() -> None:
    """Make this process the reaper of its descendants' orphans (Linux ``PR_SET_CHILD_SUBREAPER``)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: runners' process groups are still killed whole
        logger.info("this system has no child subreapers; orphans of plugins are reaped by init")
