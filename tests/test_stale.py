"""The core never reports what it has not seen: a RUNNING plugin whose last health check is older than its
interval plus its timeout plus a grace is stale, hence unhealthy, in every answer, and time alone makes it so."""

from __future__ import annotations

import json
import re
import textwrap
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from waiting import wait_for

from plugin_health import create_app
from plugin_health.api.cache import ResponseCache
from plugin_health.api.freshness import NEVER_CHECKED, Horizon
from plugin_health.app import EXTENSION, Service
from plugin_health.lifecycle import PluginLifecycleState
from plugin_health.store import MemoryStore, PluginSnapshot, SQLiteStore, StateStore
from plugin_health.store.base import is_healthy, is_stale
from plugin_health.supervision.policy import STALE_GRACE, stale_deadline

S = PluginLifecycleState
T0 = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
#: How far ahead of the first answers a plugin turns stale in the tests that wait for it.
AHEAD = 1.0


def running(name: str, stale_after: datetime | None, *, last_check: datetime | None = None,
            critical: bool = False, since: datetime | None = None, ok: bool | None = True) -> PluginSnapshot:
    now = datetime.now(UTC)
    return PluginSnapshot(
        name=name, state=S.RUNNING, since=since or now - timedelta(seconds=60), critical=critical,
        last_check=last_check or now, last_check_ok=ok, stale_after=stale_after,
        allowed=("fail", "make_unavailable"),
    )


def soon() -> datetime:
    return datetime.now(UTC) + timedelta(seconds=AHEAD)


def wait_past(moment: datetime) -> None:
    """Sleep until ``moment`` has passed (bounded by the tests' own margin)."""
    wait_for(lambda: datetime.now(UTC) > moment + timedelta(milliseconds=20), timeout=AHEAD + 5.0)


# -- the deadline, the snapshot ------------------------------------------------------------------------------


def test_stale_deadline_counts_from_the_last_check() -> None:
    last = T0 + timedelta(seconds=100)
    assert stale_deadline(last, T0, 30.0, 10.0) == last + timedelta(seconds=41)
    assert stale_deadline(last, T0, 30.0, 10.0, grace=0.0) == last + timedelta(seconds=40)
    assert STALE_GRACE == 1.0


def test_stale_deadline_counts_from_the_start_before_any_check() -> None:
    assert stale_deadline(None, T0, 5.0, 2.5) == T0 + timedelta(seconds=8.5)


def test_a_check_from_before_the_start_does_not_count() -> None:
    """After a restart the previous run's last check is older than ``since``: the new run counts from its start."""
    assert stale_deadline(T0 - timedelta(hours=1), T0, 5.0, 2.0) == T0 + timedelta(seconds=8)


def test_snapshot_healthy_and_stale_follow_the_clock() -> None:
    now = datetime.now(UTC)
    fresh = running("a", now + timedelta(hours=1))
    late = running("a", now - timedelta(seconds=1))
    assert (fresh.healthy, fresh.stale) == (True, False)
    assert (late.healthy, late.stale) == (False, True)
    assert (running("a", None).healthy, running("a", None).stale) == (True, False)
    failed = PluginSnapshot("a", S.FAILED, now, stale_after=now - timedelta(seconds=1))
    assert (failed.healthy, failed.stale) == (False, False)  # only RUNNING plugins are judged stale
    assert (is_stale(late, now), is_healthy(late, now)) == (True, False)
    earlier = now - timedelta(seconds=2)
    assert (is_stale(late, earlier), is_healthy(late, earlier)) == (False, True)
    assert not is_healthy(running("a", now + timedelta(hours=1), ok=False), now)


def test_stale_after_round_trips_and_old_rows_load(tmp_path: Path) -> None:
    snapshot = running("a", T0 + timedelta(seconds=41.5))
    assert PluginSnapshot.from_json(snapshot.to_json()) == snapshot
    old = json.loads(snapshot.to_json())
    del old["stale_after"]  # written before the field existed
    assert PluginSnapshot.from_json(json.dumps(old)).stale_after is None
    store = SQLiteStore(tmp_path / "s.db")
    store.put(snapshot)
    assert store.snapshot("a") == snapshot
    assert store.snapshots() == [snapshot]
    store.close()


# -- what the answers say ---------------------------------------------------------------------------------


def test_the_reason_states_the_age_of_the_last_check() -> None:
    last = T0
    snapshot = running("a", T0 + timedelta(seconds=3), last_check=last, since=T0 - timedelta(seconds=60))
    assert Horizon(T0 + timedelta(seconds=2)).stale(snapshot) is None
    horizon = Horizon(T0 + timedelta(seconds=42.3))
    assert horizon.stale(snapshot) == "stale: last health check 42 s ago"
    # The answer holds until the stated age moves on, the same for whoever builds it within that second.
    assert horizon.until == (T0 + timedelta(seconds=43)).timestamp()
    other = Horizon(T0 + timedelta(seconds=42.9))
    assert (other.stale(snapshot), other.until) == (horizon.stale(snapshot), horizon.until)


def test_a_fresh_plugin_bounds_the_answer_by_its_stale_after() -> None:
    horizon = Horizon(T0)
    assert horizon.stale(running("a", T0 + timedelta(seconds=5))) is None
    assert horizon.stale(running("b", T0 + timedelta(seconds=3))) is None
    assert horizon.stale(PluginSnapshot("c", S.FAILED, T0)) is None
    assert horizon.until == (T0 + timedelta(seconds=3)).timestamp()
    assert Horizon(T0).until is None  # built from nothing that can turn stale: holds until the version moves


def test_never_checked_since_it_started() -> None:
    since = T0
    snapshot = PluginSnapshot("a", S.RUNNING, since, stale_after=T0 + timedelta(seconds=8))
    assert Horizon(T0 + timedelta(seconds=9)).stale(snapshot) == NEVER_CHECKED
    before = running("b", T0 + timedelta(seconds=8), last_check=T0 - timedelta(hours=1), since=T0)
    assert Horizon(T0 + timedelta(seconds=9)).stale(before) == NEVER_CHECKED


# -- the cache ----------------------------------------------------------------------------------------------


def test_a_cached_answer_expires_when_its_build_said_so() -> None:
    store = MemoryStore()
    cache = ResponseCache(store)
    builds: list[int] = []
    until = time.time() + 0.3

    def build() -> tuple[bytes, int, float | None]:
        builds.append(1)
        return b"x", 200, until

    first = cache.get("k", build)
    assert cache.get("k", build) is first
    assert first.etag.endswith(f".{int(until * 1000)}")
    wait_for(lambda: time.time() > until + 0.01, timeout=5.0)
    again = cache.get("k", build)
    assert len(builds) == 2
    assert again is not first
    assert store.version() == 0
    plain = cache.get("p", lambda: (b"y", 200))
    assert (plain.expires_ms, "." in plain.etag) == (None, False)  # unchanged for answers that never expire


# -- the HTTP answers, from a store nobody writes to ------------------------------------------------------


@pytest.fixture(params=["memory", "sqlite"])
def app(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Flask]:
    """An app that hosts no plugins (empty plugin directory) over a store the test fills by hand."""
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    url = "memory://" if request.param == "memory" else f"sqlite:///{tmp_path / 'state.sqlite3'}"
    app = create_app({"plugin_path": str(plugins), "store_url": url, "health_interval": 3600,
                      "host_mode": "embedded"})
    yield app
    app.extensions[EXTENSION].shutdown()


def service(app: Flask) -> Service:
    value: Service = app.extensions[EXTENSION]
    return value


def put(app: Flask, *snapshots: PluginSnapshot) -> StateStore:
    store = service(app).store
    store.put_many(snapshots)
    return store


def test_a_health_cached_while_healthy_turns_503_stale_without_a_write(app: Flask, client: FlaskClient) -> None:
    deadline = soon()
    store = put(app, running("db", deadline, last_check=datetime.now(UTC) - timedelta(seconds=2)))
    first = client.get("/v1/plugins/db/health")
    assert first.status_code == 200
    assert (first.get_json()["healthy"], first.get_json()["stale"], first.get_json()["reason"]) == (True, False, None)
    etag = first.headers["ETag"]
    assert client.get("/v1/plugins/db/health", headers={"If-None-Match": etag}).status_code == 304
    version = store.version()
    wait_past(deadline)
    assert store.version() == version  # nothing was written: time alone turned it stale
    later = client.get("/v1/plugins/db/health", headers={"If-None-Match": etag})
    assert later.status_code == 503
    body = later.get_json()
    assert (body["state"], body["healthy"], body["stale"]) == ("RUNNING", False, True)
    assert re.fullmatch(r"stale: last health check \d+ s ago", body["reason"])
    assert later.headers["ETag"] != etag


def test_the_list_turns_stale_and_its_etag_changes_even_for_a_fresh_worker(app: Flask, client: FlaskClient) -> None:
    deadline = soon()
    put(app, running("a", deadline), running("b", deadline + timedelta(hours=1)))
    first = client.get("/v1/plugins/")
    assert [(i["name"], i["healthy"], i["stale"]) for i in first.get_json()] == [("a", True, False),
                                                                                  ("b", True, False)]
    etag = first.headers["ETag"]
    assert client.get("/v1/plugins/", headers={"If-None-Match": etag}).status_code == 304
    service(app).cache = ResponseCache(service(app).store)  # a worker that never built it answers the same
    assert client.get("/v1/plugins/", headers={"If-None-Match": etag}).status_code == 304
    wait_past(deadline)
    for _ in range(2):  # the worker that cached it, then one that never built it
        later = client.get("/v1/plugins/", headers={"If-None-Match": etag})
        assert later.status_code == 200
        assert later.headers["ETag"] != etag
        assert [(i["name"], i["healthy"], i["stale"]) for i in later.get_json()] == [("a", False, True),
                                                                                      ("b", True, False)]
        service(app).cache = ResponseCache(service(app).store)


def test_the_stated_age_moves_on(app: Flask, client: FlaskClient) -> None:
    last = datetime.now(UTC) - timedelta(seconds=5)
    put(app, running("a", last + timedelta(seconds=1), last_check=last))
    first = client.get("/v1/plugins/a/health").get_json()["reason"]
    assert first in ("stale: last health check 5 s ago", "stale: last health check 6 s ago")

    def moved() -> bool:
        return client.get("/v1/plugins/a/health").get_json()["reason"] != first

    wait_for(moved, timeout=3.0)


def test_a_critical_stale_plugin_fails_the_aggregate_and_readyz(app: Flask, client: FlaskClient) -> None:
    deadline, checked = soon(), datetime.now(UTC) - timedelta(seconds=3)
    put(app, running("db", deadline, critical=True, last_check=checked),
        running("cache", deadline + timedelta(hours=1)))
    health = client.get("/v1/health")
    assert (health.status_code, health.get_json()["status"]) == (200, "pass")
    assert client.get("/readyz").status_code == 200
    etag = health.headers["ETag"]
    wait_past(deadline)
    later = client.get("/v1/health", headers={"If-None-Match": etag})
    assert (later.status_code, later.get_json()["status"]) == (503, "fail")
    assert later.headers["ETag"] != etag
    check = later.get_json()["checks"]["db:health"][0]
    assert (check["status"], check["observedValue"], check["time"]) == ("fail", None, checked.isoformat())
    assert check["output"].startswith("stale: last health check ")
    assert later.get_json()["checks"]["cache:health"][0]["status"] == "pass"
    ready = client.get("/readyz?verbose")
    assert ready.status_code == 503
    assert "[-]plugin/db failed: stale: last health check " in ready.get_data(as_text=True)
    assert client.get("/readyz?exclude=db").status_code == 200


def test_a_non_critical_stale_plugin_warns_and_leaves_readyz_alone(app: Flask, client: FlaskClient) -> None:
    deadline = soon()
    put(app, running("extra", deadline), running("db", deadline + timedelta(hours=1), critical=True))
    assert client.get("/v1/health").get_json()["status"] == "pass"
    wait_past(deadline)
    health = client.get("/v1/health")
    assert (health.status_code, health.get_json()["status"]) == (200, "warn")
    assert health.get_json()["checks"]["extra:health"][0]["status"] == "warn"
    assert client.get("/readyz").status_code == 200


def test_a_plugin_never_checked_is_stale_once_its_start_is_too_old(app: Flask, client: FlaskClient) -> None:
    since = datetime.now(UTC)
    deadline = soon()
    put(app, PluginSnapshot("db", S.RUNNING, since, critical=True, stale_after=deadline))
    assert client.get("/v1/plugins/db/health").status_code == 200
    wait_past(deadline)
    body = client.get("/v1/plugins/db/health").get_json()
    assert (body["stale"], body["reason"]) == (True, NEVER_CHECKED)
    assert f"[-]plugin/db failed: {NEVER_CHECKED}" in client.get("/readyz?verbose").get_data(as_text=True)


def test_the_cli_and_the_metrics_judge_the_same(app: Flask) -> None:
    now = datetime.now(UTC)
    put(app, running("late", now - timedelta(seconds=1), last_check=now - timedelta(seconds=10)),
        running("fine", now + timedelta(hours=1)))
    runner = app.test_cli_runner()
    result = runner.invoke(args=["plugins", "health", "late"])
    assert result.exit_code == 1
    assert json.loads(result.output)["stale"] is True
    assert runner.invoke(args=["plugins", "health", "fine"]).exit_code == 0
    listed = runner.invoke(args=["plugins", "list"])
    assert "stale: last health check " in listed.output
    as_json = json.loads(runner.invoke(args=["plugins", "list", "--json"]).output)
    assert [(i["name"], i["healthy"]) for i in as_json] == [("fine", True), ("late", False)]
    metrics = app.test_client().get("/metrics").get_data(as_text=True)
    assert "plugin_health_plugins_healthy 1.0" in metrics


def test_the_openapi_document_describes_stale(client: FlaskClient) -> None:
    schema = client.get("/openapi.json").get_json()["components"]["schemas"]["PluginHealthResponse"]
    assert "stale" in schema["required"]
    assert "interval" in schema["properties"]["stale"]["description"]


# -- the host sets stale_after ------------------------------------------------------------------------------


def test_the_host_publishes_stale_after_from_interval_timeout_and_grace(tmp_path: Path) -> None:
    plugins = {"quick": "timeout = 2.5\n", "plain": "pass\n", "broken": "def start(self):\n    raise OSError\n"}
    for name, body in plugins.items():
        (tmp_path / f"{name}.py").write_text(
            "from plugin_health import Plugin\n\nclass P(Plugin):\n" + textwrap.indent(body, "    ")
        )
    app = create_app({"plugin_path": str(tmp_path), "store_url": "memory://", "health_interval": 600,
                      "default_timeout": 7})
    try:
        snapshots: dict[str, Any] = {s.name: s for s in service(app).store.snapshots()}
        quick, plain = snapshots["quick"], snapshots["plain"]
        assert quick.stale_after == quick.last_check + timedelta(seconds=600 + 2.5 + 1)
        assert plain.stale_after == plain.last_check + timedelta(seconds=600 + 7 + 1)
        assert (snapshots["broken"].state, snapshots["broken"].stale_after) == (S.FAILED, None)
    finally:
        service(app).shutdown()
