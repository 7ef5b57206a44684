"""Warm a worker before it takes requests: the list and the ``/metrics`` gauges built for the store's version.

A worker's caches start empty: with 1,000 plugins its first list took 36 ms against 0.2 ms warm (most of it parsing
every snapshot and dumping every entry through marshmallow), and every worker gunicorn recycles (``max_requests``)
paid it again on some client's request. The gunicorn configuration's ``post_worker_init`` calls :func:`warm` before
the worker accepts: the store's snapshots are parsed once (``SQLiteStore``'s cache by row text), the list is built
through its view into the response cache under the key and version a request looks up (so it is as correct as any
cached answer: the next version builds again), compressed, and the gauges worked out. Bounded: it reads the store
once and builds one answer: 63 ms with 1,000 plugins, 0.54 s with 10,000 (``bench/README.md``). A worker that
boots while the core loads builds nothing from the store then (it moves ten times a second): it takes only its
first request through the app, and warms once the core has loaded (:func:`warm_once_loaded`), in steps.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from flask import Flask, request
from werkzeug.test import EnvironBuilder

from plugin_health.api.fastpath import FastReads
from plugin_health.metrics import COLLECTOR, WARMING, StoreCollector
from plugin_health.runtime.core import LOADED_KEY

if TYPE_CHECKING:
    from plugin_health.service import Service

logger = logging.getLogger(__name__)


def warm(app: Flask) -> float:
    """Build what the first requests of a worker would: the whole list as an anonymous caller sees it (gzipped
    too), and the ``/metrics`` gauges; return the seconds it took."""
    began = time.perf_counter()
    service: Service = app.extensions["plugin_health"]
    loaded = service.store.get_meta(LOADED_KEY)  # before what it reads
    app.extensions[WARMED_LOADED] = bool(loaded)
    app.extensions[FIRST_ONLY] = loaded == ""
    if loaded == "":
        return _first_request(app, service, began)
    version = service.store.version()
    # Through the list's view, as an anonymous client that takes gzip asks for it (what browsers send): the key
    # and version are the ones a request looks up, and the request's first-time costs (routing, parsing the query
    # and headers) are paid here too. The view alone first: a host app's own hooks never see a request of ours.
    path = f"{service.url_prefix}/v1/plugins/"
    with app.test_request_context(path, headers={"Accept-Encoding": "gzip"}):
        endpoint, args = request.endpoint, request.view_args or {}
        assert endpoint is not None, "the list's route is mounted"
        app.view_functions[endpoint](**args)
    fast = app.wsgi_app
    if isinstance(fast, FastReads) and fast.only_ours():
        # An app of our own: the same request through the whole app twice, marked as no client's (not counted).
        # The first is the worker's first through Flask (its first-request costs, and the fast path learns that
        # the hooks are only ours); the second is answered in front of Flask, as the first client's will be.
        for _ in range(2):
            _through(fast, path, [("Accept-Encoding", "gzip")])
    _gauges(app, service)
    took = time.perf_counter() - began
    logger.info("warmed the list and the metrics gauges at store version %d in %.0f ms", version, took * 1e3)
    return took


def _first_request(app: Flask, service: Service, began: float) -> float:
    """``warm`` while the core loads: only what a worker pays once, a request through the whole app (Flask's first,
    and the fast path's question of whose hooks the app has), of ``/livez``, which reads nothing of the plugins. The
    store moves with every batch the core writes (ten times a second): a list built now would be stale before any
    client asked for it, and five workers building one of thousands of plugins at once took the CPU the core loads
    with (0.3 to 2.5 CPU s of a 10,000-plugin start). ``warm_once_loaded`` builds once the core has loaded."""
    fast = app.wsgi_app
    if isinstance(fast, FastReads) and fast.only_ours():
        _through(fast, f"{service.url_prefix}/livez", [])
    took = time.perf_counter() - began
    logger.info("the core is loading: took the app's first request only (the list is built once it has loaded) "
                "in %.0f ms", took * 1e3)
    return took


def _through(fast: FastReads, path: str, headers: list[tuple[str, str]]) -> None:
    """A ``GET path`` through the whole app, marked as no client's (``WARMING``: no request counted)."""
    environ = EnvironBuilder(path=path, headers=headers).get_environ()
    environ[WARMING] = True
    answer = fast(environ, lambda status, headers, exc_info=None: None)
    try:
        for _chunk in answer:
            pass
    finally:
        getattr(answer, "close", lambda: None)()


def _gauges(app: Flask, service: Service, pause: Callable[[], None] | None = None, step: int = 250) -> None:
    """Work out the ``/metrics`` gauges of the store as it is (the collector's cache), with ``pause()`` after each
    ``step`` plugins if given."""
    collector = app.extensions.get(COLLECTOR)
    if collector is None:
        collector = app.extensions[COLLECTOR] = StoreCollector(service)
    collector.work_out(pause, step)


#: Where ``warm`` notes whether the core had loaded when it began (``app.extensions``).
WARMED_LOADED = "plugin_health.warmed_loaded"
#: And whether it only took the app's first request, the core loading then (``app.extensions``).
FIRST_ONLY = "plugin_health.warmed_first_only"


def warm_once_loaded(app: Flask, pause: Callable[[float], None], every: float = 0.5,
                     step: int = 250) -> float | None:
    """In a worker that ``warm`` warmed while the core still loaded (or not at all): wait until the core has loaded,
    then parse the snapshots again (``StateStore.parse_ahead``: the rows parsed at boot have all moved since) and
    work out the ``/metrics`` gauges, ``step`` plugins at a time with ``pause(0)`` after each; the seconds it took
    (None: nothing to warm again). ``pause`` is how the caller gives way (``gevent.sleep`` in a gevent worker, so
    that its other connections are served meanwhile); it also waits ``every`` seconds between looks at the store.
    Gives up when the worker stops serving. Once a worker: a core that loads again later (it was restarted) is not
    waited for; the first scrape after it parses what moved, as any scrape does.

    Every worker forked while the core loads 10,000 plugins otherwise paid 150-170 ms on its first scrape, the p90
    of ``/metrics``; warmed in one block, five workers on 2 CPUs held their event loops for up to 2 s (probes
    waited that long)."""
    service: Service = app.extensions["plugin_health"]
    store = service.store
    if app.extensions.get(WARMED_LOADED):
        return None  # warmed on the plugins as they are
    while not store.get_meta(LOADED_KEY):
        if service.stopping():
            return None
        pause(every)
    began = time.perf_counter()
    parsed = store.parse_ahead(lambda: pause(0), step)
    _gauges(app, service, lambda: pause(0), step)
    app.extensions[WARMED_LOADED] = True
    took = time.perf_counter() - began
    logger.info("the core has loaded: warmed again (%d snapshots parsed, the metrics gauges) in %.0f ms", parsed,
                took * 1e3)
    return took
