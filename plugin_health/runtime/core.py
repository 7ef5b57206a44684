"""``Core``: the lifecycle, loader, supervisor and store writer of one service instance; it never runs plugin code.

Exactly one core serves the plugins of a service instance (the core process beside gunicorn's workers, or the app
itself when nothing else does). Every plugin lives in a runner process (:mod:`plugin_health.runtime.runners`): the
core only sends requests and reads plain-JSON answers under hard deadlines, so no plugin can freeze, crash or
fool it. It publishes every plugin's snapshot and transitions to the store, which every worker reads.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
import logging
import os
import sys
import threading
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence

from packaging.version import Version

from plugin_health import metrics
from plugin_health.config import Settings
from plugin_health.errors import UnknownPluginError
from plugin_health.lifecycle import PluginLifecycleManager, PluginLifecycleState, TransitionRecord, UnavailableReason
from plugin_health.lifecycle.machine import allowed_triggers
from plugin_health.lifecycle.manager import ROUTINE
from plugin_health.loader.loader import FirstCheck, LoaderSettings, PluginLoader
from plugin_health.loader.registry import PluginRegistry
from plugin_health.loader.sources import discover
from plugin_health.runtime.runners import RunnerPool, RunnerSettings
from plugin_health.sandbox import SandboxLimits
from plugin_health.store import MemoryStore, PluginSnapshot, StateStore
from plugin_health.supervision import SupervisionSettings, Supervisor
from plugin_health.supervision.policy import stale_deadline
from plugin_health.tools import ToolRunner

logger = logging.getLogger(__name__)

#: Store meta key: set once loading has finished (startupz).
LOADED_KEY = "loaded"
#: Store meta key of the set of plugins an operator disabled (a JSON list).
DISABLED_KEY = "disabled"
#: Seconds between two writes of news that can wait (the time of a passing check), so that the store's
#: version, and with it every worker's cache and every client's ETag, moves at most about once a second
#: for them, however many plugins are checked.
COALESCE = 1.0
#: Threads that run due health checks, restarts and recoveries side by side.
SUPERVISION_WORKERS = 8
#: Seconds loading waits for the first health checks, which run side by side, before it counts as finished.
FIRST_CHECKS_WAIT = 1.0
#: While loading, transitions are written to the store in batches (one transaction each), at least this often
#: (seconds) and whenever this many wait (one transaction per transition was a third of a 10,000-plugin start).
BATCH_EVERY = 0.1
BATCH_SIZE = 2000
#: How much nicer than the rest of the process the thread writing those batches runs (Linux, where a thread has a
#: priority of its own; the thread ends with loading). It publishes what already happened, where the runner bringing
#: plugins up is what loading waits for: on two cores, the writer's SQLite steps (which run without the GIL, beside
#: the core's other threads) took the runner's core often enough that it waited, ready to run, a tenth of the load.
BATCH_NICENESS = 10
#: While loading, the cyclic garbage collector's first generation is collected every this many allocations (not
#: Python's 700): the core only adds long-lived state then (plugins, models, records), and each full collection
#: walked all of it: 10,000 plugins took 450 + 40 + 4 collections, 0.39 s of the core's 3.8 s of CPU (with this:
#: 28 + 2 + 0, 0.1 s). The core runs no plugin code, so nothing but its own bookkeeping sees the difference.
LOADING_GC_THRESHOLD = 10_000
#: A threshold of the older generations that loading never reaches (collections of the generation below).
_NEVER = 1 << 30


def disabled_plugins(store: StateStore) -> set[str]:
    """The plugins an operator disabled (they stay so across restarts of the service)."""
    text = store.get_meta(DISABLED_KEY)
    try:
        names = json.loads(text) if text else []
    except ValueError:
        return set()
    return {str(name) for name in names} if isinstance(names, list) else set()


class Core:
    """Owns every plugin of one service instance (in runners) and publishes their states to ``store``."""

    def __init__(self, settings: Settings, store: StateStore | None = None) -> None:
        self.settings = settings
        #: Whether the core has its process to itself (the plugin host's, ``hosting.run_host``), not a host app's:
        #: then what loading made is frozen out of the garbage collector's reach (``_fewer_collections``).
        self.own_process = False
        self.store: StateStore = store if store is not None else MemoryStore(settings.history_limit)
        self.manager = PluginLifecycleManager(history_limit=settings.history_limit)
        #: Counts transitions and calls into the metrics; while loading, a batch at a time. Told of a transition
        #: before the batch takes it, so that the metrics count what the store holds by the time it holds it
        #: (it only counts: the order the others below see transitions in is the same).
        self.tally = metrics.Tally()
        self.manager.subscribe(self.tally.transition, self.tally.transitions)
        # Subscribed next: the store sees each plugin's transitions in the order they happen, before the
        # cascade that a transition may set off.
        self.manager.subscribe(self._publish_record, self._publish_records)
        self.registry = PluginRegistry()
        self.runners = RunnerPool(RunnerSettings(
            grace=settings.runner_grace,
            queue_limit=settings.queue_limit,
            max_message=settings.max_message_bytes,
            load_limits=SandboxLimits(settings.default_timeout, settings.default_memory_limit_mb),
        ))
        self.loader = PluginLoader(
            self.registry,
            self.manager,
            LoaderSettings(
                default_timeout=settings.default_timeout,
                default_memory_limit_mb=settings.default_memory_limit_mb,
                plugin_config=settings.plugins,
            ),
            placement=self.runners,
        )
        self.supervisor = Supervisor(
            self.loader,
            SupervisionSettings(
                failure_threshold=settings.failure_threshold,
                max_restarts=settings.max_restarts,
                restart_window=settings.restart_window,
                backoff_base=settings.backoff_base,
                backoff_max=settings.backoff_max,
                health_interval=settings.health_interval,
                workers=SUPERVISION_WORKERS,
            ),
        )
        self.runners.on_lost = self.supervisor.runner_lost
        # A plugin brought up with its load is checked once then too, and the check judged as soon as it is known:
        # its snapshot is written once, in the batch with its transitions, the check included.
        self.loader.judge_first = self._judge_first
        self._judged_first: set[str] = set()
        self._failed_first: dict[str, FirstCheck] = {}
        self.supervisor.subscribe(self._publish)
        self.loader.observe(self.tally.call, self.tally.calls)
        self.tools = ToolRunner(self.supervisor)
        self._shutdown = threading.Lock()
        self._stopped = False
        # One writer at a time: a snapshot is built and written under this lock, so an older one can never
        # overwrite a newer one.
        self._publishing = threading.RLock()
        self._pending: set[str] = set()
        #: While loading: the transitions not yet written, in order, and the plugins whose snapshot goes with them
        #: (None: every write goes to the store at once).
        self._batch: list[TransitionRecord] | None = None
        self._batch_names: dict[str, None] = {}
        self._batch_due = threading.Event()  # a full batch: the writer goes at once
        self._writing = threading.Lock()  # batches are written one at a time, in order
        self._flushed = threading.Event()
        self._flusher: threading.Thread | None = None
        #: Singletons' owners (the instance holding each one's lease), as the singleton keeper last saw them.
        self.owners: dict[str, str | None] = {}
        #: Singletons on standby here: their snapshot as their owner last published it.
        self.mirrors: dict[str, PluginSnapshot] = {}

    def start(self, background: bool = True, announce: bool = True) -> None:
        """Discover and load every plugin (directories, then entry points), then supervise them.

        ``background=False`` leaves supervision to the caller (``supervisor.run_forever()`` on the main
        thread of the host process). ``announce=False`` leaves marking loading finished (``announce_loaded``,
        which turns ``/readyz`` 200) to the caller too, once it takes what workers forward (the control server).
        """
        self.runners.start_shared()  # boots while the plugins are discovered; stopped below if none shares it
        self.store.set_meta(LOADED_KEY, "")
        self.loader.disabled = disabled_plugins(self.store)
        batching = threading.Event()
        writer = threading.Thread(target=self._write_batches, args=(batching,), name="plugin-health-batches",
                                  daemon=True)
        with self._publishing:
            self._batch = []
        self.manager.routine_level = logging.DEBUG  # counted per batch instead (_write_batch)
        writer.start()
        try:
            self.tally.defer()
            with _fewer_collections(freeze=self.own_process):
                self.loader.load(discover(self.settings.plugin_dirs, self.settings.entry_point_group))
            self.runners.stop_unused_shared()
            # The first health checks run before loading counts as finished, so that ``healthy`` speaks of a check
            # from the first answer on: those of the plugins sharing a runner many at a time, the others side by
            # side; a few slow ones cannot hold start-up past FIRST_CHECKS_WAIT.
            judged, self._judged_first = self._judged_first, set()
            failed, self._failed_first = self._failed_first, {}
            self.supervisor.check_many([name for name in self.manager if name not in judged and name not in failed])
            for name, first in failed.items():
                self.supervisor.check_made(name, first)
            self.supervisor.tick()
            self.supervisor.wait_idle(FIRST_CHECKS_WAIT)
        finally:
            batching.set()
            self._batch_due.set()
            writer.join()
            self.manager.routine_level = logging.INFO
            try:
                self._write_batch(last=True)  # what fails to be written stops the start here
            finally:
                self.tally.flush(deferring=False)
        self.store.begin(list(self.manager))
        self.flush()
        if announce:
            self.announce_loaded()
        self._flusher = threading.Thread(target=self._flush_loop, name="plugin-health-publisher", daemon=True)
        self._flusher.start()
        if background:
            self.supervisor.start()

    def announce_loaded(self) -> None:
        """Mark loading finished in the store: readiness may pass from now on."""
        self.store.set_meta(LOADED_KEY, "1")

    def warn_if_empty(self) -> None:
        """Say so, naming ``PLUGIN_HEALTH_PLUGIN_PATH``, when nothing at all was found to host (the service calls
        it once loaded): a service pointed at the wrong place would otherwise serve 0 plugins, ready and silent."""
        if len(self.manager):
            return
        group = self.settings.entry_point_group
        logger.warning("no plugins found: PLUGIN_HEALTH_PLUGIN_PATH=%r holds none%s; this service hosts 0 plugins",
                       self.settings.plugin_path, f" and no package has a {group!r} entry point" if group else "")

    def shutdown(self) -> None:
        """Stop every plugin and reap child processes; safe to call twice."""
        with self._shutdown:
            if self._stopped:
                return
            self._stopped = True
        self.supervisor.stop()
        self.loader.shutdown()
        self._flushed.set()
        if self._flusher is not None:
            self._flusher.join(5.0)
        self.flush()
        if self.own_process:  # what loading froze goes back to the collector, for the interpreter's shutdown
            gc.unfreeze()

    def snapshot(self, name: str) -> PluginSnapshot:
        """What every worker is told of ``name`` right now (a singleton on standby: as its owner runs it, when the
        keeper has seen that)."""
        standby = self.manager.state_of(name) is PluginLifecycleState.UNAVAILABLE and (
            self.manager.last(name).reason or "").startswith(UnavailableReason.STANDBY.value)
        mirror = self.mirrors.get(name) if standby else None
        if mirror is not None:
            return dataclasses.replace(mirror, owner=self.owners.get(name), singleton=True, standby=True,
                                       allowed=allowed_triggers(PluginLifecycleState.UNAVAILABLE))
        return self._own_snapshot(name, standby)

    def _own_snapshot(self, name: str, standby: bool) -> PluginSnapshot:
        last = self.manager.last(name)
        state = self.manager.state_of(name)
        entry = self.registry.get(name) if name in self.registry else None
        watch = self.supervisor.watch(name)
        found = watch.last_result
        stale_after = None  # a RUNNING plugin is stale once its checks are late (stale_deadline)
        if state is PluginLifecycleState.RUNNING:
            limit = None if entry is None or entry.handle is None else entry.handle.limits.timeout
            timeout = self.settings.default_timeout if limit is None else limit
            stale_after = stale_deadline(watch.last_check, last.at, self.supervisor.settings.health_interval, timeout)
        return PluginSnapshot.made(
            name=name,
            state=state,
            since=last.at,
            version=None if entry is None else _version_text(entry.spec.version),
            reason=last.reason,
            error_type=last.error_type,
            error=last.error,
            requires=() if entry is None or not entry.spec.requires else tuple(str(r) for r in entry.spec.requires),
            critical=False if entry is None else entry.spec.critical,
            isolation=None if entry is None else getattr(entry.handle, "isolation", entry.spec.isolation),
            tools=() if entry is None else entry.spec.tools,
            consecutive_failures=watch.consecutive_failures,
            restarts=watch.restarts,
            last_check=watch.last_check,
            last_check_ok=watch.last_check_ok,
            allowed=allowed_triggers(state),
            stale_after=stale_after,
            singleton=False if entry is None else entry.spec.singleton,
            owner=self.owners.get(name),
            check_status=None if found is None else found.status,
            observed_value=None if found is None else found.observed_value,
            observed_unit=None if found is None else found.observed_unit,
            check_output=None if found is None else found.output,
            standby=standby,
        )

    def flush(self) -> None:
        """Write the news that was waiting (``COALESCE``), in one step."""
        with self._publishing:
            batching = self._batch is not None
            if batching:  # while loading: with the batch, after the transitions before it
                self._batch_names.update(dict.fromkeys(sorted(self._pending)))
                self._pending = set()
        if batching:
            self._write_batch()
            return
        with self._publishing:
            names, self._pending = sorted(self._pending), set()
            snapshots = self._snapshots_of(names)
            if snapshots:
                self.store.put_many(snapshots)

    def _snapshots_of(self, names: Iterable[str]) -> list[PluginSnapshot]:
        """The snapshots of ``names`` to publish (a plugin gone meanwhile has none; the caller holds
        ``_publishing``)."""
        snapshots = []
        for name in names:
            try:
                snapshots.append(self.snapshot(name))
            except UnknownPluginError:
                logger.debug("plugin %s is gone; nothing to publish", name)
        return snapshots

    def _flush_loop(self) -> None:
        while not self._flushed.wait(COALESCE):
            try:
                self.flush()
            except Exception:  # a busy or broken store must not end the publisher thread
                logger.exception("plugin snapshots not published")

    def republish(self, name: str) -> None:
        """Publish ``name``'s snapshot now (something it shows changed outside the lifecycle: its owner)."""
        self._publish(name, urgent=True)

    def _publish_record(self, record: TransitionRecord) -> None:
        with self._publishing:
            if not self._into_batch((record,)):
                self.store.put(self.snapshot(record.plugin), record)

    def _publish_records(self, records: Sequence[TransitionRecord]) -> None:
        """``_publish_record`` of several records at once (a plugin that came up in one step): in the batch while
        loading, else written in one step with the snapshots of their plugins as they are now."""
        with self._publishing:
            if not self._into_batch(records):
                self.store.put_many(self._snapshots_of(dict.fromkeys(r.plugin for r in records)), records)

    def _into_batch(self, records: Sequence[TransitionRecord]) -> bool:
        """While loading, add ``records`` to the batch (sooner due once it is full): True; else False. The caller
        holds ``_publishing``; either way their plugins' news waits no more."""
        names = dict.fromkeys([record.plugin for record in records])
        self._pending.difference_update(names)
        if self._batch is None:
            return False
        self._batch.extend(records)
        self._batch_names.update(names)
        if len(self._batch) >= BATCH_SIZE:
            self._batch_due.set()
        return True

    def _write_batches(self, done: threading.Event) -> None:
        """While loading: write the batch every ``BATCH_EVERY`` seconds (sooner when it is full), so that the store
        follows the load closely however long a plugin takes."""
        _nicer(BATCH_NICENESS)
        while not done.is_set():
            self._batch_due.wait(BATCH_EVERY)
            self._batch_due.clear()
            try:
                self._write_batch()
            except Exception:  # a busy or broken store: the batch is kept and written with the next one
                logger.exception("transitions not recorded yet")

    def _write_batch(self, last: bool = False) -> None:
        """Write the waiting transitions, in the order they happened, with their plugins' snapshots as of now, in
        one step: the store always holds a prefix of what happened. Batches are written one at a time, in order
        (``_writing``); transitions go on meanwhile (the store is written without ``_publishing`` held), except for
        the ``last`` batch, after which every transition is written at once again. A batch that cannot be written
        is put back, to go first in the next one."""
        with self._writing, self._publishing if last else contextlib.nullcontext():
            with self._publishing:
                if self._batch is None:  # loading is over: every transition was written at once since
                    return
                records, names = self._batch, self._batch_names
                self._batch, self._batch_names = (None if last else []), {}
                snapshots = self._snapshots_of(names)
            # every transition of this batch is counted before the store takes it; after the last, each at once
            self.tally.flush(deferring=not last)
            if not records and not snapshots:
                return
            try:
                self.store.put_many(snapshots, records)
            except Exception:
                if not last:
                    with self._publishing:
                        assert self._batch is not None
                        self._batch[:0] = records
                        self._batch_names = {**names, **self._batch_names}
                raise
        if records:
            counts = Counter(record.dest._value_ for record in records if record.dest in ROUTINE)
            logger.info("recorded %d transitions while loading (%s)", len(records),
                        ", ".join(f"{n} to {state}" for state, n in counts.items()) or "none routine",
                        extra={"counts": dict(counts)})

    def _judge_first(self, name: str, first: FirstCheck) -> None:
        """While loading: judge the first check of a plugin made as it came up with its load, now if it passed (the
        plugin is RUNNING, and its transitions are in the batch not yet written, which then shows the check too).
        One that failed is judged once loading ends, as before: its judgement may stop the plugin, a call into the
        runner that the load stream holds until its last load."""
        if self.supervisor.check_made_if_passed(name, first):
            self._judged_first.add(name)
        else:
            self._failed_first[name] = first

    def _publish(self, name: str, urgent: bool) -> None:
        with self._publishing:
            if self._batch is not None:  # while loading: with the batch, in its order (a batch is due in 0.1 s)
                self._pending.discard(name)
                self._batch_names[name] = None
                return
            if not urgent:
                self._pending.add(name)
                return
            self._pending.discard(name)
            try:
                self.store.put(self.snapshot(name))
            except UnknownPluginError:
                logger.debug("plugin %s is gone; nothing to publish", name)


def _version_text(version: Version) -> str:
    """``str(version)``, worked out once a ``Version`` object (``packaging`` builds the text anew at each call: a tenth
    of making a plugin's snapshot, one a plugin a batch as thousands load; specs declaring the same short text share
    one object, ``loader.registry._version``). Kept by the object, not by equality: ``1.0`` and ``1.0.0`` are equal
    versions with texts of their own. Only short texts are kept (a plugin may declare one as long as a message), and
    at most ``_VERSION_TEXTS_KEPT``."""
    kept = _version_texts.get(id(version))
    if kept is not None and kept[0] is version:  # (the object is held here: its id is its own while kept)
        return kept[1]
    text = str(version)
    if len(text) <= 64:
        if len(_version_texts) >= _VERSION_TEXTS_KEPT:
            _version_texts.clear()
        _version_texts[id(version)] = (version, text)
    return text


_VERSION_TEXTS_KEPT = 1024
_version_texts: dict[int, tuple[Version, str]] = {}


def _nicer(step: int) -> None:
    """Make the calling thread ``step`` nicer than it is (capped by the system at 19): Linux only, where a thread id
    names one thread (elsewhere ``setpriority`` would take it for a process id); nothing where the system refuses."""
    if sys.platform != "linux":
        return
    try:
        thread = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, thread, os.getpriority(os.PRIO_PROCESS, thread) + step)
    except OSError:  # not allowed here (a sandboxed system): the writer runs as the rest of the core does
        pass


@contextlib.contextmanager
def _fewer_collections(freeze: bool = False) -> Iterator[None]:
    """Collect the first generation every :data:`LOADING_GC_THRESHOLD` allocations, as long as the block runs (the
    thresholds are the process's: put back as they were, unless someone changed them meanwhile). A threshold of 0
    (a host app that turned collection off that way) is left alone: fewer collections, never more.

    ``freeze`` (the core has its process to itself): the older generations are not collected at all while the block
    runs, and when it ends everything the process holds is moved out of the collector's reach (``gc.freeze``). What
    loading makes is the core's long-lived state, and none of it is garbage (10,000 plugins, failures of every phase
    among them: a full collection after loading found nothing to free, in 73 ms over 216,000 objects); the two
    collections of the older generations it took while loading 10,000 plugins walked it for 40-60 ms, and every full
    collection after would have walked it again. Never in a host app's process: its own garbage would never be
    freed."""
    before = gc.get_threshold()
    if before[0] == 0:
        yield
        return
    raised = (max(before[0], LOADING_GC_THRESHOLD), *((_NEVER, _NEVER) if freeze else before[1:]))
    gc.set_threshold(*raised)
    try:
        yield
    finally:
        if gc.get_threshold() == raised:
            if freeze:
                gc.freeze()
            gc.set_threshold(*before)
