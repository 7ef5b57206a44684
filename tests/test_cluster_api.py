"""``GET /v1/cluster`` and operator actions with ``?instance=``: one instance alone, and a cluster of test doubles."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from plugin_health.api import cluster as cluster_api
from plugin_health.api.schemas import ClusterDocument, MultiInstanceResult
from plugin_health.app import EXTENSION, Service
from plugin_health.coordination.control import HostTimeoutError, HostUnavailableError
from plugin_health.errors import IllegalTransitionError, PluginError, UnknownInstanceError
from plugin_health.lifecycle import PluginLifecycleState, TransitionRecord
from plugin_health.runtime.core import LOADED_KEY
from plugin_health.store import PluginSnapshot
from plugin_health.store.cluster import InstanceInfo
from tests.test_api import PLUGINS, TOKEN, assert_problem, build, write_plugins

AUTH = {"Authorization": f"Bearer {TOKEN}"}
RUNNING, FAILED = PluginLifecycleState.RUNNING, PluginLifecycleState.FAILED
CLUSTER_FIELDS = {"instance", "degraded", "plugins", "instances"}
INSTANCE_FIELDS = {"id", "self", "pid", "started", "heartbeat", "age", "gone", "status", "ready", "plugins"}
PLUGIN_FIELDS = {"state", "healthy", "stale", "critical", "reason", "error_type", "since", "last_check",
                 "owner", "standby", "check_status", "degraded"}


@pytest.fixture
def app(tmp_path: Path) -> Iterator[Flask]:
    write_plugins(tmp_path, PLUGINS)
    app = build(tmp_path, backoff_base=3600, backoff_max=3600)  # broken is not retried: the store stays still
    yield app
    app.extensions[EXTENSION].shutdown()


def service_of(app: Flask) -> Service:
    value: Service = app.extensions[EXTENSION]
    return value


# -- one instance: a memory store -------------------------------------------------------------------------------


def test_one_instance_alone_is_this_one_with_its_plugins(app: Flask, client: FlaskClient) -> None:
    response = client.get("/v1/cluster")
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    assert response.headers["ETag"]
    document = response.get_json()
    assert set(document) == CLUSTER_FIELDS
    assert ClusterDocument().validate(document) == {}
    me = service_of(app).instance
    assert (document["instance"], document["degraded"], document["plugins"]) == (
        me, None, ["broken", "core", "disk", "needy", "sick", "user"])
    [instance] = document["instances"]
    assert set(instance) == INSTANCE_FIELDS
    assert (instance["id"], instance["self"], instance["gone"]) == (me, True, False)
    # Judged as this instance judges itself: /v1/health (warn: sick, broken and needy are not critical, disk is
    # degraded), /readyz.
    assert client.get("/v1/health").get_json()["status"] == instance["status"] == "warn"
    assert client.get("/readyz").status_code == 200
    assert instance["ready"] is True
    plugins = instance["plugins"]
    assert list(plugins) == document["plugins"]
    assert all(set(p) == PLUGIN_FIELDS for p in plugins.values())
    listed = {p["name"]: p for p in client.get("/v1/plugins/").get_json()}
    for name, plugin in plugins.items():
        assert {k: listed[name][k] for k in PLUGIN_FIELDS} == plugin, name
    core = plugins["core"]
    assert (core["state"], core["healthy"], core["critical"]) == ("RUNNING", True, True)
    assert (plugins["sick"]["state"], plugins["sick"]["healthy"]) == ("RUNNING", False)
    assert (plugins["broken"]["reason"], plugins["broken"]["error_type"]) == ("initialize failed", "RuntimeError")


@pytest.mark.parametrize("headers", [{}, AUTH], ids=["anonymous", "operator"])
def test_no_error_message_is_in_the_view(client: FlaskClient, headers: dict[str, str]) -> None:
    response = client.get("/v1/cluster", headers=headers)
    assert "hunter2" not in response.get_data(as_text=True)
    assert "error" not in response.get_json()["instances"][0]["plugins"]["broken"]


def test_this_instance_by_its_id_and_all_are_the_whole_view(app: Flask, client: FlaskClient) -> None:
    def timeless(document: dict[str, Any]) -> list[dict[str, Any]]:  # a heartbeat moves on between two answers
        return [{k: v for k, v in i.items() if k not in ("heartbeat", "age")} for i in document["instances"]]

    whole = client.get("/v1/cluster").get_json()
    for query in (service_of(app).instance, "all"):
        narrowed = client.get("/v1/cluster", query_string={"instance": query}).get_json()
        assert timeless(narrowed) == timeless(whole), query
        assert narrowed["plugins"] == whole["plugins"]


# -- three instances and one that never beat: a test double of the cluster view ---------------------------------


def snapshot(name: str, state: PluginLifecycleState = RUNNING, **fields: Any) -> PluginSnapshot:
    """A healthy RUNNING plugin unless told otherwise: in its state for 5 minutes, checked a second ago, stale in a
    minute."""
    now = datetime.now(UTC)
    defaults: dict[str, Any] = {"since": now - timedelta(minutes=5), "last_check": now - timedelta(seconds=1),
                                "last_check_ok": True, "stale_after": now + timedelta(minutes=1)}
    if state is not RUNNING:
        defaults = {"since": now - timedelta(minutes=5)}
    return PluginSnapshot(name, state, **{**defaults, **fields})


@dataclass
class FakeCluster:
    """A ClusterView of fixed instances: a-1 (this one), b-2 (gone), c-3 (a critical plugin FAILED), d-4 (never
    beat, only its plugins are known)."""

    instance: str = "a-1"
    infos: list[InstanceInfo] = field(default_factory=list)
    plugins: dict[str, list[PluginSnapshot]] = field(default_factory=dict)
    why_degraded: str | None = None

    def instances(self) -> list[InstanceInfo]:
        return sorted(self.infos, key=lambda info: info.id)

    def grid(self) -> dict[str, list[PluginSnapshot]]:
        return {instance: list(snapshots) for instance, snapshots in self.plugins.items()}

    def history_of(self, instance: str, name: str) -> list[TransitionRecord]:
        return []

    def degraded(self) -> str | None:
        return self.why_degraded

    def close(self) -> None:
        pass


def fake_cluster() -> FakeCluster:
    beat, now = time.time(), datetime.now(UTC)
    return FakeCluster(
        infos=[
            InstanceInfo("c-3", 303, beat - 600, beat),
            InstanceInfo("a-1", 101, beat - 900, beat),
            InstanceInfo("b-2", 202, beat - 900, beat - 60),
        ],
        plugins={
            "a-1": [snapshot("core", critical=True),
                    # Not critical, and its last check is long overdue: stale, so a-1 warns and stays ready.
                    snapshot("sick", last_check=now - timedelta(seconds=40), stale_after=now - timedelta(seconds=5))],
            "b-2": [snapshot("core", critical=True), snapshot("sick")],
            "c-3": [snapshot("core", FAILED, critical=True, reason="start failed", error_type="SecretNamedError",
                             error="password=hunter2"),
                    snapshot("extra")],
            "d-4": [snapshot("core", critical=True)],
        },
    )


@pytest.fixture
def fake(app: Flask) -> FakeCluster:
    view = fake_cluster()
    service_of(app).cluster = view
    return view


def by_id(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {instance["id"]: instance for instance in document["instances"]}


def test_every_instance_with_its_status_readiness_and_heartbeat(client: FlaskClient, fake: FakeCluster) -> None:
    response = client.get("/v1/cluster")
    assert response.status_code == 200
    document = response.get_json()
    assert ClusterDocument().validate(document) == {}
    assert (document["instance"], document["degraded"]) == ("a-1", None)
    assert document["plugins"] == ["core", "extra", "sick"]  # the union, sorted
    assert [i["id"] for i in document["instances"]] == ["a-1", "b-2", "c-3", "d-4"]  # ordered by id
    judged = {i["id"]: (i["self"], i["gone"], i["status"], i["ready"]) for i in document["instances"]}
    assert judged == {
        "a-1": (True, False, "warn", True),  # a non-critical plugin is stale
        "b-2": (False, True, "fail", False),  # silent for 60 s: gone, though its plugins were healthy
        "c-3": (False, False, "fail", False),  # its critical plugin FAILED
        "d-4": (False, True, "fail", False),  # never beat
    }
    instances = by_id(document)
    assert [instances[i]["pid"] for i in ("a-1", "b-2", "c-3", "d-4")] == [101, 202, 303, None]
    assert instances["b-2"]["age"] == pytest.approx(60.0, abs=0.3)
    assert instances["a-1"]["age"] == pytest.approx(0.0, abs=0.3)
    assert (instances["d-4"]["age"], instances["d-4"]["heartbeat"], instances["d-4"]["started"]) == (None, None, None)
    beat = datetime.fromisoformat(instances["b-2"]["heartbeat"])
    assert beat.utcoffset() == timedelta(0)
    assert abs(beat.timestamp() - (time.time() - 60)) < 1
    started = datetime.fromisoformat(instances["c-3"]["started"])
    assert abs(started.timestamp() - (time.time() - 600)) < 1


def test_each_plugin_on_each_instance(client: FlaskClient, fake: FakeCluster) -> None:
    instances = by_id(client.get("/v1/cluster").get_json())
    assert sorted(instances["c-3"]["plugins"]) == ["core", "extra"]
    assert sorted(instances["a-1"]["plugins"]) == ["core", "sick"]
    sick = instances["a-1"]["plugins"]["sick"]
    assert (sick["state"], sick["healthy"], sick["stale"], sick["critical"]) == ("RUNNING", False, True, False)
    assert sick["reason"] == "stale: last health check 40 s ago"
    core = instances["c-3"]["plugins"]["core"]
    assert (core["state"], core["healthy"], core["stale"], core["critical"], core["reason"]) == (
        "FAILED", False, False, True, "start failed")
    assert abs(datetime.fromisoformat(core["since"]).timestamp() - (time.time() - 300)) < 1
    assert core["last_check"] is None
    assert instances["b-2"]["plugins"]["core"]["healthy"] is True  # the plugin as last known; the instance is gone


@pytest.mark.parametrize(("headers", "error_type"), [({}, "PluginDefinedError"), (AUTH, "SecretNamedError")],
                         ids=["anonymous", "operator"])
def test_error_types_follow_the_details_policy_and_messages_never_show(
    client: FlaskClient, fake: FakeCluster, headers: dict[str, str], error_type: str
) -> None:
    response = client.get("/v1/cluster", headers=headers)
    core = by_id(response.get_json())["c-3"]["plugins"]["core"]
    assert core["error_type"] == error_type
    assert "error" not in core
    assert "hunter2" not in response.get_data(as_text=True)


def test_this_instance_is_judged_as_its_own_health_and_readiness_judge_it(
    app: Flask, client: FlaskClient, fake: FakeCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its store, its loading and its host count for this instance (a-1), as in its /v1/health and /readyz."""
    fake.plugins["a-1"].pop()  # only its healthy critical plugin is left
    service = service_of(app)

    def judged() -> tuple[bool, str, bool]:
        a1 = by_id(client.get("/v1/cluster").get_json())["a-1"]
        return a1["gone"], a1["status"], a1["ready"]

    assert judged() == (False, "pass", True)
    monkeypatch.setattr(service.store, "degraded", lambda: "Redis does not answer")
    monkeypatch.setattr(service.store, "version", lambda: -1)  # each change: an answer built afresh
    assert judged() == (False, "warn", True)  # the last known states: a warning, still ready
    service.store.set_meta(LOADED_KEY, "")
    monkeypatch.setattr(service.store, "version", lambda: -2)
    assert judged() == (False, "warn", False)  # still loading
    monkeypatch.setattr(service, "host_problem", lambda: "the plugin host (pid 9) is gone")
    monkeypatch.setattr(service.store, "version", lambda: -3)
    assert judged() == (True, "fail", False)


def test_a_degraded_view_says_why(client: FlaskClient, fake: FakeCluster) -> None:
    fake.why_degraded = "Redis does not answer: these are the last known states"
    assert client.get("/v1/cluster").get_json()["degraded"] == fake.why_degraded


@pytest.mark.parametrize("instance", ["b-2", "c-3", "d-4"])
def test_instance_narrows_the_view_to_one(client: FlaskClient, fake: FakeCluster, instance: str) -> None:
    whole = by_id(client.get("/v1/cluster").get_json())
    document = client.get(f"/v1/cluster?instance={instance}").get_json()
    assert [i["id"] for i in document["instances"]] == [instance]
    assert document["instances"][0] == whole[instance]
    assert document["plugins"] == sorted(whole[instance]["plugins"])


def test_an_unknown_instance_is_404(client: FlaskClient, fake: FakeCluster) -> None:
    body = assert_problem(client.get("/v1/cluster?instance=z-9"), 404, "'z-9'")
    assert body["type"].endswith("/unknown-instance")


@pytest.mark.parametrize("instance", ["", "a b", "x" * 101, "a/b", "caf\u00e9", "a\n"])
def test_an_invalid_instance_is_400(client: FlaskClient, fake: FakeCluster, instance: str) -> None:
    body = assert_problem(client.get("/v1/cluster", query_string={"instance": instance}), 400, "instance id")
    assert body["type"].endswith("/invalid-instance")


def test_a_change_on_another_instance_shows_within_a_second(client: FlaskClient, fake: FakeCluster) -> None:
    fake.plugins["a-1"].pop()  # no stale plugin, whose stated age would expire the answer each second anyway
    assert by_id(client.get("/v1/cluster").get_json())["c-3"]["status"] == "fail"
    fake.plugins["c-3"][0] = snapshot("core", critical=True)  # no write to this instance's store
    changed = time.monotonic()
    while by_id(client.get("/v1/cluster").get_json())["c-3"]["status"] != "pass":
        assert time.monotonic() - changed < 1.0, "the change did not show within a second"
        time.sleep(0.05)


def test_a_held_answer_is_304_while_it_lasts(
    client: FlaskClient, fake: FakeCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cluster_api, "LIFETIME", 60.0)
    etag = client.get("/v1/cluster").headers["ETag"]
    again = client.get("/v1/cluster", headers={"If-None-Match": etag})
    assert (again.status_code, again.get_data()) == (304, b"")
    other = client.get("/v1/cluster?instance=c-3", headers={"If-None-Match": etag})
    assert other.status_code == 200


# -- operator actions on other instances ---------------------------------------------------------------------------


@dataclass
class FakeControl:
    """One instance's control: answers each action with the plugin RUNNING, or raises ``error``."""

    instance: str
    calls: list[tuple[str, str, str]]
    error: PluginError | None = None

    def _act(self, action: str, name: str) -> PluginSnapshot:
        self.calls.append((self.instance, action, name))
        if self.error is not None:
            raise self.error
        return snapshot(name, critical=True, error="password=hunter2", error_type="SecretNamedError",
                        reason=f"{action} on {self.instance}")

    def restart(self, name: str) -> PluginSnapshot:
        return self._act("restart", name)

    def disable(self, name: str) -> PluginSnapshot:
        return self._act("disable", name)

    def enable(self, name: str) -> PluginSnapshot:
        return self._act("enable", name)


@dataclass
class Controls:
    """``Service.control_for`` of the fake cluster: a-1 and c-3 answer, any other id is unknown."""

    errors: dict[str, PluginError] = field(default_factory=dict)
    calls: list[tuple[str, str, str]] = field(default_factory=list)
    asked: list[str | None] = field(default_factory=list)

    def __call__(self, instance: str | None) -> FakeControl:
        self.asked.append(instance)
        if instance not in ("a-1", "c-3"):
            raise UnknownInstanceError(str(instance))
        return FakeControl(instance, self.calls, self.errors.get(instance))


@pytest.fixture
def controls(app: Flask, fake: FakeCluster, monkeypatch: pytest.MonkeyPatch) -> Controls:
    double = Controls()
    monkeypatch.setattr(service_of(app), "control_for", double)
    return double


@pytest.mark.parametrize("action", ["restart", "disable", "enable"])
def test_all_acts_on_every_live_instance(client: FlaskClient, controls: Controls, action: str) -> None:
    response = client.post(f"/v1/plugins/core/{action}?instance=all", headers=AUTH)
    assert response.status_code == 200
    body = response.get_json()
    assert MultiInstanceResult().validate(body) == {}
    assert controls.calls == [("a-1", action, "core"), ("c-3", action, "core")]  # b-2 and d-4 are gone
    assert [(r["instance"], r["status"], r["plugin"]["name"], r["plugin"]["reason"]) for r in body["results"]] == [
        ("a-1", 200, "core", f"{action} on a-1"), ("c-3", 200, "core", f"{action} on c-3")]
    assert all("problem" not in r for r in body["results"])
    assert body["results"][0]["plugin"]["error"] == "password=hunter2"  # the operator may see details


@pytest.mark.parametrize(("error", "status", "slug"), [
    (IllegalTransitionError("core", "RUNNING", "enable", ("fail", "make_unavailable")), 409, "illegal-transition"),
    (HostUnavailableError("redis cannot carry the request"), 503, "host-unavailable"),
    (HostTimeoutError("no answer within 20 s"), 504, "host-timeout"),
    (UnknownInstanceError("c-3"), 404, "unknown-instance"),
], ids=["illegal", "unavailable", "late", "left"])
def test_all_is_207_when_an_instance_fails_and_gives_its_problem(
    client: FlaskClient, controls: Controls, error: PluginError, status: int, slug: str
) -> None:
    controls.errors["c-3"] = error
    response = client.post("/v1/plugins/core/enable?instance=all", headers=AUTH)
    assert response.status_code == 207
    body = response.get_json()
    assert MultiInstanceResult().validate(body) == {}
    ok, failed = body["results"]
    assert (ok["instance"], ok["status"], ok["plugin"]["state"]) == ("a-1", 200, "RUNNING")
    assert (failed["instance"], failed["status"]) == ("c-3", status)
    assert "plugin" not in failed
    problem = failed["problem"]
    assert (problem["type"], problem["status"], problem["detail"]) == (
        f"https://plugin-health.dev/problems/{slug}", status, str(error))
    if isinstance(error, IllegalTransitionError):
        assert (problem["state"], problem["attempted"], problem["allowed"]) == (
            "RUNNING", "enable", ["fail", "make_unavailable"])


def test_all_with_no_live_instance_is_503(client: FlaskClient, controls: Controls, fake: FakeCluster) -> None:
    fake.infos = [InstanceInfo(i.id, i.pid, i.started, i.beat, stopped=True) for i in fake.infos]
    assert_problem(client.post("/v1/plugins/core/restart?instance=all", headers=AUTH), 503, "no live instance")
    assert controls.calls == []


def test_an_action_on_one_instance_goes_to_it(client: FlaskClient, controls: Controls) -> None:
    response = client.post("/v1/plugins/core/disable?instance=c-3", headers=AUTH)
    assert response.status_code == 200
    plugin = response.get_json()
    assert (plugin["name"], plugin["reason"]) == ("core", "disable on c-3")
    assert (controls.asked, controls.calls) == (["c-3"], [("c-3", "disable", "core")])


def test_an_action_on_an_unknown_instance_is_404(client: FlaskClient, controls: Controls) -> None:
    body = assert_problem(client.post("/v1/plugins/core/restart?instance=z-9", headers=AUTH), 404, "'z-9'")
    assert body["type"].endswith("/unknown-instance")
    assert controls.calls == []


def test_the_service_knows_no_other_instance_over_a_memory_store(client: FlaskClient) -> None:
    body = assert_problem(client.post("/v1/plugins/core/restart?instance=ghost", headers=AUTH), 404, "'ghost'")
    assert body["type"].endswith("/unknown-instance")


@pytest.mark.parametrize("instance", ["", "a b", "x" * 101, "a/b"])
def test_an_invalid_instance_changes_nothing(client: FlaskClient, controls: Controls, instance: str) -> None:
    response = client.post("/v1/plugins/core/restart", query_string={"instance": instance}, headers=AUTH)
    assert assert_problem(response, 400, "instance id")["type"].endswith("/invalid-instance")
    assert (controls.asked, controls.calls) == ([], [])


@pytest.mark.parametrize("query", ["instance=all", "instance=c-3", "instance=a%20b"])
def test_the_token_is_checked_before_anything(client: FlaskClient, controls: Controls, query: str) -> None:
    assert_problem(client.post(f"/v1/plugins/core/restart?{query}"), 401)
    assert_problem(client.post(f"/v1/plugins/core/restart?{query}", headers={"Authorization": "Bearer nope"}), 401)
    assert (controls.asked, controls.calls) == ([], [])


def test_no_configured_token_refuses_every_instance(tmp_path: Path) -> None:
    write_plugins(tmp_path, {"core": ""})
    app = build(tmp_path, admin_token="")
    try:
        app.extensions[EXTENSION].cluster = fake_cluster()
        response = app.test_client().post("/v1/plugins/core/restart?instance=all", headers=AUTH)
        assert assert_problem(response, 403)["type"].endswith("/operator-actions-disabled")
    finally:
        app.extensions[EXTENSION].shutdown()


def test_without_instance_this_instance_acts_as_before(
    client: FlaskClient, controls: Controls, app: Flask
) -> None:
    response = client.post("/v1/plugins/sick/disable", headers=AUTH)
    assert response.status_code == 200
    assert (response.get_json()["state"], response.get_json()["reason"]) == ("UNAVAILABLE", "disabled")
    assert (controls.asked, controls.calls) == ([], [])
    store = service_of(app).store.snapshot("sick")
    assert store is not None
    assert store.state is PluginLifecycleState.UNAVAILABLE


# -- what a worker keeps between builds ---------------------------------------------------------------------------


def test_a_plugin_turns_stale_in_the_document_though_its_snapshot_stands_still() -> None:
    """Each instance's plugins are judged once and kept while their snapshots stand still, but only until the
    judgement stops being true: the same snapshots, later, are stale."""
    now = datetime.now(UTC)
    # Its heartbeat holds for the whole test (the horizons are up to 31 s ahead): only the staleness moves.
    view = FakeCluster(infos=[InstanceInfo("a-1", 101, now.timestamp() - 60, now.timestamp() + 40)],
                       plugins={"a-1": [snapshot("late", last_check=now, stale_after=now + timedelta(seconds=30))]})
    own = cluster_api.Own(None, True, None)

    def late(at: datetime) -> dict[str, Any]:
        body = cluster_api.cluster_body(view, own, True, None, cluster_api.Horizon(at))
        instance: dict[str, Any] = json.loads(body)["instances"][0]
        document = cluster_api.cluster_document(view, own, True, None, cluster_api.Horizon(at))
        assert instance["plugins"] == document["instances"][0]["plugins"]
        return instance

    assert late(now)["plugins"]["late"]["stale"] is False
    assert late(now + timedelta(seconds=10))["plugins"]["late"]["stale"] is False
    assert late(now + timedelta(seconds=31))["plugins"]["late"]["stale"] is True


def test_a_heartbeat_moves_the_document_on_while_its_plugins_stand_still(
    client: FlaskClient, fake: FakeCluster
) -> None:
    first = client.get("/v1/cluster")
    fake.infos = [dataclasses.replace(info, beat=info.beat + 1) if info.id == "a-1" else info for info in fake.infos]
    time.sleep(cluster_api.LIFETIME + 0.1)
    second = client.get("/v1/cluster")
    assert second.headers["ETag"] != first.headers["ETag"]
    beats = [{i["id"]: i["heartbeat"] for i in answer.get_json()["instances"]} for answer in (first, second)]
    assert beats[0]["a-1"] != beats[1]["a-1"]
    assert beats[0]["c-3"] == beats[1]["c-3"]
    plugins = [[i["plugins"] for i in answer.get_json()["instances"]] for answer in (first, second)]
    assert plugins[0] == plugins[1]
    fake.plugins["c-3"] = [snapshot("core", critical=True), snapshot("extra")]  # c-3's core is back
    time.sleep(cluster_api.LIFETIME + 0.1)
    third = {i["id"]: i for i in client.get("/v1/cluster").get_json()["instances"]}
    assert (third["c-3"]["status"], third["c-3"]["plugins"]["core"]["state"]) == ("pass", "RUNNING")
