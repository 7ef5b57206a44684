"""Warm a worker before it takes requests: the list and the ``/metrics`` gauges built for the store's version.

A worker's caches start empty: with 1,000 plugins its first list took 36 ms against 0.2 ms warm (most of it parsing
every snapshot and dumping every entry through marshmallow), and every worker gunicorn recycles (``max_requests``)
paid it again on some client's request. The gunicorn configuration's ``post_worker_init`` calls :func:`warm` before
the worker accepts: the store's snapshots are parsed once (``SQLiteStore``'s cache by row text), the list is built
into the response cache under the key and version a request would look up (so it is as correct as any cached
answer: the next version builds again), compressed, and the gauges worked out. Bounded: it reads the store once and
builds one answer; with 10,000 plugins it takes about 0.5 s of the worker's boot (``bench/README.md``).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from flask import Flask

from plugin_health.api.plugins import build_list, list_key
from plugin_health.metrics import COLLECTOR, StoreCollector

if TYPE_CHECKING:
    from plugin_health.service import Service

logger = logging.getLogger(__name__)


def warm(app: Flask) -> float:
    """Build what the first requests of a worker would: the whole list as an anonymous caller sees it (gzipped
    too), and the ``/metrics`` gauges; return the seconds it took."""
    began = time.perf_counter()
    service: Service = app.extensions["plugin_health"]
    # What a caller without the token sees; a caller with it sees the same when details are shown to everyone.
    visible = service.settings.show_details == "always"
    path = f"{service.url_prefix}/v1/plugins/"
    version = service.store.version()  # before reading: a move meanwhile makes the first request build again
    entry = service.cache.get(list_key(None, None, None, visible),
                              lambda: build_list(service.store, None, None, None, visible, path), version)
    entry.gzipped()  # browsers and most clients take gzip: compressed once per entry anyway
    collector = app.extensions.get(COLLECTOR)
    if collector is None:
        collector = app.extensions[COLLECTOR] = StoreCollector(service)
    for _ in collector.collect():
        pass
    took = time.perf_counter() - began
    logger.info("warmed the list and the metrics gauges at store version %d in %.0f ms", version, took * 1e3)
    return took
