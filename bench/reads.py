"""In-process benchmark of the cached reads: one plugin's health (200 and 304), ``/readyz`` and ``/livez``, each
as a ratio to a bare Flask route serving the same bytes and to a raw WSGI callable, in the same run.

Run from the repository root, in the project's venv (as a module: ``bench/http.py`` shadows the standard
library's ``http`` for scripts run from ``bench/``)::

    python -m bench.reads [--seconds 1.0] [--rounds 5]

No HTTP and no gunicorn: each app is called as WSGI (``app(environ, start_response)``) in a loop, with the
environ a client's request would give, so what is measured is exactly the per-request work of the app, the
part the service adds over Flask (``bench/http.py`` measures the same routes under gunicorn, where the server's
own work dilutes the differences). The service is ``create_app`` with 100 trivial plugins hosted in this process
on a SQLite store in a temporary run directory, with ``PROMETHEUS_MULTIPROC_DIR`` set as under gunicorn (so the
counters write to their files, as a worker's do). Rounds alternate the apps; the figures are medians.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

PLUGINS = 100
PROBE = "p00050"
WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def environ(path: str, headers: dict[str, str] | None = None) -> dict[str, Any]:
    """The WSGI environ of a plain GET of ``path`` from a client on 127.0.0.1."""
    env: dict[str, Any] = {
        "REQUEST_METHOD": "GET", "SCRIPT_NAME": "", "PATH_INFO": path, "QUERY_STRING": "", "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8000", "SERVER_PROTOCOL": "HTTP/1.1", "REMOTE_ADDR": "127.0.0.1", "HTTP_HOST": "127.0.0.1",
        "HTTP_USER_AGENT": "wrk", "HTTP_ACCEPT": "*/*", "wsgi.version": (1, 0), "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(), "wsgi.errors": sys.stderr, "wsgi.multithread": False,
        "wsgi.multiprocess": True, "wsgi.run_once": False,
    }
    for name, value in (headers or {}).items():
        env["HTTP_" + name.upper().replace("-", "_")] = value
    return env


def call(app: WsgiApp, env: dict[str, Any]) -> tuple[str, list[tuple[str, str]], bytes]:
    """One request: status, headers and body."""
    got: list[Any] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> None:
        got[:] = [status, headers]

    result = app(dict(env), start_response)
    try:
        body = b"".join(result)
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()
    return got[0], got[1], body


def rate(app: WsgiApp, env: dict[str, Any], seconds: float) -> float:
    """Requests a second over ``seconds``."""
    n, began = 0, time.perf_counter()
    end = began + seconds
    while True:
        for _ in range(100):
            result = app(dict(env), lambda status, headers, exc_info=None: None)
            for _chunk in result:
                pass
            close = getattr(result, "close", None)
            if close is not None:
                close()
        n += 100
        now = time.perf_counter()
        if now >= end:
            return n / (now - began)


def raw_app(status: str, headers: list[tuple[str, str]], body: bytes) -> WsgiApp:
    """A raw WSGI callable that answers these bytes."""

    def app(env: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        start_response(status, headers)
        return [body]

    return app


def bare_app(answers: dict[str, tuple[str, list[tuple[str, str]], bytes]]) -> WsgiApp:
    """A bare Flask app with one route per answer, serving its bytes and headers as they are (304 on a match)."""
    from flask import Flask, Response, request

    app = Flask("bare")
    for path, (status, headers, body) in answers.items():

        def view(status: str = status, headers: list[tuple[str, str]] = headers, body: bytes = body) -> Response:
            etag = dict(headers).get("ETag")
            if etag is not None and request.headers.get("If-None-Match") == etag:
                return Response(status=304, headers=[("ETag", etag)])
            return Response(body, status=int(status.split()[0]), headers=headers)

        app.add_url_rule(path, path, view)
    return app.wsgi_app  # type: ignore[return-value]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="length of one measurement")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds per route")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-reads-") as tmp:
        work = Path(tmp)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(work / "metrics")
        (work / "metrics").mkdir()
        from bench._serve import write_plugins

        write_plugins(work / "plugins", PLUGINS)
        from plugin_health.app import create_app

        flask_app = create_app({"plugin_path": str(work / "plugins"), "run_dir": str(work / "run"),
                                "health_interval": 3600})
        service = flask_app.wsgi_app
        deadline = time.monotonic() + 30
        while call(service, environ("/startupz"))[0] != "200 OK":
            if time.monotonic() > deadline:
                raise RuntimeError("the service did not start")
            time.sleep(0.05)
        health = f"/v1/plugins/{PROBE}/health"
        answers = {path: call(service, environ(path)) for path in (health, "/readyz", "/livez")}
        for path, (status, _, _) in answers.items():
            if not status.startswith("200"):
                raise RuntimeError(f"{path} answered {status}")
        etag = dict(answers[health][1])["ETag"]
        bare = bare_app(answers)
        cases = [
            (f"GET {health}", environ(health)),
            (f"GET {health}, If-None-Match (304)", environ(health, {"If-None-Match": etag})),
            ("GET /readyz", environ("/readyz")),
            ("GET /livez", environ("/livez")),
        ]
        print(f"Python {sys.version.split()[0]}, {os.cpu_count()} CPUs, {PLUGINS} plugins, in-process WSGI calls, "
              f"{args.rounds} rounds of {args.seconds:g} s, medians")
        print(f"{'route':<52}{'service':>10}{'bare Flask':>12}{'raw WSGI':>10}{'/Flask':>8}{'/raw':>7}")
        for title, env in cases:
            status, headers, body = call(service, env)
            raw = raw_app(status, headers, body)
            if call(bare, env)[0] != status:
                raise RuntimeError(f"{title}: the bare app answered {call(bare, env)[0]}, not {status}")
            samples: dict[str, list[float]] = {"service": [], "bare": [], "raw": []}
            for _ in range(args.rounds):
                for label, app in (("bare", bare), ("service", service), ("raw", raw)):
                    samples[label].append(rate(app, env, args.seconds))
            real, flask, wsgi = (statistics.median(samples[k]) for k in ("service", "bare", "raw"))
            print(f"{title:<52}{1e6 / real:>8.1f}us{1e6 / flask:>10.1f}us{1e6 / wsgi:>8.1f}us"
                  f"{real / flask:>8.2f}{real / wsgi:>7.2f}")
        flask_app.extensions["plugin_health"].shutdown()


if __name__ == "__main__":
    main()
