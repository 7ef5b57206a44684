"""gunicorn settings for plugin-health: ``gunicorn -c python:plugin_health.serving.gunicorn_conf``.

``plugin-health serve`` runs gunicorn with them; from a clone, ``gunicorn wsgi:app`` reads ``./gunicorn.conf.py``,
which re-exports them (``__all__``). The master starts one plugin host process before it forks any worker: the
host owns every plugin and publishes their states to the shared store; the workers only read the store, so any
worker answers the same, and a worker that dies or is recycled takes nothing with it. Command-line flags (``-w``,
``-b``, ...) and ``GUNICORN_CMD_ARGS`` override what is set here.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import importlib
import os
import re
import resource
import shutil
import signal
import socket
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

# Metrics of every worker and of the plugin host are summed through files (prometheus_client's multiprocess
# mode), which must be chosen before prometheus_client is first imported: so before any module of plugin_health
# that imports it (the package root and ``plugin_health.serving`` import nothing heavy: lint-imports keeps them so).
if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
    _metrics = Path(os.environ.get("PLUGIN_HEALTH_RUN_DIR", "run"), "metrics").resolve()
    shutil.rmtree(_metrics, ignore_errors=True)  # counts of a previous run are not this run's
    _metrics.mkdir(parents=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(_metrics)

from plugin_health.config import load_settings  # after the metrics directory is chosen
from plugin_health.errors import ConfigError
from plugin_health.runtime.host_process import HostProcess, PreparedCore  # not hosting (its imports: the core's)
from plugin_health.serving.patching import entry_points_read_once, read_for_workers
from plugin_health.store import check_url

#: What gunicorn reads from this module (and what ``./gunicorn.conf.py`` re-exports): its settings and hooks.
__all__ = [
    "bind",
    "child_exit",
    "control_socket_disable",
    "graceful_timeout",
    "keepalive",
    "limit_request_fields",
    "limit_request_line",
    "max_requests",
    "max_requests_jitter",
    "on_exit",
    "on_starting",
    "post_fork",
    "post_worker_init",
    "pre_request",
    "threads",
    "timeout",
    "when_ready",
    "worker_class",
    "worker_connections",
    "worker_exit",
    "workers",
]

bind = os.environ.get("PLUGIN_HEALTH_BIND", "127.0.0.1:8000")
# Health reads are short and CPU-bound: a few workers per core; WEB_CONCURRENCY overrides.
workers = int(os.environ.get("WEB_CONCURRENCY", min(2 * (os.cpu_count() or 1) + 1, 8)))


def _workers_host_plugins() -> bool:
    """Whether each worker runs a core of its own (host mode ``embedded``, or a store no other process sees)."""
    try:
        settings = load_settings()
    except ConfigError:
        return False  # on_starting stops the master, naming the variable
    return settings.host_mode == "embedded" or not settings.shared_store


#: Decided once, as this configuration is read: the worker class, whether a core is spawned ahead, and whether
#: ``on_starting`` starts one follow from it (the settings it reads do not change in between).
_HOSTED_BY_WORKERS = _workers_host_plugins()

# Each worker serves its connections on one gevent event loop: a client that sends slowly or sits idle holds a
# greenlet and a socket, never a thread (gthread reads each request on a pool thread: a few clients dribbling their
# headers took every thread and blocked the probes for 10 s). Safe because workers never run plugin code: what a
# request waits for (a tool call, an operator action) is a socket round trip to the core process, cooperative once
# gevent has patched the standard library (post_fork below). Workers that run a core of their own keep threads:
# the core needs real threads and its own watch over its runner processes, which gevent's patches take over
# (post_worker_init refuses that mix). `-k gthread` brings the threads back.
worker_class = "gthread" if _HOSTED_BY_WORKERS else "gevent"
# Connections one worker serves at once; past it the worker stops accepting until one closes (the other workers
# take new ones), and past workers x this, new connections wait in the listen backlog.
worker_connections = 1000
threads = int(os.environ.get("PLUGIN_HEALTH_THREADS", 4))  # per worker, with -k gthread only
# Workers never run plugin code (the host does), so their timeout needs no room for plugin timeouts.
timeout = 30
graceful_timeout = 30
# Seconds an idle keep-alive connection stays open. Under gevent it also bounds the reading of every request line
# and headers: a connection that has not sent them whole within 5 s is closed.
keepalive = 5
# Recycle workers now and then (leaks in anything they import). The jitter is half the period, so that workers
# under the same load do not all recycle at once (measured: 1000 +- 100 at 1,800 requests/s recycled all five
# within a second, every few seconds).
max_requests = 10000
max_requests_jitter = 5000
# Request line and header limits kept small: health routes need neither long URLs nor big headers.
limit_request_line = 4094
limit_request_fields = 50
# gunicorn's control socket has one fixed default path per user: two services on one host would fight over it.
control_socket_disable = True

_host: HostProcess | None = None


def _run_by_gunicorn() -> bool:
    """Whether gunicorn's master reads this configuration to run (``gunicorn ...``, ``python -m gunicorn ...``): not
    a check of it (``--check-config``, ``--print-config``), nor any other program that imports it."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    run = (spec is not None and spec.name == "gunicorn.__main__") or os.path.basename(sys.argv[0]) == "gunicorn"
    return run and not {"--check-config", "--print-config"} & set(sys.argv)


def _prepare_core() -> PreparedCore | None:
    """The core process, spawned as the master reads this configuration: it imports its modules (a third of a
    second) while the master imports its worker class and starts, on the CPU the master leaves idle then, and hosts
    only once ``on_starting`` starts it, with the environment it would have been spawned with there (else it is
    discarded). None where no core is to run, or where it cannot be spawned now (``on_starting`` spawns one then,
    and reports what stops it)."""
    if not _run_by_gunicorn() or _HOSTED_BY_WORKERS:
        return None
    try:
        return PreparedCore()
    except OSError:
        return None


_prepared = _prepare_core()
#: In a gevent worker: wait until the write end of a pipe that nothing is written to is ready, which it always is:
#: one pass through the event loop (pre_request).
_take_turn: Callable[[], None] | None = None


def _instance_id(binds: list[str]) -> str:
    """This instance's default id: the host name and the port it listens on (``web-1:8000``), or the socket's name."""
    host = re.sub(r"[^A-Za-z0-9_.:-]", "-", socket.gethostname())[:80] or "localhost"
    address = binds[0] if binds else ""
    where = address.rsplit("/", 1)[-1] if address.startswith("unix:") else address.rsplit(":", 1)[-1]
    where = re.sub(r"[^A-Za-z0-9_.-]", "-", where)[:19]
    return f"{host}:{where}" if where else host


def on_starting(server: Any) -> None:
    """Start the plugin host before any worker exists (no threads yet in the master to fork with)."""
    global _host
    # The core and every worker (forked from here) take the same instance id: by default the host name and port, so
    # that instances on one machine sharing a Redis store keep apart.
    if not os.environ.get("PLUGIN_HEALTH_INSTANCE", "").strip():
        os.environ["PLUGIN_HEALTH_INSTANCE"] = _instance_id(list(server.cfg.bind))
    try:
        settings = load_settings()
        check_url(settings.store_url)
    except ConfigError as err:  # a bad PLUGIN_HEALTH_* value stops the master here, naming the variable
        raise SystemExit(f"plugin-health: {err}") from None
    if _HOSTED_BY_WORKERS:
        server.log.info("plugin-health: each worker hosts its own plugins (host mode %s)", settings.host_mode)
        _import_for_workers(server)
        return
    _host = HostProcess(prepared=_prepared)
    _host.start(meanwhile=functools.partial(_import_for_workers, server))
    os.environ["PLUGIN_HEALTH_HOST_MODE"] = "external"  # the workers, forked from here, only read
    server.log.info("plugin-health: plugin host running as pid %s%s", _host.pid,
                    " (spawned as gunicorn read its configuration)" if _host.spawned_ahead else "")


#: What a gevent worker's ``monkey.patch_all()`` imports (post_fork): gevent's own modules, which patch nothing
#: until asked to.
_GEVENT_PATCHES_WITH = ("gevent.events", "gevent.local", "gevent.lock", "gevent.queue", "gevent.select",
                        "gevent.selectors", "gevent.signal", "gevent.socket", "gevent.ssl", "gevent.subprocess",
                        "gevent.thread", "gevent.threading", "gevent.time")


def import_for_workers(patching: bool) -> None:
    """Import in the master what every worker imports: the app's modules (not the app: each worker builds its own,
    with its own store connections) and, for ``patching`` (gevent) workers, what their patching imports. A module
    imported here is one that five workers forked from here do not import each (0.3-0.5 s of CPU apiece, all at
    once while the core loads its plugins), as gunicorn's ``--preload`` would spare them, without building the app
    in the master. Nothing imported here may have taken a blocking call by name (``from time import sleep``):
    gevent patches after the fork (tests/test_serving_imports.py scans for it). Code upgrades then need a new
    master (SIGUSR2, or a restart), as with ``--preload``: SIGHUP's new workers get the master's modules."""
    import plugin_health.api.warm  # post_worker_init warms each worker with it
    import plugin_health.app  # noqa: F401  (create_app's)

    if patching:
        for module in _GEVENT_PATCHES_WITH:
            importlib.import_module(module)
        read_for_workers()  # the entry points gevent's patching looks up, read here once for every worker


def _import_for_workers(server: Any) -> None:
    # A module that fails to import here fails in each worker too, where gunicorn reports it as a boot error with
    # its traceback: the master only says that its workers import it themselves.
    ggevent = sys.modules.get("gunicorn.workers.ggevent")  # imported by gunicorn only for a gevent worker class
    patching = ggevent is not None and issubclass(server.worker_class, ggevent.GeventWorker)
    try:
        import_for_workers(patching)
    except Exception:
        server.log.exception("plugin-health: the master could not import the app; each worker imports it")
    resolve_for_workers(server.cfg)


def resolve_for_workers(cfg: Any) -> None:
    """Have gunicorn choose its HTTP parser in the master, once for every worker forked from it. gunicorn chooses at
    a worker's first request, by trying to import its C parser (``gunicorn_h1c``, not a dependency of ours): where
    it is absent, each fresh worker's first answer paid a search of every ``sys.path`` entry, 0.2 ms of the 1,000
    plugins' first list (``docs/architecture.md``, "The processes"). Through gunicorn's own check, so that the choice
    is its own; a gunicorn without it chooses in each worker as before."""
    from gunicorn.http import message

    check = getattr(message, "_check_fast_parser", None)
    if check is not None:
        with contextlib.suppress(RuntimeError):  # http_parser = "fast" without the C parser: each worker reports it
            check(cfg)


#: The master's signals that end the service (SIGHUP reloads the workers and SIGUSR2 starts a new master: the host
#: goes on through both).
_ENDING = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)


def when_ready(server: Any) -> None:
    """Before the first worker is forked, freeze what the master holds (``gc.freeze``: its imports for the workers,
    made to last): a worker's garbage collector never walks them, nor does gevent's ``patch_all``, which walks every
    object the collector tracks for locks to fix (48,000 objects, a third of a worker's boot, five workers at once
    while the core loads its plugins); and a worker's collections no longer write to the master's pages, which stay
    shared. What the master makes later (workers respawned) is collected as usual. As Python's documentation of
    ``gc.freeze`` advises for a process that forks without exec.

    From now on (gunicorn has set its own signal handlers), a signal that ends the master first tells the host
    process that the service is going down: a host that exits then (it got the same signal, sent to the whole
    process group) is not started again, its plugins set up once more while everything stops."""
    gc.freeze()
    if _host is None:
        return
    for ending in _ENDING:
        handler = signal.getsignal(ending)
        if callable(handler):
            signal.signal(ending, functools.partial(_ending, handler))


def _ending(handler: Callable[[int, Any], Any], signum: int, frame: Any) -> None:
    if _host is not None:
        _host.stopping()
    handler(signum, frame)


def on_exit(server: Any) -> None:
    """Stop the plugins and the host process with the master; give what ``when_ready`` froze back to the collector."""
    if _host is not None:
        code = _host.stop()
        server.log.info("plugin-health: plugin host stopped (exit status %s)", code)
    gc.unfreeze()


def worker_exit(server: Any, worker: Any) -> None:
    """As a worker exits, give what the master froze before forking it (``when_ready``) back to the collector: the
    interpreter's last collection frees it then, while the modules its finalizers need are still there (left frozen,
    a logging handler the master dropped was freed after gevent's modules, and its finalizer failed, printed)."""
    gc.unfreeze()


def child_exit(server: Any, worker: Any) -> None:
    """Forget a dead worker's live gauges (its counters stay counted)."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)  # type: ignore[no-untyped-call]


#: The one MonkeyPatchWarning a gevent worker may see, and why it is harmless: the master imported redis-py
#: (for the core process's lock and the Redis store) before any worker could patch, and ``redis.asyncio.connection``
#: took ``from ssl import SSLContext`` then. It is pointed at gevent's SSLContext right after the patch (below);
#: a warning naming any other module still shows.
_REDIS_ASYNCIO_SSL_ONLY = (
    r"Monkey-patching ssl after ssl has already been imported\b.* Modules that had direct imports \(NOT patched\): "
    r"\[('redis\.asyncio\.[\w.]+ \([^']*\)'(, )?)+\]\. \Z"
)
#: Names the master's imports took from modules gevent patches (``from time import sleep``): (module, name) ->
#: (patched module, name). redis-py's retry backoff would otherwise stall every greenlet of the worker with the
#: blocking ``time.sleep`` while Redis is away.
_DIRECT_IMPORTS = {
    ("redis.retry", "sleep"): ("time", "sleep"),
    ("redis.asyncio.connection", "SSLContext"): ("ssl", "SSLContext"),
}


def _is_gevent(worker: Any) -> bool:
    ggevent = sys.modules.get("gunicorn.workers.ggevent")  # imported by gunicorn only for a gevent worker class
    return ggevent is not None and isinstance(worker, ggevent.GeventWorker)


#: A signal that ended the service while this worker booted (post_fork to post_worker_init), to handle once booted.
_ended_while_booting: list[int] = []


def _end_once_booted(signum: int, frame: Any) -> None:
    _ended_while_booting.append(signum)


def post_fork(server: Any, worker: Any) -> None:
    """Keep a signal that ends the service until the worker has handlers of its own (post_worker_init). In a gevent
    worker, patch the standard library first thing, and give it the descriptors its connections need (gunicorn's own
    patch, in the worker's init_process, then finds it done)."""
    # Until gunicorn's init_signals, a worker runs the master's handlers it was forked with, which drop the signal
    # (they queue it for a master this is not): one sent to the whole group (systemd, Ctrl-C) as a worker booted
    # left it running until the graceful timeout killed it, 30 s later.
    for ending in _ENDING:
        signal.signal(ending, _end_once_booted)
    if not _is_gevent(worker):
        return
    from gevent import monkey

    with warnings.catch_warnings(), entry_points_read_once():
        warnings.filterwarnings("ignore", _REDIS_ASYNCIO_SSL_ONLY, monkey.MonkeyPatchWarning)
        monkey.patch_all()
    for (module, name), (patched, attribute) in _DIRECT_IMPORTS.items():
        if module in sys.modules and hasattr(sys.modules[module], name):
            setattr(sys.modules[module], name, getattr(sys.modules[patched], attribute))
    from gevent.socket import wait_write

    global _take_turn
    _take_turn = functools.partial(wait_write, os.pipe()[1])  # the read end stays open too, never read
    # One descriptor per connection, and some for the worker itself (listener, store, metrics files, logs).
    needed = server.cfg.worker_connections + 128
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        raised = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
        if raised < needed:
            server.log.warning("plugin-health: worker %s may open %d files, fewer than %d worker_connections need",
                               worker.pid, raised, needed)


def pre_request(worker: Any, req: Any) -> None:
    """Under gevent, give every other connection with a request waiting its turn before serving this one.

    A greenlet that finds its client's next request already there (a keep-alive client answers within
    microseconds) would otherwise serve it at once, again and again, while requests that arrived earlier on other
    connections wait: measured with 16 busy keep-alive connections on one worker, p99 70-110 ms, against 17-21 ms
    with this pass through the event loop first (21-34 ms with gthread), which costs a few microseconds a request.
    """
    worker.log.debug("%s %s", req.method, req.path)  # what gunicorn's default pre_request does
    if _take_turn is not None:
        _take_turn()


def post_worker_init(worker: Any) -> None:
    """Refuse a gevent worker whose app runs a core of its own (``-k gevent`` with host mode ``embedded`` or a
    ``memory://`` store): the master stops, saying so, instead of plugins failing as their runners get lost.
    Otherwise tell the app when its worker stops (recycled or shut down), so that its event streams end then, and
    warm it before it accepts: its first list is served from the cache, not built on a client's request. A signal
    that ended the service while the worker booted (post_fork) goes to its own handlers now, and nothing is warmed."""
    if _ended_while_booting:
        for signum in dict.fromkeys(_ended_while_booting):
            os.kill(os.getpid(), signum)
        return
    service: Any = getattr(worker.wsgi, "extensions", {}).get("plugin_health")
    if service is not None:
        service.serving = lambda: worker.alive
    if _is_gevent(worker) and getattr(service, "host", None) is not None:
        worker.log.error("plugin-health: workers that host their own plugins (host mode %s) need -k gthread, "
                         "not gevent", service.settings.host_mode)
        service.shutdown()
        from gunicorn.arbiter import Arbiter

        sys.exit(Arbiter.WORKER_BOOT_ERROR)  # the master stops ("Worker failed to boot")
    if service is not None:
        from plugin_health.api.warm import warm

        try:
            took = warm(worker.wsgi)
        # Warming only saves the first requests a build: whatever fails in it, the worker serves and builds on
        # demand as it would have; an exception out of this hook would be a boot error, which stops the master.
        except Exception:
            worker.log.exception("plugin-health: worker %s not warmed; its first requests build", worker.pid)
        else:
            from plugin_health.api.warm import FIRST_ONLY

            if worker.wsgi.extensions.get(FIRST_ONLY):
                worker.log.info("plugin-health: worker %s took its first request in %.0f ms (the core is loading: it "
                                "warms once the core has loaded)", worker.pid, took * 1e3)
            else:
                worker.log.info("plugin-health: worker %s warmed in %.0f ms", worker.pid, took * 1e3)
        # Booted while the core loads: warm again once it has, in steps that give way to the worker's requests.
        if _is_gevent(worker):
            import gevent

            gevent.spawn(_warm_once_loaded, worker, gevent.sleep)
        else:
            import threading
            import time

            threading.Thread(target=_warm_once_loaded, args=(worker, time.sleep), name="plugin-health-warm",
                             daemon=True).start()


def _warm_once_loaded(worker: Any, pause: Callable[[float], None]) -> None:
    from plugin_health.api.warm import warm_once_loaded

    try:
        took = warm_once_loaded(worker.wsgi, pause)
    except Exception:  # its first requests build, as they would have
        worker.log.exception("plugin-health: worker %s not warmed again once the core loaded", worker.pid)
    else:
        if took is not None:
            worker.log.info("plugin-health: worker %s warmed again once the core loaded, over %.0f ms", worker.pid,
                            took * 1e3)
