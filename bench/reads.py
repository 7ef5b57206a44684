"""In-process benchmark of the cached reads: one plugin's health (200 and 304), ``/readyz``, ``/livez`` and
``/v1/health``, each as a ratio to a bare Flask route serving the same bytes and to a raw WSGI callable, and
``/v1/health`` to py-healthcheck's Flask endpoint with as many cached checks, in the same run.

Run from the repository root, in the project's venv (``python -m bench`` runs it as ``python bench/reads.py``;
it then puts the repository root first on ``sys.path``, since ``bench/http.py`` shadows the standard library's
``http`` for scripts run from ``bench/``)::

    python -m bench.reads [--seconds 1.0] [--rounds 5] [--quick]

No HTTP and no gunicorn: each app is called as WSGI (``app(environ, start_response)``) in a loop, with the
environ a client's request would give, so what is measured is exactly the per-request work of the app, the
part the service adds over Flask (``bench/http.py`` measures the same routes under gunicorn, where the server's
own work dilutes the differences). The service is ``create_app`` with 100 trivial plugins hosted in this process
on a SQLite store in a temporary run directory, with ``PROMETHEUS_MULTIPROC_DIR`` set as under gunicorn (so the
counters write to their files, as a worker's do); since it hosts the plugins itself, its probes skip the check of
a plugin host in another process that a gunicorn worker makes (``bench/http.py`` measures that). py-healthcheck
is ``bench/_bare_app.py``'s (``/healthcheck/100``). Rounds alternate the apps; the figures are medians, and go to
``python -m bench``'s table through ``bench/_figures.py``. ``--quick``: 3 rounds of 0.3 s.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

if not __package__:  # run as a script: the repository root instead of bench/, whose http.py shadows the stdlib's
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

from bench._figures import report

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
    parser.add_argument("--quick", action="store_true", help="3 rounds of 0.3 s")
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.rounds = 0.3, 3
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
        answers = {path: call(service, environ(path)) for path in (health, "/readyz", "/livez", "/v1/health")}
        for path, (status, _, _) in answers.items():
            if not status.startswith("200"):
                raise RuntimeError(f"{path} answered {status}")
        etag = dict(answers[health][1])["ETag"]
        bare = bare_app(answers)
        os.environ.setdefault("BENCH_BARE_DIR", str(canned(work, answers[health])))
        from bench._bare_app import app as healthcheck_app

        healthcheck: WsgiApp = healthcheck_app.wsgi_app  # type: ignore[assignment]
        theirs = environ(f"/healthcheck/{PLUGINS}")
        if call(healthcheck, theirs)[0] != "200 OK":
            raise RuntimeError("py-healthcheck did not answer 200")
        cases = [
            (f"GET {health}", environ(health), None),
            (f"GET {health}, If-None-Match (304)", environ(health, {"If-None-Match": etag}), None),
            ("GET /readyz", environ("/readyz"), None),
            ("GET /livez", environ("/livez"), None),
            (f"GET /v1/health, {PLUGINS} plugins", environ("/v1/health"), theirs),
        ]
        print(f"Python {sys.version.split()[0]}, {os.cpu_count()} CPUs, {PLUGINS} plugins, in-process WSGI calls, "
              f"{args.rounds} rounds of {args.seconds:g} s, medians; py-healthcheck: {PLUGINS} cached checks")
        print(f"{'route':<52}{'service':>10}{'bare Flask':>12}{'raw WSGI':>10}{'py-hc':>9}{'/Flask':>8}{'/raw':>7}"
              f"{'/py-hc':>8}")
        for title, env, other in cases:
            status, headers, body = call(service, env)
            raw = raw_app(status, headers, body)
            if call(bare, env)[0] != status:
                raise RuntimeError(f"{title}: the bare app answered {call(bare, env)[0]}, not {status}")
            apps: list[tuple[str, WsgiApp, dict[str, Any]]] = [("bare", bare, env), ("service", service, env),
                                                              ("raw", raw, env)]
            if other is not None:
                apps.append(("py-healthcheck", healthcheck, other))
            samples: dict[str, list[float]] = {label: [] for label, _, _ in apps}
            for _ in range(args.rounds):
                for label, app, request in apps:
                    samples[label].append(rate(app, request, args.seconds))
            rates = {label: statistics.median(values) for label, values in samples.items()}
            real, flask, wsgi = rates["service"], rates["bare"], rates["raw"]
            theirs_rate = rates.get("py-healthcheck")
            extra = "" if theirs_rate is None else f"{1e6 / theirs_rate:>7.1f}us"
            against = "" if theirs_rate is None else f"{real / theirs_rate:>8.2f}"
            print(f"{title:<52}{1e6 / real:>8.1f}us{1e6 / flask:>10.1f}us{1e6 / wsgi:>8.1f}us{extra:>9}"
                  f"{real / flask:>8.2f}{real / wsgi:>7.2f}{against}")
            # Ratios of throughput (calls a second), as bench/http.py's; the raw callable's 0.3 us in-process says
            # nothing of what it costs under a server (bench/http.py measures that one), so it is only printed.
            report(f"{title}, a call", f"{1e6 / real:.1f} us", f"{1e6 / flask:.1f} us (bare Flask route)",
                   real / flask)
            if theirs_rate is not None:
                report(f"{title}, a call: against py-healthcheck", f"{1e6 / real:.1f} us",
                       f"{1e6 / theirs_rate:.1f} us (py-healthcheck, {PLUGINS} cached checks)", real / theirs_rate)
        flask_app.extensions["plugin_health"].shutdown()


def canned(work: Path, answer: tuple[str, list[tuple[str, str]], bytes]) -> Path:
    """A directory of canned answers for ``bench/_bare_app.py`` (imported for py-healthcheck; its canned routes
    are not used here)."""
    directory = work / "canned"
    directory.mkdir()
    status, headers, body = answer
    fields = dict(headers)
    for key in ("health", "list"):
        (directory / f"{key}.body").write_bytes(body)
        meta = {"status": int(status.split()[0]), "content_type": fields["Content-Type"], "etag": fields["ETag"]}
        (directory / f"{key}.json").write_text(json.dumps(meta))
    return directory


if __name__ == "__main__":
    main()
