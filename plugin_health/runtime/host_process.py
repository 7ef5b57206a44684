"""The core as a child process of the gunicorn master: started before any worker is forked, restarted if it dies,
stopped when the master exits (:class:`HostProcess`), and its heartbeat read (:func:`read_beat`).

A module of its own, apart from :mod:`plugin_health.runtime.hosting` (what runs inside the core process), so that the
master imports only this before it spawns the core: the core's own modules (loader, supervision, metrics: 0.13 s of
imports here) would hold the spawn back, on the path of every start. The master imports them afterwards, while the
core starts, for its workers (``import_for_workers`` in :mod:`plugin_health.serving.gunicorn_conf`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping

from plugin_health.config import Settings, load_settings
from plugin_health.store import StateStore, open_instance_store
from plugin_health.store.cluster import InstanceInfo, read_instance

logger = logging.getLogger("plugin_health.runtime.hosting")  # the name its lines always had

#: The core process's command line, and its flag for a core spawned ahead (:class:`PreparedCore`).
CORE_COMMAND = ("-m", "plugin_health.runtime.core_main")
PREPARED_FLAG = "--prepared"
#: The variables a prepared core may be started with other values of than it was spawned with: the service's own
#: settings, which a core reads only once started (``load_settings``), and the one gunicorn's master sets for its
#: workers as it starts (after reading its configuration, where it prepares its core). Any other difference (a
#: variable the interpreter read as it started, or one given with gunicorn's ``--env``) takes a fresh core.
_SETTINGS_PREFIX = "PLUGIN_HEALTH_"
_SET_BY_GUNICORN = frozenset({"SERVER_SOFTWARE"})


def read_beat(store: StateStore) -> InstanceInfo | None:
    """The last heartbeat of this instance's core, or None (no core ever, or one that stopped cleanly)."""
    info = read_instance(store)
    return None if info is None or info.stopped else info


class PreparedCore:
    """A core process spawned ahead of its start: it imports its modules (a third of a second, the longest step
    before it loads its first plugin) while its owner goes on, then waits, hosting nothing and running no plugin,
    until :meth:`run` hands it the environment it serves with (its settings: an instance id, the owner's pid).

    The gunicorn master prepares its core as it reads its configuration, before it imports its worker class and
    starts (``on_starting``), so that the core's imports run on the core the master leaves idle then. A prepared core
    that is never run (a master that only checks its configuration, or fails first) exits, unstarted, when its owner
    closes the pipe or exits; so does one its owner cannot use (:meth:`run`)."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self.environ = dict(os.environ if environ is None else environ)
        self._owner = os.getpid()
        self.process: subprocess.Popen[bytes] = subprocess.Popen(
            [sys.executable, *CORE_COMMAND, PREPARED_FLAG], env=self.environ, stdin=subprocess.PIPE)

    @property
    def pid(self) -> int:
        """The prepared core's pid."""
        return self.process.pid

    def run(self, environ: Mapping[str, str], within: float = 10.0) -> subprocess.Popen[bytes] | None:
        """Start the prepared core with ``environ``, handed over within ``within`` seconds: its process, or None when
        it cannot serve with it (the caller then spawns another and discards this one): its interpreter started with
        another environment (beyond the service's own ``PLUGIN_HEALTH_*`` settings, which it reads only once started,
        and ``SERVER_SOFTWARE``), it is gone, it did not take the environment in time (it reads it only once its
        imports are done, and more than a pipe holds waits for that), or this is not the process that prepared it
        (one forked since, as gunicorn's ``--daemon`` forks its master, cannot wait for it)."""
        if (os.getpid() != self._owner or self.process.poll() is not None
                or _beyond_settings(environ) != _beyond_settings(self.environ)):
            return None
        assert self.process.stdin is not None
        with self.process.stdin:
            if not _write_within(self.process.stdin.fileno(), json.dumps(dict(environ)).encode(), within):
                return None
        return self.process

    def discard(self, within: float = 10.0) -> None:
        """End the prepared core unstarted: it exits as it reads the pipe closed, or is killed after ``within``
        seconds (it ran nothing, holds nothing: a core stuck before it reads); reaped if it is ours."""
        stdin = self.process.stdin
        if stdin is not None and not stdin.closed:
            with contextlib.suppress(OSError):
                stdin.close()
        if os.getpid() == self._owner:
            try:
                self.process.wait(within)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _write_within(fd: int, data: bytes, within: float) -> bool:
    """Write ``data`` to the pipe ``fd`` (made non-blocking) within ``within`` seconds; False when its reader took it
    too slowly or is gone."""
    os.set_blocking(fd, False)
    deadline = time.monotonic() + within
    rest = memoryview(data)
    try:
        while rest:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([], [fd], [], remaining)[1]:
                return False
            try:
                rest = rest[os.write(fd, rest):]
            except BlockingIOError:  # room for less than a write needs at once: wait again
                continue
    except OSError:  # a broken pipe: the reader is gone
        return False
    return True


def _beyond_settings(environ: Mapping[str, str]) -> dict[str, str]:
    return {key: value for key, value in environ.items()
            if not key.startswith(_SETTINGS_PREFIX) and key not in _SET_BY_GUNICORN}


class HostProcess:
    """The host as a child process of the gunicorn master: started, restarted if it dies, stopped. ``prepared``: a
    core spawned ahead (:class:`PreparedCore`), started first if it can be, else discarded."""

    def __init__(self, environ: Mapping[str, str] | None = None, restart_max: float = 30.0,
                 prepared: PreparedCore | None = None) -> None:
        self.environ = dict(os.environ if environ is None else environ)
        self.restart_max = restart_max
        self._prepared = prepared
        self.process: subprocess.Popen[bytes] | None = None
        #: Whether the running host is the core spawned ahead (``prepared``), not one spawned when it was needed.
        self.spawned_ahead = False
        self._stopping = threading.Event()
        self._ending = False  # the service is going down (``stopping``): no host is started again
        self._spawning = threading.Lock()  # a respawn never races a stop
        self._watcher: threading.Thread | None = None

    @property
    def pid(self) -> int | None:
        """The pid of the running host process, if any."""
        return None if self.process is None else self.process.pid

    def start(self, wait: float = 10.0, *, meanwhile: Callable[[], object] | None = None) -> None:
        """Start the host; return once it beats (or after ``wait`` seconds); then keep it running. ``meanwhile``
        is called once the host is spawned, before its first beat is awaited: what the caller would do next, done
        while the host imports and opens its store, instead of after."""
        settings = load_settings(environ=self.environ)  # a bad setting stops the master here, named
        self._spawn(wait)
        if meanwhile is not None:
            meanwhile()
        self._wait_for_beat(settings, wait)
        self._watcher = threading.Thread(target=self._watch, name="plugin-health-host-watcher", daemon=True)
        self._watcher.start()

    def stopping(self) -> None:
        """The service is going down: a host that exits from now on is not started again (``stop`` ends the one
        that runs). A signal to the whole process group (systemd's ``KillMode=control-group``, Ctrl-C) reaches the
        host as it reaches the master, and the host exits before the master has begun to stop. Called from the
        master's signal handlers: it only sets a flag (a lock could be held by the very code it interrupted)."""
        self._ending = True

    def stop(self, timeout: float = 30.0) -> int | None:
        """Ask the host to stop its plugins and exit (``SIGTERM``); ``SIGKILL`` after ``timeout`` seconds. A core
        prepared and never started is discarded."""
        with self._spawning:
            self._stopping.set()
            process = self.process
            prepared, self._prepared = self._prepared, None
        if prepared is not None:
            prepared.discard()
        if process is None:
            return None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                logger.error("plugin host %d did not stop within %.0f s; killing it", process.pid, timeout)
                process.kill()
                process.wait()
        if self._watcher is not None:
            self._watcher.join(timeout)
        return process.returncode

    def _spawn(self, within: float = 10.0) -> None:
        """Start the prepared core, if any and it can serve (handed over within ``within`` seconds), else spawn one."""
        env = {**self.environ, "PLUGIN_HEALTH_OWNER_PID": str(os.getpid()), "PLUGIN_HEALTH_HOST_MODE": "external"}
        prepared, self._prepared = self._prepared, None
        try:
            with self._spawning:
                if self._stopping.is_set() or self._ending:
                    return
                process = None if prepared is None else prepared.run(env, within)
                self.spawned_ahead = process is not None
                if process is None:
                    process = subprocess.Popen([sys.executable, *CORE_COMMAND], env=env, stdin=subprocess.DEVNULL)
                self.process = process
        finally:
            if prepared is not None and prepared.process is not self.process:
                prepared.discard(within)  # once another runs: it exits as soon as its imports are done
        logger.info("plugin host started as pid %d%s", process.pid, " (spawned ahead)" if self.spawned_ahead else "")

    def _wait_for_beat(self, settings: Settings, wait: float) -> None:
        """Until our host beats, so workers start on a loaded store."""
        assert self.process is not None
        store = open_instance_store(settings)
        try:
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline and self.process.poll() is None:
                beat = read_beat(store)
                if beat is not None and beat.pid == self.process.pid:
                    return
                time.sleep(0.02)
        finally:
            store.close()  # never hand a SQLite connection to the workers forked after this

    def _watch(self) -> None:
        delay = 0.5
        while not self._stopping.is_set():
            assert self.process is not None
            started = time.monotonic()
            code = self.process.wait()
            if self._stopping.is_set() or self._ending:
                return
            if time.monotonic() - started > 60:
                delay = 0.5
            logger.error("plugin host %d exited with %s; restarting it in %.1f s", self.process.pid, code, delay)
            if self._stopping.wait(delay) or self._ending:
                return
            delay = min(delay * 2, self.restart_max)
            self._spawn()
