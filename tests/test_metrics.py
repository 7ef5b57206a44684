"""``GET /metrics``: plugins per state from the store, transitions, sandbox calls and HTTP requests counted."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector
from waiting import wait_for

from plugin_health import create_app, metrics
from plugin_health.app import EXTENSION
from plugin_health.lifecycle import PluginLifecycleState
from plugin_health.runtime.host_process import HostProcess
from plugin_health.store import PluginSnapshot
from plugin_health.store.memory import MemoryStore
from plugin_health.supervision import RESTART_LIMIT_REACHED

TOKEN = "metrics-token"


@pytest.fixture
def app(tmp_path: Path) -> Iterator[Flask]:
    plugins = {
        "alpha": "@tool\ndef ping(self):\n    return 'pong'\n@tool\ndef boom(self):\n    raise KeyError('x')\n",
        "beta": "requires = ('gone',)\n",
        "gamma": "def start(self):\n    raise OSError('port taken')\n",
    }
    write_plugins(tmp_path, plugins)
    app = create_app({"plugin_path": str(tmp_path), "store_url": "memory://", "health_interval": 3600,
                      "max_restarts": 0, "admin_token": TOKEN})
    yield app
    app.extensions[EXTENSION].shutdown()


def write_plugins(directory: Path, plugins: dict[str, str]) -> None:
    """One plugin module per entry: the body of its class."""
    for name, body in plugins.items():
        (directory / f"{name}.py").write_text(
            "from plugin_health import Plugin, tool\n\nclass P(Plugin):\n" + textwrap.indent(body, "    "))


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one sample of the exposition ``text`` (0 when absent)."""
    for line in text.splitlines():
        match = re.fullmatch(r"([a-z_]+)(?:\{(.*)\})? (\S+)", line)
        if match is None or match.group(1) != name:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2) or ""))
        if found == labels:
            return float(match.group(3))
    return 0.0


def delta(before: str, after: str, name: str, **labels: str) -> float:
    """How much one sample grew between two scrapes (counters are shared by every app of this process)."""
    return sample(after, name, **labels) - sample(before, name, **labels)


def scrape(client: FlaskClient) -> str:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.mimetype == "text/plain"
    return response.get_data(as_text=True)


def test_plugins_per_state_come_from_the_store(client: FlaskClient) -> None:
    text = scrape(client)
    states = {s: sample(text, "plugin_health_plugins", state=s)
              for s in ("LOADED", "INITIALIZED", "RUNNING", "FAILED", "UNAVAILABLE")}
    assert states == {"LOADED": 0, "INITIALIZED": 0, "RUNNING": 1, "FAILED": 1, "UNAVAILABLE": 1}
    assert sample(text, "plugin_health_plugins_healthy") == 1
    assert sample(text, "plugin_health_host_up") == 1


def test_transitions_are_counted(client: FlaskClient) -> None:
    text = scrape(client)
    assert sample(text, "plugin_health_transitions_total", from_state="INITIALIZED", to_state="FAILED",
                  trigger="fail") >= 1
    assert sample(text, "plugin_health_transitions_total", from_state="", to_state="LOADED", trigger="load") >= 3


def test_sandbox_calls_are_counted_by_call_and_outcome_and_failed_ones_by_plugin(client: FlaskClient) -> None:
    before = scrape(client)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    for _ in range(3):
        assert client.post("/v1/plugins/alpha/tools/ping", headers=auth).status_code == 200
    assert client.post("/v1/plugins/alpha/tools/boom", headers=auth).status_code == 502
    after = scrape(client)
    calls, failed = "plugin_health_sandbox_calls_total", "plugin_health_plugin_failed_calls_total"
    assert delta(before, after, calls, call="tool", outcome="ok") == 3
    assert delta(before, after, calls, call="tool", outcome="error") == 1
    assert sample(after, calls, call="start", outcome="error") >= 1
    assert delta(before, after, failed, plugin="alpha") == 1
    assert sample(after, failed, plugin="gamma") >= 1
    assert sample(after, "plugin_health_sandbox_call_duration_seconds_count", isolation="inline", call="tool") >= 4


def test_call_series_are_bounded_by_plugins_not_by_their_methods(client: FlaskClient) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    assert client.post("/v1/plugins/alpha/tools/boom", headers=auth).status_code == 502
    text = scrape(client)
    # No series names a tool; every (call, outcome) has one from the start, so a first timeout is an increase.
    assert {(s["call"], s["outcome"]) for s in series(text, "plugin_health_sandbox_calls_total")} == {
        (call, outcome) for call in ("initialize", "start", "stop", "health_check", "tool")
        for outcome in ("ok", "error", "timeout", "memory", "crash")}
    # One series per plugin that failed a call (the counters are this process's: other tests' plugins too), none
    # for one whose calls all succeeded.
    failed = "plugin_health_plugin_failed_calls_total"
    failing = [s["plugin"] for s in series(text, failed)]
    assert {"alpha", "gamma"} <= set(failing)
    assert len(failing) == len(set(failing))
    assert sample(text, failed, plugin="alpha") >= 1


def test_a_plugin_whose_calls_succeed_has_no_series(tmp_path: Path) -> None:
    write_plugins(tmp_path, {"fine_and_dandy": "@tool\ndef ping(self):\n    return 'pong'\n"})
    app = create_app({"plugin_path": str(tmp_path), "store_url": "memory://", "health_interval": 3600,
                      "admin_token": TOKEN})
    try:
        client = app.test_client()
        assert client.post("/v1/plugins/fine_and_dandy/tools/ping",
                           headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
        assert series(scrape(client), "plugin_health_plugin_failed_calls_total", plugin="fine_and_dandy") == []
    finally:
        app.extensions[EXTENSION].shutdown()


def test_http_requests_are_counted_by_route_and_status(client: FlaskClient) -> None:
    before = scrape(client)
    client.get("/v1/plugins/alpha/health")
    client.get("/v1/plugins/beta/health")
    client.get("/no/such/page")
    after = scrape(client)
    requests = "plugin_health_http_requests_total"
    assert delta(before, after, requests, method="GET", route="/v1/plugins/<name>/health", status="200") == 1
    assert delta(before, after, requests, method="GET", route="/v1/plugins/<name>/health", status="503") == 1
    assert delta(before, after, requests, method="GET", route="<unmatched>", status="404") == 1


def series(text: str, name: str, **labels: str) -> list[dict[str, str]]:
    """The label sets of every sample of ``name`` whose labels include ``labels``."""
    found = []
    for line in text.splitlines():
        match = re.fullmatch(r"([a-z_]+)(?:\{(.*)\})? (\S+)", line)
        if match is not None and match.group(1) == name:
            sample_labels = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2) or ""))
            if labels.items() <= sample_labels.items():
                found.append(sample_labels)
    return found


NOW = datetime(2030, 1, 1, tzinfo=UTC)
SECOND = timedelta(seconds=1)


def snapshot(state: str, **fields: object) -> PluginSnapshot:
    return PluginSnapshot("p", PluginLifecycleState(state), NOW - 60 * SECOND, **fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("plugin", "expected"),
    [
        (snapshot("RUNNING"), None),
        (snapshot("RUNNING", last_check_ok=True, stale_after=NOW + SECOND), None),
        (snapshot("RUNNING", last_check_ok=True, stale_after=NOW), "stale"),
        (snapshot("RUNNING", last_check_ok=False, stale_after=NOW + SECOND), "check_failed"),
        (snapshot("RUNNING", last_check_ok=False, stale_after=NOW - SECOND), "stale"),
        (snapshot("FAILED", reason="start failed", error_type="OSError"), "failed"),
        (snapshot("FAILED", reason="restart limit reached", error_type="OSError"), "restart_limit_reached"),
        (snapshot("UNAVAILABLE", reason="dependency_missing: geo is not installed"), "dependency_missing"),
        (snapshot("UNAVAILABLE", reason="dependency_unavailable: geo"), "dependency_unavailable"),
        (snapshot("UNAVAILABLE", reason="disabled"), "disabled"),
        (snapshot("UNAVAILABLE", reason="stopped"), "stopped"),
        (snapshot("UNAVAILABLE", reason="gone fishing: all day"), "unavailable"),
        (snapshot("UNAVAILABLE"), "unavailable"),
        (snapshot("LOADED"), "starting"),
        (snapshot("INITIALIZED"), "starting"),
        (snapshot("UNAVAILABLE", reason="standby: runs on instance i2", standby=True), None),
        (snapshot("RUNNING", standby=True, owner="i2", stale_after=NOW - SECOND), None),
    ],
    ids=["running", "running-checked", "stale", "check-failed", "stale-and-failed", "failed", "gave-up",
         "dependency-missing", "dependency-unavailable", "disabled", "stopped", "other-reason", "no-reason",
         "loaded", "initialized", "standby", "standby-owner-stale"],
)
def test_what_is_wrong_with_a_plugin_is_a_short_code(plugin: PluginSnapshot, expected: str | None) -> None:
    assert metrics.problem(plugin, NOW) == expected


def test_the_reason_of_a_plugin_that_gave_up_is_the_supervisors() -> None:
    assert metrics.RESTART_LIMIT_REACHED == RESTART_LIMIT_REACHED


def test_each_unhealthy_plugin_has_one_series_naming_its_problem(client: FlaskClient) -> None:
    text = scrape(client)
    unhealthy = "plugin_health_plugin_unhealthy"
    assert series(text, unhealthy) == [
        {"plugin": "beta", "state": "UNAVAILABLE", "critical": "false", "problem": "dependency_missing"},
        {"plugin": "gamma", "state": "FAILED", "critical": "false", "problem": "failed"},
    ]
    assert sample(text, unhealthy, plugin="gamma", state="FAILED", critical="false", problem="failed") == 1


@pytest.mark.slow
def test_a_plugin_that_gave_up_shows_the_restart_limit(tmp_path: Path) -> None:
    write_plugins(tmp_path, {"stubborn": "critical = True\ndef start(self):\n    raise OSError('port taken')\n"})
    app = create_app({"plugin_path": str(tmp_path), "store_url": "memory://", "health_interval": 3600,
                      "max_restarts": 1, "backoff_base": 0.05, "backoff_max": 0.05})
    try:
        client = app.test_client()
        wait_for(lambda: series(scrape(client), "plugin_health_plugin_unhealthy", plugin="stubborn") == [
            {"plugin": "stubborn", "state": "FAILED", "critical": "true", "problem": "restart_limit_reached"}],
            timeout=10)
    finally:
        app.extensions[EXTENSION].shutdown()


@pytest.mark.slow
def test_runners_lost_are_counted_by_cause(tmp_path: Path) -> None:
    write_plugins(tmp_path, {
        "crashy": "isolation = 'process'\n@tool\ndef crash(self):\n    import os\n    os._exit(9)\n",
        "stuck": "isolation = 'process'\ntimeout = 0.3\n@tool\ndef spin(self):\n    import signal\n"
                 "    signal.setitimer(signal.ITIMER_REAL, 0)\n    while True:\n        pass\n",
    })
    app = create_app({"plugin_path": str(tmp_path), "store_url": "memory://", "health_interval": 3600,
                      "max_restarts": 0, "admin_token": TOKEN})
    try:
        client = app.test_client()
        before, lost = scrape(client), "plugin_health_runners_lost_total"
        # Every cause has its series before the first loss, so that Prometheus sees the first one as an increase.
        assert {s["cause"] for s in series(before, lost)} == {"crash", "timeout", "memory"}
        auth = {"Authorization": f"Bearer {TOKEN}"}
        assert client.post("/v1/plugins/crashy/tools/crash", headers=auth).status_code == 502
        assert client.post("/v1/plugins/stuck/tools/spin", headers=auth).status_code == 504
        after = scrape(client)
        assert delta(before, after, lost, cause="crash") == 1
        assert delta(before, after, lost, cause="timeout") == 1
        assert delta(before, after, lost, cause="memory") == 0
    finally:
        app.extensions[EXTENSION].shutdown()


def host_starts(directory: Path) -> float:
    """``plugin_health_host_starts_total`` summed over the processes that counted into ``directory``."""
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(directory))
    return registry.get_sample_value("plugin_health_host_starts_total") or 0.0


@pytest.mark.slow
def test_every_start_of_a_core_process_is_counted(tmp_path: Path) -> None:
    plugins, counts = tmp_path / "plugins", tmp_path / "metrics"
    plugins.mkdir()
    counts.mkdir()
    write_plugins(plugins, {"alpha": "pass\n"})
    env = {**os.environ, "PLUGIN_HEALTH_PLUGIN_PATH": str(plugins), "PLUGIN_HEALTH_RUN_DIR": str(tmp_path / "run"),
           "PLUGIN_HEALTH_HEALTH_INTERVAL": "3600", "PROMETHEUS_MULTIPROC_DIR": str(counts)}
    host = HostProcess(env)
    host.start()
    try:
        first = host.pid
        assert first is not None
        wait_for(lambda: host_starts(counts) == 1)
        os.kill(first, signal.SIGKILL)  # the master starts another: a restart, counted across both processes
        wait_for(lambda: host.pid != first and host_starts(counts) == 2)
    finally:
        host.stop()
    assert host_starts(counts) == 2


class StubService:
    """What the collector reads of a service: its store, and whether a host lives."""

    def __init__(self) -> None:
        self.store = MemoryStore()

    def host_problem(self) -> None:
        return None


def gauges(collector: metrics.StoreCollector) -> dict[str, list[tuple[dict[str, str], float]]]:
    """The collector's samples by name."""
    found: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in collector.collect():
        for sample in family.samples:
            found.setdefault(sample.name, []).append((sample.labels, sample.value))
    return found


def test_the_gauges_are_worked_out_again_when_the_store_moves_or_a_plugin_turns_stale() -> None:
    service = StubService()
    now = datetime.now(UTC)
    running = PluginSnapshot("p", PluginLifecycleState.RUNNING, now, last_check=now, last_check_ok=True,
                             stale_after=now + timedelta(seconds=0.3))
    service.store.put(running)
    reads: list[int] = []
    snapshots = service.store.snapshots
    service.store.snapshots = lambda: reads.append(1) or snapshots()  # type: ignore[method-assign]
    collector = metrics.StoreCollector(service)  # type: ignore[arg-type]
    assert gauges(collector)["plugin_health_plugins_healthy"] == [({}, 1)]
    assert gauges(collector)["plugin_health_plugins_healthy"] == [({}, 1)]
    assert len(reads) == 1  # the same version, and nothing turned stale: not read again
    wait_for(lambda: gauges(collector)["plugin_health_plugins_healthy"] == [({}, 0)], timeout=5)
    assert gauges(collector)["plugin_health_plugin_unhealthy"] == [
        ({"plugin": "p", "state": "RUNNING", "critical": "false", "problem": "stale"}, 1)]
    service.store.put(PluginSnapshot("p", PluginLifecycleState.FAILED, now, reason="x"))  # the version moves
    assert gauges(collector)["plugin_health_plugin_unhealthy"] == [
        ({"plugin": "p", "state": "FAILED", "critical": "false", "problem": "failed"}, 1)]
    assert ({"state": "FAILED"}, 1) in gauges(collector)["plugin_health_plugins"]


def test_observing_many_amounts_at_once_counts_what_observing_each_counts() -> None:
    """``observe_many`` (how the core adds up a batch of call durations) leaves a histogram exactly as ``observe`` of
    each amount would: the same bucket counts and count, the same sum (but for rounding)."""
    from prometheus_client import CollectorRegistry, Histogram

    amounts = [0.0, 0.0, 0.00005, 0.0001, 0.00011, 0.003, 0.05, 0.7, 2.0, 29.9, 30.0, 31.0, 1e9, -1.0, float("nan")]
    registry = CollectorRegistry()
    buckets = metrics.CALL_SECONDS._upper_bounds[:-1]
    one, many = (Histogram(name, "test", ["call"], buckets=buckets, registry=registry) for name in ("one", "many"))
    for amount in amounts:
        one.labels("start").observe(amount)
    metrics.observe_many(many.labels("start"), amounts)
    metrics.observe_many(many.labels("start"), [])

    def samples(name: str) -> dict[tuple[str, str], float]:
        return {(sample.name.removeprefix(name), sample.labels.get("le", "")): sample.value
                for metric in registry.collect() if metric.name == name for sample in metric.samples
                if not sample.name.endswith("_created")}

    expected, got = samples("one"), samples("many")
    sums = expected.pop(("_sum", "")), got.pop(("_sum", ""))
    assert got == expected
    assert all(value != value for value in sums)  # a NaN makes the sum NaN either way
    one_finite, many_finite = (Histogram(name, "test", buckets=buckets, registry=registry) for name in ("c", "d"))
    for amount in amounts[:-1]:
        one_finite.observe(amount)
    metrics.observe_many(many_finite, amounts[:-1])
    assert samples("d")[("_sum", "")] == pytest.approx(samples("c")[("_sum", "")])


def test_a_counts_file_still_being_made_is_read_as_empty(client: FlaskClient, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """prometheus_client makes a process's counts file empty and sizes it next (``MmapedDict``): a scrape in that
    moment reads no header and raises (the known cause of a 500 seen once in a full ``python -m bench``, Dec 03),
    and a process killed in it leaves the empty file for good (prometheus/client_python#1199). An empty file holds
    no count: it is read as none, and every other process's counts are still served."""
    counts = tmp_path / "counts"
    counts.mkdir()
    script = ("from prometheus_client import Counter\n"
              "Counter('plugin_health_test_made', 'a count of another process').inc(3)\n")
    subprocess.run([sys.executable, "-c", script], env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(counts)},
                   check=True, timeout=60)
    (counts / "counter_424242.db").touch()  # a process between making its file and sizing it, or killed there
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(counts))
    text = scrape(client)
    assert sample(text, "plugin_health_test_made_total") == 3.0
