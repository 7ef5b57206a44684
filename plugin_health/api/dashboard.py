"""The live dashboard: one read-only HTML page, its script and its style sheet, all served by the app itself.

The page needs no external network: its assets ship in ``plugin_health/api/static`` and are served from this
blueprint, so the Content-Security-Policy can stay ``default-src 'self'`` (no inline script or style at all).
The script polls ``/v1/plugins/``, ``/v1/health`` and ``/v1/cluster`` with ``If-None-Match`` and draws the
answers with DOM text nodes only (the cluster as a grid of plugins x instances, one column when the instance is
alone); it performs no operator action.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from importlib import resources
from typing import Final

from flask import Blueprint, Response, request

bp = Blueprint("dashboard", __name__)

#: Everything the page loads comes from this origin; nothing may frame it, post a form or change its base URL.
CONTENT_SECURITY_POLICY: Final = (
    "default-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
ASSETS: Final[dict[str, str]] = {
    "dashboard.html": "text/html; charset=utf-8",
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
}


@dataclass(frozen=True, slots=True)
class Asset:
    """One file of the page, read once: its bytes, media type and strong ETag."""

    body: bytes
    media_type: str
    etag: str


@functools.cache
def asset(name: str) -> Asset:
    """The asset ``name`` (one of ``ASSETS``), read from the package the first time it is asked for."""
    body = resources.files("plugin_health.api").joinpath("static", name).read_bytes()
    return Asset(body, ASSETS[name], hashlib.blake2b(body, digest_size=12).hexdigest())


def serve(name: str) -> Response:
    """``name`` with its ETag (304 when the client holds it), revalidated on every use, under the CSP."""
    found = asset(name)
    response = Response(found.body, content_type=found.media_type)
    response.set_etag(found.etag)
    response.headers["Cache-Control"] = "no-cache"
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.make_conditional(request)  # in place: 304 and no body when If-None-Match holds the ETag
    return response


@bp.get("/")
def page() -> Response:
    """The dashboard page: every plugin's state, the aggregate status, the cluster grid and the lifecycle diagram,
    kept live."""
    return serve("dashboard.html")


@bp.get("/dashboard.js")
def script() -> Response:
    """The page's script: polling with ETags and drawing with text nodes."""
    return serve("dashboard.js")


@bp.get("/dashboard.css")
def style() -> Response:
    """The page's style sheet."""
    return serve("dashboard.css")
