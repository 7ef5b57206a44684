"""The cached reads answered in front of Flask: one plugin's health, the aggregate and the probes, as WSGI.

A cached read costs little of its own (a store version check, a cache look-up, the request metrics); Flask's
per-request machinery (contexts, routing, hooks, the response object) cost more than all of it. So
:class:`FastReads` wraps the app's ``wsgi_app`` and answers, from the same cache and with the same judgements,
exactly these requests: ``GET`` with no query string and no ``Range`` of ``<prefix>/v1/plugins/<name>/health``
(a valid name whose answer is cached at the store's current version), ``<prefix>/v1/health`` and the whole list
``<prefix>/v1/plugins/`` (their answers cached, or a 304 the cache can tell without them), a page of the list
asked plainly (``?limit=500&continue=...``, ``?state=``: :func:`page_query`; the one query string answered here),
``<prefix>/readyz`` and ``<prefix>/livez``. The answers are the Flask
views' to the byte: the same status, headers (in the same order) and body, ETags and 304s compared the same way,
gzip negotiated the same way, and each request counted in the same series (method, URL rule, status; its
duration by rule). Everything else goes to Flask unchanged: a miss (Flask builds and caches it), another method
or path, any other query string, an invalid name, and any request of an app that has hooks or host checks other than
ours (a host app's own ``before_request`` must see every request it saw before).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Hashable, Iterable
from typing import TYPE_CHECKING, Any

from flask import Flask
from werkzeug.http import HTTP_STATUS_CODES, parse_etags, quote_etag

from plugin_health import metrics
from plugin_health.api import health
from plugin_health.api.auth import visible_with
from plugin_health.api.cache import ALWAYS, GZIP, Cached, matching_tag, takes_gzip
from plugin_health.api.pages import MAX_LIMIT, decode_token
from plugin_health.api.plugins import JSON, list_key
from plugin_health.api.schemas import parse_state
from plugin_health.lifecycle import PluginLifecycleState
from plugin_health.plugin import NAME_PATTERN

if TYPE_CHECKING:
    from plugin_health.service import Service

Environ = dict[str, Any]
StartResponse = Callable[..., Any]
WsgiApp = Callable[[Environ, StartResponse], Iterable[bytes]]
#: What the fast path answers: the status line, the headers, the body and the status code.
Answer = tuple[str, list[tuple[str, str]], bytes, int]

HEALTH_RULE = "/v1/plugins/<name>/health"
HEALTH_TAIL = "/health"
#: The Flask configuration keys that make routing check the request's host.
_HOST_KEYS = ("SERVER_NAME", "TRUSTED_HOSTS")


def status_line(code: int) -> str:
    """The WSGI status line of ``code`` as Werkzeug writes it (``304 NOT MODIFIED``)."""
    return f"{code} {HTTP_STATUS_CODES[code].upper()}"


def _text(code: int, body: str) -> Answer:
    """A probe's answer, as ``Response(body, status=code, content_type=TEXT)`` gives it."""
    data = body.encode()
    return status_line(code), [("Content-Type", health.TEXT), ("Content-Length", str(len(data)))], data, code


def not_modified(etag: str) -> Answer:
    """A 304 for ``etag``, as ``cache._not_modified`` gives it."""
    return status_line(304), [("ETag", quote_etag(etag)), *ALWAYS], b"", 304


def cached_answer(entry: Cached, media_type: str, environ: Environ) -> Answer:
    """``cache.respond(entry, media_type)`` for the request of ``environ``: 304 when its ``If-None-Match`` holds
    the answer, else the body (gzip-compressed when it is long and the client takes it), headers made once per
    entry and encoding."""
    encoding = entry.encoding_for(lambda: takes_gzip(environ.get("HTTP_ACCEPT_ENCODING")))
    if_none_match = environ.get("HTTP_IF_NONE_MATCH")
    if if_none_match is not None:
        held = matching_tag(entry, encoding, parse_etags(if_none_match))
        if held is not None:
            return not_modified(held)
    made = entry.wsgi.get(encoding)
    if made is None or made[1][0][1] != media_type:
        body = entry.gzipped() if encoding == GZIP else entry.body
        headers = [("Content-Type", media_type), *entry.headers, ("ETag", quote_etag(entry.etag_of(encoding))),
                   *ALWAYS]
        if encoding == GZIP:
            headers.append(("Content-Encoding", GZIP))
        headers.append(("Content-Length", str(len(body))))
        made = entry.wsgi[encoding] = (status_line(entry.status), headers, body)
    return made[0], made[1], made[2], entry.status


class FastReads:
    """A WSGI app in front of ``app.wsgi_app`` that answers the cached reads itself (see the module's doc)."""

    def __init__(self, app: Flask, prefix: str = "") -> None:
        self.app = app
        #: What answers every other request: the app's WSGI callable as it was.
        self.flask: WsgiApp = app.wsgi_app
        self.prefix = prefix
        self._plugins = f"{prefix}/v1/plugins/"
        self._routes: dict[str, Callable[[Service, Environ], Answer | None]] = {
            f"{prefix}/livez": self._livez,
            f"{prefix}/readyz": self._readyz,
            f"{prefix}/v1/health": self._aggregate,
            f"{prefix}/v1/plugins/": self._list,
        }
        self._hooks = self._hook_state()
        #: Whether the app's hooks are still only ours: None until Flask has served a request (it refuses new
        #: hooks from then on, so the answer holds for good).
        self._ours: bool | None = None

    def _hook_state(self) -> tuple[object, ...]:
        """The app's request hooks as they are now (copied: Flask adds to its lists in place)."""
        app = self.app
        registries = (app.before_request_funcs, app.after_request_funcs, app.teardown_request_funcs,
                      app.url_value_preprocessors, app.url_default_functions)
        return (*(tuple((key, tuple(funcs)) for key, funcs in registry.items()) for registry in registries),
                tuple(app.teardown_appcontext_funcs))

    def only_ours(self) -> bool:
        """Whether the app's hooks are still only the ones it had when this was put in front of it."""
        return self._hook_state() == self._hooks

    def _to_flask(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        answer = self.flask(environ, start_response)
        if self._ours is None:
            self._ours = self.only_ours()
        return answer

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        """Answer a cached read, or hand the request to Flask."""
        began = time.perf_counter()
        if (not self._ours or environ.get("REQUEST_METHOD") != "GET" or "HTTP_RANGE" in environ
                or any(self.app.config.get(key) for key in _HOST_KEYS)):
            return self._to_flask(environ, start_response)
        path: str = environ.get("PATH_INFO", "")
        view = self._routes.get(path)
        rule = path
        if environ.get("QUERY_STRING"):  # only a page of the list, asked plainly (page_query)
            if path != self._plugins:
                return self._to_flask(environ, start_response)
            view = self._page
        elif view is None:
            if not (path.startswith(self._plugins) and path.endswith(HEALTH_TAIL)):
                return self._to_flask(environ, start_response)
            view, rule = self._health, f"{self.prefix}{HEALTH_RULE}"
        service: Service = self.app.extensions["plugin_health"]
        try:
            answer = view(service, environ)
        except Exception:  # noqa: BLE001 - the only broad except here: whatever failed (a store error), Flask's
            # path does the same work again and answers it as it always has (a problem+json 500 included)
            answer = None
        if answer is None:
            return self._to_flask(environ, start_response)
        status, headers, body, code = answer
        start_response(status, list(headers))  # a copy: some servers add to the list they are given (gevent's Date)
        metrics.count("GET", rule, code, time.perf_counter() - began, metrics.WARMING in environ)
        return [body]

    def _health(self, service: Service, environ: Environ) -> Answer | None:
        name = environ["PATH_INFO"][len(self._plugins):-len(HEALTH_TAIL)]
        if "/" in name or NAME_PATTERN.fullmatch(name) is None:
            return None  # Flask's 404 or 400
        visible = visible_with(service.settings, environ.get("HTTP_AUTHORIZATION", ""))
        entry = service.cache.peek(("health", name, visible), service.store.version())
        return None if entry is None else cached_answer(entry, JSON, environ)

    def _aggregate(self, service: Service, environ: Environ) -> Answer | None:
        visible = visible_with(service.settings, environ.get("HTTP_AUTHORIZATION", ""))
        with service.store.look():  # the heartbeat, the store's condition, the version: one look
            key = health.aggregate_key(visible, service.host_problem(), service.store.degraded())
            return _held_or_cached(service, key, health.HEALTH_JSON, environ)

    @staticmethod
    def _list(service: Service, environ: Environ) -> Answer | None:
        visible = visible_with(service.settings, environ.get("HTTP_AUTHORIZATION", ""))
        return _held_or_cached(service, list_key(None, None, None, visible), JSON, environ)

    @staticmethod
    def _page(service: Service, environ: Environ) -> Answer | None:
        query = page_query(environ["QUERY_STRING"])
        if query is None:
            return None  # Flask reads it (and refuses what it must)
        visible = visible_with(service.settings, environ.get("HTTP_AUTHORIZATION", ""))
        return _held_or_cached(service, list_key(*query, visible), JSON, environ)

    @staticmethod
    def _readyz(service: Service, environ: Environ) -> Answer:
        with service.store.look():  # see health.readiness
            checks, notes, absent = health.readiness(service)
        body, code = health.probe_answer("readyz", checks, notes, absent, set(), verbose=False)
        return _text(code, body)

    @staticmethod
    def _livez(service: Service, environ: Environ) -> Answer:
        return _LIVE


#: ``limit`` as the fast path takes it: a plain number of 1 to 4 digits, no sign, no leading zero.
_LIMIT = re.compile(r"[1-9][0-9]{0,3}")
_PAGE_NAMES = frozenset({"limit", "continue", "state"})


def page_query(query: str) -> tuple[PluginLifecycleState | None, int | None, str | None] | None:
    """The state, limit and place after which a list query asks for, as the list's view reads them
    (``schemas.ListQuery``), when it asks plainly: ``limit``, ``continue`` and ``state`` each at most once, with a
    value and nothing else, no escapes (``%``, ``+``), the limit a plain number in range, the token well-formed, the
    state a state's name. None for anything else: Flask reads it, as it does every query it answers itself."""
    found: dict[str, str] = {}
    for part in query.split("&"):
        name, equals, value = part.partition("=")
        if not equals or not value or name not in _PAGE_NAMES or name in found or "%" in value or "+" in value:
            return None
        found[name] = value
    limit = found.get("limit")
    if limit is not None and (_LIMIT.fullmatch(limit) is None or int(limit) > MAX_LIMIT):
        return None
    try:
        after = None if "continue" not in found else decode_token(found["continue"])
        state = None if "state" not in found else parse_state(found["state"])
    except ValueError:
        return None
    return state, None if limit is None else int(limit), after


def _held_or_cached(service: Service, key: Hashable, media_type: str, environ: Environ) -> Answer | None:
    """A 304 the cache can tell without the answer (the ``shortcut`` of ``ResponseCache.respond``), the cached
    answer of ``key`` at the store's version, or None (a miss: Flask builds it)."""
    version = service.store.version()
    if_none_match = environ.get("HTTP_IF_NONE_MATCH")
    if if_none_match is not None:
        gzip_ok = takes_gzip(environ.get("HTTP_ACCEPT_ENCODING"))
        held = service.cache.held(key, version, parse_etags(if_none_match), gzip_ok)
        if held is not None:
            return not_modified(held)
    entry = service.cache.peek(key, version)
    return None if entry is None else cached_answer(entry, media_type, environ)


_LIVE = _text(200, "ok")
