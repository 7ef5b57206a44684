"""The baseline of ``bench/http.py``: a bare Flask app that serves canned copies of the real answers.

``bench/http.py`` fetches the real responses of ``GET /v1/plugins/<name>/health`` and ``GET /v1/plugins/`` and
writes each one (status, ``Content-Type``, ``ETag`` and body bytes) into the directory named by
``BENCH_BARE_DIR``; this app serves those bytes from memory on the same URL rules, with the same ``ETag`` and
``Cache-Control`` headers, and answers 304 to a matching ``If-None-Match``. No store, no cache, no schema: what
is left is the cost of gunicorn, Werkzeug and Flask routing, the floor the real routes are compared with.

Not meant to be run by hand: ``bench/http.py`` serves it with ``gunicorn bench._bare_app:app``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from flask import Flask, Response, request

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
    """Readiness, as the real service's probe answers it."""
    return Response("ok", mimetype="text/plain")
