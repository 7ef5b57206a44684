"""gunicorn settings for plugin-health (gunicorn reads ``./gunicorn.conf.py`` by itself).

The master starts one plugin host process before it forks any worker: the host owns every plugin and
publishes their states to the shared store; the workers only read the store, so any worker answers the same,
and a worker that dies or is recycled takes nothing with it. Command-line flags (``-w``, ``-b``, ...) and
``GUNICORN_CMD_ARGS`` override what is set here.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

# Metrics of every worker and of the plugin host are summed through files (prometheus_client's multiprocess
# mode), which must be chosen before prometheus_client is first imported: so before plugin_health is.
if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
    _metrics = Path(os.environ.get("PLUGIN_HEALTH_RUN_DIR", "run"), "metrics").resolve()
    shutil.rmtree(_metrics, ignore_errors=True)  # counts of a previous run are not this run's
    _metrics.mkdir(parents=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(_metrics)

from plugin_health.config import load_settings  # after the metrics directory is chosen
from plugin_health.errors import ConfigError
from plugin_health.runtime.hosting import HostProcess

bind = os.environ.get("PLUGIN_HEALTH_BIND", "127.0.0.1:8000")
# Health reads are short and CPU-bound: a few workers per core; WEB_CONCURRENCY overrides.
workers = int(os.environ.get("WEB_CONCURRENCY", min(2 * (os.cpu_count() or 1) + 1, 8)))
# Workers never run plugin code (the host does), so they need no signals and may use threads: a tool call that
# waits for the host holds one thread, not a whole worker, and keep-alive serves pollers and load balancers.
worker_class = "gthread"
threads = int(os.environ.get("PLUGIN_HEALTH_THREADS", 4))
# Workers never run plugin code (the host does), so their timeout needs no room for plugin timeouts.
timeout = 30
graceful_timeout = 30
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


def on_starting(server: Any) -> None:
    """Start the plugin host before any worker exists (no threads yet in the master to fork with)."""
    global _host
    try:
        settings = load_settings()
    except ConfigError as err:  # a bad PLUGIN_HEALTH_* value stops the master here, naming the variable
        raise SystemExit(f"plugin-health: {err}") from None
    if settings.host_mode == "embedded" or not settings.shared_store:
        server.log.info("plugin-health: each worker hosts its own plugins (host mode %s)", settings.host_mode)
        return
    _host = HostProcess()
    _host.start()
    os.environ["PLUGIN_HEALTH_HOST_MODE"] = "external"  # the workers, forked from here, only read
    server.log.info("plugin-health: plugin host running as pid %s", _host.pid)


def on_exit(server: Any) -> None:
    """Stop the plugins and the host process with the master."""
    if _host is not None:
        code = _host.stop()
        server.log.info("plugin-health: plugin host stopped (exit status %s)", code)


def child_exit(server: Any, worker: Any) -> None:
    """Forget a dead worker's live gauges (its counters stay counted)."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)  # type: ignore[no-untyped-call]
