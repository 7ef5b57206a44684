"""The live dashboard: one read-only HTML page, its script and its style sheets, all served by the app itself.

The page needs no external network: its assets ship in ``plugin_health/api/static`` and are served from this
blueprint, so the Content-Security-Policy can stay ``default-src 'self'`` (no inline script or style at all).
``palette.css`` is written from ``plugin_health.palette``, the colours the lifecycle diagrams draw with.
The script polls ``/v1/plugins/``, ``/v1/health``, ``/v1/cluster`` and the lifecycle diagram with
``If-None-Match``, listens to ``/v1/events`` to poll at once after a transition, reads the history of the plugins
in view for their timelines, and draws the answers with DOM text nodes only (the cluster as a grid of plugins x
instances, one column when the instance is alone; the diagram's SVG copied element by element); it performs no
operator action. Tables draw the first 200 plugins that match the state filter and the name search (``?q=``), more
on demand, and only the rows that changed; a transition's event redraws its row at once. An operator token typed
in goes with its requests (``Authorization: Bearer``) and is kept in the tab's ``sessionStorage`` only.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from typing import Final

from flask import Blueprint, Response, request

from plugin_health import palette

bp = Blueprint("dashboard", __name__)

#: Everything the page loads comes from this origin; nothing may frame it, post a form or change its base URL.
CONTENT_SECURITY_POLICY: Final = (
    "default-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
ASSETS: Final[dict[str, str]] = {
    "dashboard.html": "text/html; charset=utf-8",
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
    "palette.css": "text/css; charset=utf-8",
}
#: Assets written by the app rather than read from ``static``.
GENERATED: Final[dict[str, Callable[[], str]]] = {"palette.css": palette.style_sheet}


@dataclass(frozen=True, slots=True)
class Asset:
    """One file of the page, read once: its bytes, media type and strong ETag."""

    body: bytes
    media_type: str
    etag: str


@functools.cache
def asset(name: str) -> Asset:
    """The asset ``name`` (one of ``ASSETS``), read from the package the first time it is asked for."""
    if name in GENERATED:
        body = GENERATED[name]().encode()
    else:
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
    """The page's script: polling with ETags, following the event stream, drawing with text nodes."""
    return serve("dashboard.js")


@bp.get("/dashboard.css")
def style() -> Response:
    """The page's style sheet."""
    return serve("dashboard.css")


@bp.get("/palette.css")
def colours() -> Response:
    """The state colours as CSS custom properties, written from ``plugin_health.palette``."""
    return serve("palette.css")
