"""A worker warmed before it takes requests (gunicorn's ``post_worker_init``): its first list is a cache hit."""

from __future__ import annotations

import importlib
import json
import logging
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from plugin_health import create_app
from plugin_health.api import plugins, warm
from plugin_health.api.cache import Built
from plugin_health.app import EXTENSION
from plugin_health.lifecycle import PluginLifecycleState as S
from plugin_health.metrics import COLLECTOR, StoreCollector
from plugin_health.service import Service
from plugin_health.store import PluginSnapshot

NAMES = [f"p{i:02d}" for i in range(20)]
LIST_KEY = ("list", None, False)


def snapshot(name: str, state: S = S.RUNNING) -> PluginSnapshot:
    since = datetime.now(UTC) - timedelta(seconds=60)
    return PluginSnapshot(name=name, state=state, since=since, last_check=since, last_check_ok=True)


class Worker:
    """What ``post_worker_init`` reads of a gunicorn (sync or gthread) worker."""

    def __init__(self, app: Flask) -> None:
        self.wsgi = app
        self.alive = True
        self.pid = 4242
        self.log = logging.getLogger("test-worker")


def service(app: Flask) -> Service:
    value: Service = app.extensions[EXTENSION]
    return value


@pytest.fixture
def app(tmp_path: Path) -> Iterator[Flask]:
    """An app as a gunicorn worker is one: it reads the SQLite store the core writes, and hosts nothing."""
    (tmp_path / "plugins").mkdir()
    app = create_app({"plugin_path": str(tmp_path / "plugins"), "store_url": f"sqlite:///{tmp_path / 's.sqlite3'}",
                      "health_interval": 3600, "host_mode": "external"})
    service(app).store.put_many([snapshot(name) for name in NAMES])
    yield app
    service(app).shutdown()


@pytest.fixture
def post_worker_init(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[[Any], None]:
    """The packaged configuration's hook; importing the configuration chooses the metrics directory (and empties
    it) unless one is chosen: here a directory of the test's, forgotten after it."""
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path / "metrics"))
    hook: Callable[[Any], None] = importlib.import_module("plugin_health.serving.gunicorn_conf").post_worker_init
    return hook


def refuse_builds(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Make every build of the list fail the test's request; return the list of builds tried."""
    tried: list[str] = []

    def build_list(*args: Any) -> Built:
        tried.append("list")
        raise AssertionError("the list was built on a request")

    monkeypatch.setattr(plugins, "build_list", build_list)
    return tried


def test_a_warmed_worker_serves_its_first_list_from_the_cache(
    app: Flask, monkeypatch: pytest.MonkeyPatch, post_worker_init: Callable[[Any], None]
) -> None:
    post_worker_init(Worker(app))
    cached = service(app).cache._current(LIST_KEY, service(app).store.version())
    assert cached is not None
    assert cached._gzipped is not None
    collector = app.extensions[COLLECTOR]
    assert isinstance(collector, StoreCollector)
    assert collector._cached is not None
    assert collector._cached[0] == service(app).store.version()

    tried = refuse_builds(monkeypatch)
    response = app.test_client().get("/v1/plugins/")
    gzipped = app.test_client().get("/v1/plugins/", headers={"Accept-Encoding": "gzip"})
    assert tried == []
    assert response.status_code == 200
    assert [entry["name"] for entry in response.get_json()] == NAMES
    assert response.headers["ETag"] == f'"{cached.etag}"'
    assert gzipped.headers["Content-Encoding"] == "gzip"


def test_the_warmed_list_is_what_a_request_builds(app: Flask, tmp_path: Path) -> None:
    warm.warm(app)
    warmed = app.test_client().get("/v1/plugins/")
    service(app).cache._entries.clear()
    built = app.test_client().get("/v1/plugins/")
    assert warmed.get_data() == built.get_data()
    assert warmed.headers["ETag"] == built.headers["ETag"]


def test_the_warmed_list_is_built_again_when_the_store_moves(app: Flask) -> None:
    warm.warm(app)
    service(app).store.put(snapshot("p03", S.FAILED))
    states = {entry["name"]: entry["state"] for entry in app.test_client().get("/v1/plugins/").get_json()}
    assert states["p03"] == "FAILED"


def test_a_worker_whose_warming_fails_still_boots(
    app: Flask, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
    post_worker_init: Callable[[Any], None],
) -> None:
    refuse_builds(monkeypatch)
    post_worker_init(Worker(app))
    assert "not warmed; its first requests build" in caplog.text
    assert service(app).cache._current(LIST_KEY, service(app).store.version()) is None


def test_a_warmed_worker_answers_its_first_list_in_front_of_flask_and_counts_no_request(app: Flask) -> None:
    """Warming takes a worker's first request through the whole app (Flask's first-request costs paid, the fast
    path's question of whose hooks the app has answered), yet no request is counted that no client made."""
    from prometheus_client import REGISTRY
    from werkzeug.test import EnvironBuilder

    from plugin_health.api.fastpath import FastReads

    def counted() -> float:
        return REGISTRY.get_sample_value("plugin_health_http_requests_total",
                                         {"method": "GET", "route": "/v1/plugins/", "status": "200"}) or 0.0

    fast = app.wsgi_app
    assert isinstance(fast, FastReads)
    before = counted()
    warm.warm(app)
    assert counted() == before
    reached: list[str] = []
    inner = fast.flask
    fast.flask = lambda environ, start_response: reached.append(environ["PATH_INFO"]) or inner(environ, start_response)
    environ = EnvironBuilder(path="/v1/plugins/").get_environ()
    body = b"".join(fast(environ, lambda status, headers, exc_info=None: None))
    assert [entry["name"] for entry in json.loads(body)] == NAMES
    assert reached == []  # answered in front of Flask: the worker's first client request
    assert counted() == before + 1


def test_a_worker_that_boots_while_the_core_loads_builds_nothing_from_the_store_until_it_has(
    app: Flask, monkeypatch: pytest.MonkeyPatch, post_worker_init: Callable[[Any], None]
) -> None:
    """While the core loads, the store moves with every batch (ten times a second): a list built then is stale
    before any client asks, and five workers building one of thousands of plugins at once took the CPU the core
    loads with. A worker that boots then pays only its one-time costs (a request through the whole app: Flask's
    first, the fast path's question of whose hooks the app has) and builds its list and gauges once the core has
    loaded."""
    from waiting import wait_for

    from plugin_health.api.fastpath import FastReads
    from plugin_health.runtime.core import LOADED_KEY

    store = service(app).store
    store.set_meta(LOADED_KEY, "")  # the core is loading
    build_list, from_json = plugins.build_list, PluginSnapshot.__dict__["from_json"]
    tried = refuse_builds(monkeypatch)
    parsed = count_parses(monkeypatch)
    post_worker_init(Worker(app))
    assert app.extensions[warm.FIRST_ONLY] is True
    assert tried == []
    assert parsed == []
    assert COLLECTOR not in app.extensions  # no gauges worked out either
    fast = app.wsgi_app
    assert isinstance(fast, FastReads)
    assert fast._ours is True  # its first request went through Flask, marked as no client's
    monkeypatch.setattr(plugins, "build_list", build_list)  # builds are the worker's own again
    monkeypatch.setattr(PluginSnapshot, "from_json", from_json)
    store.put_many([snapshot(name, S.FAILED) for name in NAMES])
    store.set_meta(LOADED_KEY, "1")
    wait_for(lambda: app.extensions[warm.WARMED_LOADED] is True, 5)
    assert app.extensions[COLLECTOR]._cached[0] == store.version()
    states = {entry["name"]: entry["state"] for entry in app.test_client().get("/v1/plugins/").get_json()}
    assert set(states.values()) == {"FAILED"}


def count_parses(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record each snapshot parsed from its JSON text."""
    parsed: list[str] = []
    from_json = PluginSnapshot.from_json.__func__  # type: ignore[attr-defined]

    def counting(cls: type[PluginSnapshot], text: str | bytes) -> PluginSnapshot:
        parsed.append(str(text))
        result: PluginSnapshot = from_json(cls, text)
        return result

    monkeypatch.setattr(PluginSnapshot, "from_json", classmethod(counting))
    return parsed


def test_a_worker_that_booted_while_the_core_loaded_warms_again_once_it_has_in_steps(
    app: Flask, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker boots while the core loads (its warm-up saw few plugins, or none RUNNING yet): once the core has
    loaded, it parses the snapshots again in small steps, giving way between them (under gevent, to the other
    connections of its event loop), and works out the ``/metrics`` gauges, so that its first scrape reads nothing it
    has not parsed (it took 150-170 ms at 10,000 plugins, every worker's first)."""
    from plugin_health.runtime.core import LOADED_KEY

    store = service(app).store
    store.set_meta(LOADED_KEY, "")
    warm.warm(app)  # at boot, while the core loads: then every plugin moves on
    store.put_many([snapshot(name, S.FAILED) for name in NAMES])
    pauses: list[float] = []
    waited: list[float] = []

    def pause(seconds: float) -> None:
        (waited if seconds else pauses).append(seconds)
        if len(waited) == 3:
            store.set_meta(LOADED_KEY, "1")  # the core has loaded, after three looks

    parsed = count_parses(monkeypatch)
    assert warm.warm_once_loaded(app, pause, every=0.5, step=4) is not None
    assert len(waited) == 3
    assert sorted(parsed) == sorted(s.to_json() for s in store.snapshots())  # each once: now in the cache
    assert len(pauses) >= len(NAMES) // 4  # a pause after every 4 parsed
    parsed.clear()
    body = app.test_client().get("/metrics").get_data(as_text=True)
    assert parsed == []  # the scrape parsed nothing
    assert f'plugin_health_plugins{{state="FAILED"}} {float(len(NAMES))}' in body


def test_a_worker_that_booted_on_a_loaded_store_does_not_warm_again(
    app: Flask, monkeypatch: pytest.MonkeyPatch
) -> None:
    from plugin_health.runtime.core import LOADED_KEY

    service(app).store.set_meta(LOADED_KEY, "1")
    warm.warm(app)
    service(app).store.put_many([snapshot(name, S.FAILED) for name in NAMES])
    parsed = count_parses(monkeypatch)
    assert warm.warm_once_loaded(app, lambda seconds: None) is None
    assert parsed == []


def test_a_worker_that_stops_before_the_core_has_loaded_stops_waiting(app: Flask) -> None:
    from plugin_health.runtime.core import LOADED_KEY

    service(app).store.set_meta(LOADED_KEY, "")
    service(app).serving = lambda: False
    looks: list[float] = []

    def pause(seconds: float) -> None:  # a wait that never ends fails here instead of hanging the suite
        looks.append(seconds)
        assert len(looks) < 100, "still waiting for a core that will never load, though the worker stopped"

    assert warm.warm_once_loaded(app, pause) is None


def test_post_worker_init_warms_again_once_the_core_has_loaded(
    app: Flask, post_worker_init: Callable[[Any], None]
) -> None:
    from waiting import wait_for

    from plugin_health.runtime.core import LOADED_KEY

    service(app).store.set_meta(LOADED_KEY, "")
    post_worker_init(Worker(app))
    assert app.extensions[warm.WARMED_LOADED] is False
    service(app).store.put_many([snapshot(name, S.FAILED) for name in NAMES])
    service(app).store.set_meta(LOADED_KEY, "1")
    wait_for(lambda: app.extensions[warm.WARMED_LOADED] is True, 5)
    collector = app.extensions[COLLECTOR]
    assert collector._cached[0] == service(app).store.version()
