"""The baselines of ``bench/http.py``: a bare Flask app that serves canned copies of the real answers, a raw WSGI
callable that serves one of them, and py-healthcheck's aggregate.

``bench/http.py`` fetches the real responses of ``GET /v1/plugins/<name>/health`` and ``GET /v1/plugins/`` and
writes each one (status, ``Content-Type``, ``ETag`` and body bytes) into the directory named by
``BENCH_BARE_DIR``; ``app`` serves those bytes from memory on the same URL rules, with the same ``ETag``,
``Cache-Control`` and ``Vary`` headers, and answers 304 to a matching ``If-None-Match``; ``/readyz``, ``/livez``
and ``/startupz`` answer ``ok`` as the real probes do. No store, no cache, no schema: what is left is the cost of
gunicorn, Werkzeug and Flask routing, the floor the real routes are compared with. ``raw`` is the floor under
that: a WSGI callable with no framework at all, answering the canned health (the same status line, headers and
bytes) to any path but ``/startupz``.

``app`` also serves py-healthcheck (PyPI ``py-healthcheck``, the usual Flask health endpoint):
``/healthcheck/<n>`` is its ``HealthCheck`` with ``n`` (10 or 100) checks that pass, each cached by
py-healthcheck itself (``success_ttl``, 27 s), so a request only runs its cache look-ups and its JSON answer,
as ``/v1/health`` only reads what the plugin host recorded.

Not meant to be run by hand: ``bench/http.py`` serves them with ``gunicorn bench._bare_app:app`` and
``gunicorn bench._bare_app:raw``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from flask import Flask, Response, request
from healthcheck import HealthCheck

CANNED = Path(os.environ.get("BENCH_BARE_DIR", "."))


def load(key: str) -> tuple[bytes, int, str, str]:
    """The canned answer ``key`` (``health`` or ``list``): body, status, content type and ETag (quoted)."""
    meta = json.loads((CANNED / f"{key}.json").read_text())
    return (CANNED / f"{key}.body").read_bytes(), int(meta["status"]), str(meta["content_type"]), str(meta["etag"])


ANSWERS = {key: load(key) for key in ("health", "list")}

app = Flask("bare")


def answer(key: str) -> Response:
    """The canned answer, or a 304 when the client holds its ETag (a plain string compare)."""
    body, status, content_type, etag = ANSWERS[key]
    if request.headers.get("If-None-Match") == etag:
        response = Response(status=304)
    else:
        response = Response(body, status=status)
        response.headers["Content-Type"] = content_type
    response.headers["ETag"] = etag
    response.headers["Cache-Control"] = "no-cache"
    response.headers["Vary"] = "Accept-Encoding"
    return response


@app.get("/v1/plugins/")
def plugins() -> Response:
    """The canned list."""
    return answer("list")


@app.get("/v1/plugins/<name>/health")
def health(name: str) -> Response:
    """The canned health of one plugin, whatever ``name`` is."""
    return answer("health")


@app.get("/startupz")
def startupz() -> Response:
    """Started, as the real service's probe answers it."""
    return Response("ok", mimetype="text/plain")


@app.get("/readyz")
def readyz() -> Response:
    """Ready, as the real service's probe answers it."""
    return Response("ok", mimetype="text/plain")


@app.get("/livez")
def livez() -> Response:
    """Alive, as the real service's probe answers it."""
    return Response("ok", mimetype="text/plain")


def passing(name: str) -> Callable[[], tuple[bool, str]]:
    """A py-healthcheck check that passes, named ``name`` (py-healthcheck reports checks by function name)."""

    def check() -> tuple[bool, str]:
        return True, "ok"

    check.__name__ = name
    return check


def healthcheck(checks: int) -> Callable[[], Any]:
    """A py-healthcheck ``HealthCheck`` of ``checks`` passing checks, as its README mounts one on a Flask route."""
    health = HealthCheck(checkers=[passing(f"p{i:05d}") for i in range(checks)])
    return lambda: health.run()


for _checks in (10, 100):
    app.add_url_rule(f"/healthcheck/{_checks}", f"healthcheck{_checks}", healthcheck(_checks))


def raw(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """The canned health with no framework: its status line, headers and bytes (``ok`` on ``/startupz``)."""
    if environ.get("PATH_INFO") == "/startupz":
        start_response("200 OK", [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", "2")])
        return [b"ok"]
    start_response(_RAW_STATUS, _RAW_HEADERS)
    return [_RAW_BODY]


_RAW_BODY, _status, _content_type, _etag = ANSWERS["health"]
_RAW_STATUS = f"{_status} {'OK' if _status == 200 else 'SERVICE UNAVAILABLE'}"
_RAW_HEADERS = [("Content-Type", _content_type), ("ETag", _etag), ("Cache-Control", "no-cache"),
                ("Vary", "Accept-Encoding"), ("Content-Length", str(len(_RAW_BODY)))]
