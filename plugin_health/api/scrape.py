"""``GET /metrics`` and the hooks that count every request of ours (what is counted: ``plugin_health.metrics``)."""

from __future__ import annotations

import glob
import os
import time
from collections.abc import Iterable

from flask import Blueprint, Response, current_app, g, request
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector

from plugin_health.metrics import COLLECTOR, WARMING, StoreCollector, count

bp = Blueprint("metrics", __name__)


class _MadeFilesCollector(MultiProcessCollector):
    """prometheus_client's sum of every process's counts files, without the files still being made.

    A process makes its file empty and sizes it next (``MmapedDict``): a scrape in between read no header and
    raises (the known cause of a 500 seen once in a full ``python -m bench``, whose traceback
    was not kept), and a process killed in between leaves the empty file
    for good (prometheus/client_python#1199). An empty file holds no count yet: it is left out, read as none. A file
    once sized never shrinks, so one found non-empty is whole enough to read."""

    def collect(self) -> Iterable[Metric]:
        made = [path for path in glob.glob(os.path.join(self._path, "*.db")) if _sized(path)]
        merged: Iterable[Metric] = self.merge(made, accumulate=True)  # type: ignore[no-untyped-call]
        return merged


def _sized(path: str) -> bool:
    """Whether the counts file at ``path`` has been sized (a file gone since the listing is left to ``merge``, which
    skips a dead process's live gauges and reports the rest)."""
    try:
        return os.stat(path).st_size > 0
    except FileNotFoundError:
        return True


@bp.get("/metrics")
def metrics() -> Response:
    """Prometheus text format: this process's (or, under gunicorn, every process's) counts, plus the gauges."""
    collector: StoreCollector | None = current_app.extensions.get(COLLECTOR)
    if collector is None:
        collector = current_app.extensions[COLLECTOR] = StoreCollector(current_app.extensions["plugin_health"])
    gauges = CollectorRegistry(auto_describe=False)
    gauges.register(collector)
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        counts = CollectorRegistry()
        _MadeFilesCollector(counts)  # type: ignore[no-untyped-call]
        body = generate_latest(counts) + generate_latest(gauges)
    else:
        body = generate_latest(REGISTRY) + generate_latest(gauges)
    return Response(body, mimetype=CONTENT_TYPE_LATEST.split(";")[0], content_type=CONTENT_TYPE_LATEST)


def started() -> None:
    """Note when the request began (a ``before_request`` hook for the requests of ours)."""
    g.plugin_health_started = time.perf_counter()



def answered(response: Response) -> Response:
    """Count the request and its duration by method, route and status (an ``after_request`` hook)."""
    rule = request.url_rule
    began = g.get("plugin_health_started")
    count(request.method, rule.rule if rule is not None else "<unmatched>", response.status_code,
          None if began is None else time.perf_counter() - began, WARMING in request.environ)
    return response
