"""``GET /metrics`` and the hooks that count every request of ours (what is counted: ``plugin_health.metrics``)."""

from __future__ import annotations

import os
import time

from flask import Blueprint, Response, current_app, g, request
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from plugin_health.metrics import COLLECTOR, WARMING, StoreCollector, count

bp = Blueprint("metrics", __name__)


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
        MultiProcessCollector(counts)  # type: ignore[no-untyped-call]
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
