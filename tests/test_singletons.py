"""Singletons on a real Redis: one instance runs each, another takes over when the owner goes, never both."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from redis_server import RedisServer
from singleton_runs import STUBBORN_STOP, assert_disjoint, intervals, janitor_source
from tcp_proxy import TcpProxy
from waiting import wait_for

from plugin_health import create_app
from plugin_health.app import EXTENSION
from plugin_health.errors import InvalidPluginError
from plugin_health.lifecycle import PluginLifecycleState
from plugin_health.loader.registry import PluginSpec

LEASE = 1.0
S = PluginLifecycleState


@pytest.fixture
def plugins(tmp_path: Path) -> Path:
    directory = tmp_path / "plugins"
    directory.mkdir()
    runs = tmp_path / "runs.log"
    sick = tmp_path / "sick.flag"
    (directory / "janitor.py").write_text(janitor_source(runs, sick))
    (directory / "plain.py").write_text("from plugin_health import Plugin\n\nclass Plain(Plugin):\n    pass\n")
    return directory


@pytest.fixture
def instances(request: pytest.FixtureRequest, redis_url: str, plugins: Path, tmp_path: Path) -> Iterator[list[Flask]]:
    """Two instances hosting the plugins; ``@pytest.mark.settings(...)`` overrides settings of both."""
    marker = request.node.get_closest_marker("settings")
    made = []

    def config(n: int) -> dict[str, object]:
        return {"store_url": redis_url, "plugin_path": str(plugins), "run_dir": str(tmp_path / f"run{n}"),
                "instance": f"i{n}", "singleton_lease": LEASE, "host_mode": "embedded", "health_interval": 0.2,
                "failure_threshold": 1, "max_restarts": 100, "backoff_base": 0.2, "backoff_max": 0.2,
                **(marker.kwargs if marker else {})}

    for n in (1, 2):
        made.append(create_app(config(n)))
    yield made
    for app in made:
        app.extensions[EXTENSION].shutdown()


def state(app: Flask, name: str) -> S:
    return app.extensions[EXTENSION].host.manager.state_of(name)


def test_a_singleton_must_be_true_or_false() -> None:
    with pytest.raises(InvalidPluginError, match="singleton"):
        PluginSpec.from_mapping({"name": "x", "singleton": "yes"}, "x")
    assert PluginSpec.from_mapping({"name": "x", "singleton": True}, "x").singleton


def test_one_instance_runs_it_and_another_takes_over(instances: list[Flask], tmp_path: Path) -> None:
    first, second = instances
    wait_for(lambda: {state(first, "janitor"), state(second, "janitor")} == {S.RUNNING, S.UNAVAILABLE}, timeout=5)
    owner, standby = (first, second) if state(first, "janitor") is S.RUNNING else (second, first)
    owner_id = owner.extensions[EXTENSION].instance
    assert state(owner, "plain") is state(standby, "plain") is S.RUNNING  # everything else runs everywhere
    waiting = standby.extensions[EXTENSION].host.manager.last("janitor")
    owner_id = owner.extensions[EXTENSION].instance
    assert waiting.reason == f"standby: runs on instance {owner_id}"
    assert standby.extensions[EXTENSION].host.snapshot("janitor").owner == owner_id
    # It runs in a runner of its own, whatever it declared.
    assert owner.extensions[EXTENSION].host.snapshot("janitor").isolation == "process"
    started = time.monotonic()
    owner.extensions[EXTENSION].shutdown()  # stops it, gives the lease back: the other takes it at its next poll
    wait_for(lambda: state(standby, "janitor") is S.RUNNING, timeout=LEASE + 2)
    assert time.monotonic() - started < LEASE + 1
    history = standby.extensions[EXTENSION].host.manager.history("janitor")
    assert [r.dest for r in history][-3:] == [S.LOADED, S.INITIALIZED, S.RUNNING]
    # Its history, read on any instance, says where it ran and when it moved.
    moves = standby.test_client().get("/v1/plugins/janitor/history").get_json()
    where = [(m["instance"], m["to"]) for m in moves if m["to"] in ("RUNNING", "UNAVAILABLE")]
    standby_id = standby.extensions[EXTENSION].instance
    assert where[-2:] == [(owner_id, "UNAVAILABLE"), (standby_id, "RUNNING")]  # it stopped there, then ran here
    assert (owner_id, "RUNNING") in where[:-2]
    assert (standby_id, "UNAVAILABLE") in where[:-2]
    assert moves[-3]["reason"].startswith(f"took its lease on instance {standby_id} (fencing token ")
    wait_for(lambda: len(intervals(tmp_path / "runs.log")) == 2, timeout=2)  # the new run's first tick
    assert len(assert_disjoint(tmp_path / "runs.log")) == 2  # never both


def test_elsewhere_it_shows_as_its_owner_runs_it_and_only_the_owner_answers_for_it(
    instances: list[Flask], tmp_path: Path
) -> None:
    first, second = instances
    wait_for(lambda: {state(first, "janitor"), state(second, "janitor")} == {S.RUNNING, S.UNAVAILABLE}, timeout=5)
    owner, standby = (first, second) if state(first, "janitor") is S.RUNNING else (second, first)
    owner_id = owner.extensions[EXTENSION].instance
    shown = standby.test_client().get("/v1/plugins/janitor/health")
    wait_for(lambda: standby.test_client().get("/v1/plugins/janitor/health").get_json()["state"] == "RUNNING",
             timeout=3)
    shown = standby.test_client().get("/v1/plugins/janitor/health").get_json()
    assert (shown["state"], shown["owner"], shown["standby"], shown["singleton"]) == ("RUNNING", owner_id, True, True)
    assert state(standby, "janitor") is S.UNAVAILABLE  # its own lifecycle says standby all along
    (tmp_path / "sick.flag").touch()  # the critical singleton fails on its owner
    wait_for(lambda: owner.test_client().get("/readyz").status_code == 503, timeout=3)
    wait_for(lambda: standby.test_client().get("/v1/plugins/janitor/health").get_json()["state"] == "FAILED",
             timeout=3)
    ready = standby.test_client().get("/readyz?verbose")
    assert ready.status_code == 200, ready.get_data(as_text=True)  # the owner answers for it, not every instance
    check = standby.test_client().get("/v1/health").get_json()["checks"]["janitor:health"][0]
    assert check["status"] == "pass"
    assert check["output"].startswith(f"standby here, runs on instance {owner_id}")


def test_an_owner_cut_off_from_redis_kills_a_singleton_that_will_not_stop_before_its_lease_ends(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """The owner loses Redis (a partition) while its singleton's ``stop`` swallows the alarm and spins: its runner
    is killed before the lease can pass, so the other instance's run never overlaps it."""
    runs, lease = tmp_path / "runs.log", 2.0
    directory = tmp_path / "plugins"
    directory.mkdir()
    source = janitor_source(runs, tmp_path / "never", stop=STUBBORN_STOP)
    (directory / "janitor.py").write_text(source)
    prefix = f"?prefix=stubborn-{tmp_path.name}"
    proxy = TcpProxy(redis_server.port).start()
    made: list[Flask] = []
    try:
        for n, port in ((1, proxy.port), (2, redis_server.port)):  # the first, behind the proxy, owns it
            made.append(create_app({
                "store_url": f"redis://127.0.0.1:{port}/0{prefix}", "plugin_path": str(directory),
                "run_dir": str(tmp_path / f"run{n}"), "instance": f"i{n}", "singleton_lease": lease,
                "host_mode": "embedded", "health_interval": 0.2, "default_timeout": 3}))  # more than the lease leaves
        first, second = made
        wait_for(lambda: state(first, "janitor") is S.RUNNING and len(intervals(runs)) == 1, timeout=5)
        proxy.cut()
        cut = time.monotonic()
        wait_for(lambda: state(second, "janitor") is S.RUNNING, timeout=lease + 3)
        assert time.monotonic() - cut < lease + 1.0
        wait_for(lambda: len(intervals(runs)) == 2, timeout=2)
        time.sleep(0.3)
        assert len(assert_disjoint(runs)) == 2
        assert state(first, "janitor") is not S.RUNNING
    finally:
        proxy.close()
        for app in made:
            app.extensions[EXTENSION].shutdown()


@pytest.mark.settings(max_restarts=0)
def test_an_owner_that_gave_up_on_its_singleton_lets_another_instance_run_it(
    instances: list[Flask], tmp_path: Path
) -> None:
    first, second = instances
    wait_for(lambda: {state(first, "janitor"), state(second, "janitor")} == {S.RUNNING, S.UNAVAILABLE}, timeout=5)
    owner, standby = (first, second) if state(first, "janitor") is S.RUNNING else (second, first)
    (tmp_path / "sick.flag").touch()  # it fails its check; no restarts allowed (max_restarts 0): it gives up
    wait_for(lambda: state(owner, "janitor") is S.FAILED, timeout=3)

    def taken_over() -> bool:
        history = standby.extensions[EXTENSION].host.manager.history("janitor")
        return any((r.reason or "").startswith("took its lease") for r in history)

    wait_for(taken_over, timeout=LEASE + 2)  # the lease was given back, not held by a plugin that will not run
    scrape = owner.test_client().get("/metrics").get_data(as_text=True)
    assert 'plugin_health_plugins{state="FAILED"} 1.0' in scrape
