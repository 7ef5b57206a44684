"""Health results (issue 12, item 4): ``HealthResult`` (pass, warn, fail with an observed value, unit and output),
its trip from the runner to the core as JSON, how the supervisor counts it, and how the API shows it: the snapshot's
and ``PluginHealthResponse``'s fields, ``/v1/health`` in the IETF draft's shape, ``/readyz`` and the OpenAPI document.
End-to-end tests host their plugins in a real core, in runner processes."""

from __future__ import annotations

import enum
import json
import math
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

import plugin_health
from plugin_health import HealthResult, InvalidHealthResultError, PluginLifecycleState, create_app
from plugin_health.api import openapi
from plugin_health.api.health import aggregate
from plugin_health.api.schemas import AggregateHealth, PluginHealthResponse
from plugin_health.app import EXTENSION, Service
from plugin_health.cli import problem
from plugin_health.config import load_settings
from plugin_health.errors import ConfigError
from plugin_health.loader.loader import PluginLoader
from plugin_health.loader.sources import discover
from plugin_health.runtime.core import Core
from plugin_health.sandbox import PluginSandboxResult
from plugin_health.store import PluginSnapshot
from plugin_health.supervision import SupervisionSettings, Supervisor
from plugin_health.supervision.policy import HEALTH_CHECK_FAILED, check_outcome

S = PluginLifecycleState
TOKEN = "health-results-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
INVALID = "InvalidHealthResultError"
NOT_A_RESULT = "health_check returned a dict, not True, False, None or a HealthResult"

# -- HealthResult: what a plugin may return --------------------------------------------------------------------


class Level(enum.IntEnum):
    HIGH = 3


class Ratio(float):
    pass


class Text(str):
    pass


def test_the_package_root_exports_it() -> None:
    assert plugin_health.HealthResult is HealthResult
    assert {"HealthResult", "InvalidHealthResultError"} <= set(plugin_health.__all__)
    assert issubclass(InvalidHealthResultError, ValueError)


def test_a_result_keeps_what_it_was_given_as_plain_values() -> None:
    result = HealthResult(status="warn", observed_value=0.93, observed_unit="ratio", output="disk 93% full")
    assert (result.status, result.observed_value, result.observed_unit, result.output) == (
        "warn", 0.93, "ratio", "disk 93% full")
    assert HealthResult("pass") == HealthResult("pass", None, None, None)
    with pytest.raises(AttributeError):
        result.status = "pass"  # type: ignore[misc]  # frozen
    # Subclasses of str, int and float (an IntEnum, numpy's float64) become the plain types JSON carries.
    plain = HealthResult(Text("warn"), Level.HIGH, Text("level"), Text("high"))
    assert [type(v) for v in (plain.status, plain.observed_value, plain.observed_unit, plain.output)] == [
        str, int, str, str]
    assert type(HealthResult("pass", Ratio(0.5)).observed_value) is float


@pytest.mark.parametrize("value", [True, False, None, 0, -(2**53 - 1), 2**53 - 1, 1.5, -0.0, "", "x" * 256],
                         ids=["true", "false", "none", "zero", "min-int", "max-int", "float", "negative-zero",
                              "empty", "longest-string"])
def test_every_json_scalar_is_an_observed_value(value: object) -> None:
    result = HealthResult("pass", value, "unit")  # type: ignore[arg-type]
    assert result.observed_value == value
    assert type(result.observed_value) is type(value)


def test_the_longest_unit_and_output_are_allowed() -> None:
    result = HealthResult("fail", 1, "u" * 64, "o" * 2000)
    assert (len(result.observed_unit or ""), len(result.output or "")) == (64, 2000)


BAD_FIELDS: dict[str, tuple[dict[str, Any], str]] = {
    "unknown-status": ({"status": "degraded"}, "status must be 'pass', 'warn' or 'fail', not 'degraded'"),
    "capital-status": ({"status": "PASS"}, "status must be 'pass', 'warn' or 'fail', not 'PASS'"),
    "status-none": ({"status": None}, "status must be 'pass', 'warn' or 'fail', not None"),
    "status-bool": ({"status": True}, "status must be 'pass', 'warn' or 'fail', not a bool"),
    "nan": ({"status": "warn", "observed_value": math.nan}, "observed_value must be a finite number, not nan"),
    "infinity": ({"status": "warn", "observed_value": -math.inf}, "observed_value must be a finite number, not -inf"),
    "list": ({"status": "warn", "observed_value": [1, 2]},
             "observed_value must be a str, int, float, bool or None, not a list"),
    "datetime": ({"status": "warn", "observed_value": datetime(2026, 1, 1)},
                 "observed_value must be a str, int, float, bool or None, not a datetime"),
    "huge-int": ({"status": "warn", "observed_value": 2**53},
                 "observed_value must be an integer within +-(2**53 - 1)"),
    "long-value": ({"status": "warn", "observed_value": "v" * 257},
                   "observed_value is 257 characters long, at most 256"),
    "unit-number": ({"status": "warn", "observed_unit": 5}, "observed_unit must be a str or None, not an int"),
    "long-unit": ({"status": "warn", "observed_unit": "u" * 65}, "observed_unit is 65 characters long, at most 64"),
    "huge-output": ({"status": "warn", "output": "x" * 1_000_000},
                    "output is 1,000,000 characters long, at most 2,000"),
    "output-bytes": ({"status": "warn", "output": b"disk full"}, "output must be a str or None, not a bytes"),
}


@pytest.mark.parametrize(("fields", "message"), BAD_FIELDS.values(), ids=BAD_FIELDS.keys())
def test_a_bad_field_is_refused_where_it_is_made_naming_it(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidHealthResultError) as caught:
        HealthResult(**fields)
    assert str(caught.value).startswith(f"invalid HealthResult: {message}")
    assert caught.value.field == message.split()[0]


def test_the_wire_form_is_checked_again_both_ways() -> None:
    result = HealthResult("warn", 0.93, "ratio", "disk 93% full")
    wire = result.to_wire()
    assert wire == {"status": "warn", "observed_value": 0.93, "observed_unit": "ratio", "output": "disk 93% full"}
    assert HealthResult.from_wire(json.loads(json.dumps(wire))) == result
    assert HealthResult.from_wire({"status": "fail"}) == HealthResult("fail")
    object.__setattr__(result, "output", "x" * 3000)  # a frozen dataclass can still be changed
    with pytest.raises(InvalidHealthResultError, match="output is 3,000 characters long"):
        result.to_wire()


@pytest.mark.parametrize(("data", "message"), [
    ([], "invalid HealthResult: result must be a JSON object, not a list"),
    ("pass", "invalid HealthResult: result must be a JSON object, not a str"),
    ({}, "invalid HealthResult: status is missing"),
    ({"status": "pass", "secret": 1}, "invalid HealthResult: 'secret' is not a field (status, observed_value, "
                                      "observed_unit, output)"),
    ({"status": "warn", "observed_value": {"a": 1}},
     "invalid HealthResult: observed_value must be a str, int, float, bool or None, not a dict"),
], ids=["list", "string", "no-status", "unknown-member", "object-value"])
def test_the_core_refuses_a_wire_form_that_is_not_a_result(data: object, message: str) -> None:
    with pytest.raises(InvalidHealthResultError) as caught:
        HealthResult.from_wire(data)
    assert str(caught.value) == message


# -- what a health check's call amounts to (pure) ---------------------------------------------------------------

WARN = HealthResult("warn", 0.93, "ratio", "disk 93% full")
FAIL = HealthResult("fail", 0.99, "ratio", "disk 99% full")


CHANGED = "invalid HealthResult: status must be 'pass', 'warn' or 'fail', not 'fine'"


def _changed() -> HealthResult:
    result = HealthResult("warn")
    object.__setattr__(result, "status", "fine")
    return result


OUTCOMES: dict[str, tuple[PluginSandboxResult, HealthResult, bool, str | None, str | None]] = {
    "true": (PluginSandboxResult(True, True), HealthResult("pass"), True, None, None),
    "none": (PluginSandboxResult(True, None), HealthResult("pass"), True, None, None),
    "pass": (PluginSandboxResult(True, HealthResult("pass", 12, "ms")), HealthResult("pass", 12, "ms"), True,
             None, None),
    "warn": (PluginSandboxResult(True, WARN), WARN, True, None, None),
    "fail": (PluginSandboxResult(True, FAIL), FAIL, False, HEALTH_CHECK_FAILED, "disk 99% full"),
    "fail-silently": (PluginSandboxResult(True, HealthResult("fail")), HealthResult("fail"), False,
                      HEALTH_CHECK_FAILED, "health check returned status 'fail'"),
    "false": (PluginSandboxResult(True, False), HealthResult("fail", output="health check returned False"), False,
              HEALTH_CHECK_FAILED, "health check returned False"),
    "dict": (PluginSandboxResult(True, {"status": "pass"}), HealthResult("fail", output=NOT_A_RESULT), False,
             HEALTH_CHECK_FAILED, NOT_A_RESULT),
    "raised": (PluginSandboxResult(False, None, "db down", "ConnectionError"), HealthResult("fail", output="db down"),
               False, "ConnectionError", "db down"),
    "changed": (PluginSandboxResult(True, _changed()), HealthResult("fail", output=CHANGED), False, INVALID, CHANGED),
}


@pytest.mark.parametrize(("call", "found", "ok", "error_type", "error"), OUTCOMES.values(), ids=OUTCOMES.keys())
def test_what_a_check_amounts_to(call: PluginSandboxResult, found: HealthResult, ok: bool, error_type: str | None,
                                 error: str | None) -> None:
    result, outcome = check_outcome(call)
    assert result == found
    assert (outcome.ok, outcome.error_type, outcome.error) == (ok, error_type, error)


# -- the supervisor counts warn as no failure (an inline loader, a fake clock) ------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_warn_counts_no_failure_and_fail_counts_one(tmp_path: Path) -> None:
    (tmp_path / "disk.py").write_text(textwrap.dedent("""\
        from plugin_health import HealthResult, Plugin

        class Disk(Plugin):
            answers = []

            def health_check(self):
                return self.answers.pop(0)
    """))
    clock = FakeClock()
    loader = PluginLoader()
    supervisor = Supervisor(loader, SupervisionSettings(failure_threshold=2, health_interval=30.0), clock=clock,
                            jitter=lambda: 0.0)
    loader.load(discover([tmp_path], group=None))
    instance = loader.registry.get("disk").handle.instance
    instance.answers = [WARN] * 5 + [FAIL, WARN, FAIL, FAIL]
    watch = supervisor.watch("disk")
    for _ in range(5):  # five warnings in a row: degraded, never failing
        assert supervisor.check("disk") is True
        assert (loader.manager.get_state("disk"), watch.consecutive_failures, watch.last_check_ok) == (
            S.RUNNING, 0, True)
        assert watch.last_result == WARN
    assert supervisor.check("disk") is False
    assert (watch.consecutive_failures, watch.last_check_ok, watch.last_result) == (1, False, FAIL)
    assert supervisor.check("disk") is True  # a warning breaks the run of failures, as a pass does
    assert watch.consecutive_failures == 0
    supervisor.check("disk")
    assert (loader.manager.get_state("disk"), watch.consecutive_failures) == (S.RUNNING, 1)
    supervisor.check("disk")  # the second fail in a row: as False does
    assert loader.manager.get_state("disk") is S.FAILED
    last = loader.manager.last("disk")
    assert (last.reason, last.error_type, last.error) == (
        "2 consecutive failures (health check)", HEALTH_CHECK_FAILED, "disk 99% full")


# -- end to end: plugins in runner processes, their results through a real core ---------------------------------

GAUGE = '''
import math
from pathlib import Path

from plugin_health import HealthResult, Plugin, tool

MODE = Path({mode!r})


class Forged(HealthResult):
    """A result whose wire form lies: the runner sends what it says, the core checks it again."""

    def to_wire(self):
        return {{"status": "warn", "observed_value": 1, "secret": "hunter2"}}


class Gauge(Plugin):
    critical = True

    def health_check(self):
        mode = MODE.read_text().strip()
        if mode == "pass":
            return HealthResult("pass", 12, "ms", "answered in 12 ms")
        if mode == "warn":
            return HealthResult("warn", 0.93, "ratio", "disk 93% full (password=hunter2)")
        if mode == "fail":
            return HealthResult("fail", 0.99, "ratio", "disk 99% full")
        if mode == "true":
            return True
        if mode == "bad-status":
            return HealthResult("degraded")
        if mode == "nan":
            return HealthResult("warn", math.nan, "ratio")
        if mode == "huge-output":
            return HealthResult("warn", output="x" * 5000)
        if mode == "unknown-type":
            return HealthResult("warn", observed_value=[1, 2])
        if mode == "dict":
            return {{"status": "pass"}}
        if mode == "changed":
            result = HealthResult("warn")
            object.__setattr__(result, "observed_value", math.inf)
            return result
        if mode == "forged":
            return Forged("pass")
        raise RuntimeError(f"unknown mode {{mode}}")

    @tool
    def report(self):
        return HealthResult("pass")
'''


@dataclass
class Hosted:
    """An app hosting the ``gauge`` plugin (critical) in a runner, and the file that tells its check what to say."""

    app: Flask
    mode: Path

    @property
    def service(self) -> Service:
        value: Service = self.app.extensions[EXTENSION]
        return value

    @property
    def core(self) -> Core:
        assert self.service.host is not None
        return self.service.host

    def say(self, mode: str) -> None:
        """Make the next check say ``mode``, run it, and publish what waited."""
        self.mode.write_text(mode)
        self.core.supervisor.check("gauge")
        self.core.flush()

    def health(self, headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
        response = self.app.test_client().get("/v1/plugins/gauge/health", headers=headers or {})
        return response.status_code, response.get_json()


@pytest.fixture
def host(tmp_path: Path) -> Iterator[Callable[..., Hosted]]:
    made: list[Hosted] = []

    def make(mode: str, **settings: object) -> Hosted:
        directory = tmp_path / f"plugins-{len(made)}"
        directory.mkdir()
        state = tmp_path / f"mode-{len(made)}"
        state.write_text(mode)
        (directory / "gauge.py").write_text(GAUGE.format(mode=str(state)))
        (directory / "plain.py").write_text("from plugin_health import Plugin\n\nclass Plain(Plugin):\n    pass\n")
        config = {"plugin_path": str(directory), "store_url": "memory://", "admin_token": TOKEN,
                  "health_interval": 3600, "max_restarts": 0, "failure_threshold": 2, **settings}
        hosted = Hosted(create_app(config), state)
        assert hosted.core.runners.runners(), "the plugins run in runner processes"
        made.append(hosted)
        return hosted

    yield make
    for hosted in made:
        hosted.service.shutdown()


PASSING = {
    "pass": ("pass", 12, "ms", "answered in 12 ms", False),
    "warn": ("warn", 0.93, "ratio", "disk 93% full (password=hunter2)", True),
    "true": ("pass", None, None, None, False),
}


@pytest.mark.parametrize(("mode", "expected"), PASSING.items(), ids=PASSING.keys())
def test_a_passing_or_warning_result_crosses_to_the_api(
    host: Callable[..., Hosted], mode: str, expected: tuple[str, Any, Any, Any, bool]
) -> None:
    hosted = host(mode)
    hosted.say(mode)  # the second check: a warning counts no failure either
    status, body = hosted.health(AUTH)
    check_status, value, unit, output, degraded = expected
    assert status == 200
    assert (body["state"], body["healthy"], body["degraded"], body["consecutive_failures"]) == (
        "RUNNING", True, degraded, 0)
    assert (body["check_status"], body["observed_value"], body["observed_unit"], body["check_output"]) == (
        check_status, value, unit, output)
    assert type(body["observed_value"]) is type(value)
    assert PluginHealthResponse().validate(body) == {}
    snapshot = hosted.core.snapshot("gauge")
    assert (snapshot.check_status, snapshot.observed_value, snapshot.observed_unit, snapshot.check_output,
            snapshot.degraded, snapshot.last_check_ok) == (check_status, value, unit, output, degraded, True)


FAILING = {
    "fail": ("disk 99% full", HEALTH_CHECK_FAILED, (0.99, "ratio")),
    "bad-status": ("invalid HealthResult: status must be 'pass', 'warn' or 'fail', not 'degraded'", INVALID, None),
    "nan": ("invalid HealthResult: observed_value must be a finite number, not nan", INVALID, None),
    "huge-output": ("invalid HealthResult: output is 5,000 characters long, at most 2,000", INVALID, None),
    "unknown-type": ("invalid HealthResult: observed_value must be a str, int, float, bool or None, not a list",
                     INVALID, None),
    "dict": (NOT_A_RESULT, HEALTH_CHECK_FAILED, None),
    # Changed after it was made: the runner checks it again as it encodes it.
    "changed": ("invalid HealthResult: observed_value must be a finite number, not inf", INVALID, None),
    # A wire form that lies (a subclass's to_wire): only the core's own check of what a runner sent catches it.
    "forged": ("invalid HealthResult: 'secret' is not a field (status, observed_value, observed_unit, output)",
               INVALID, None),
}


@pytest.mark.parametrize(("mode", "expected"), FAILING.items(), ids=FAILING.keys())
def test_a_failing_or_malformed_result_fails_the_check_naming_what_is_wrong(
    host: Callable[..., Hosted], mode: str, expected: tuple[str, str, tuple[Any, Any] | None]
) -> None:
    error, error_type, observed = expected
    hosted = host(mode)  # the first check ran at start: one failure of the threshold's two
    status, body = hosted.health(AUTH)
    assert status == 503
    assert (body["state"], body["healthy"], body["degraded"], body["consecutive_failures"]) == (
        "RUNNING", False, False, 1)
    assert (body["check_status"], body["check_output"]) == ("fail", error)
    assert (body["observed_value"], body["observed_unit"]) == (observed or (None, None))
    assert hosted.app.test_client().get("/readyz").status_code == 503  # gauge is critical
    hosted.say(mode)  # the second failure in a row
    status, body = hosted.health(AUTH)
    assert (status, body["state"], body["reason"], body["error_type"], body["error"]) == (
        503, "FAILED", "2 consecutive failures (health check)", error_type, error)


def test_a_tool_cannot_return_a_health_result(host: Callable[..., Hosted]) -> None:
    """Only a health check's result is read as a HealthResult: a tool's result must be JSON."""
    response = host("pass").app.test_client().post("/v1/plugins/gauge/tools/report", json={}, headers=AUTH)
    assert response.status_code == 502
    body = response.get_json()
    assert body["error_type"] == "UnserializableResultError"
    assert body["error"] == "the result of 'report' cannot be sent as JSON: a HealthResult is not a JSON value"


def test_the_output_follows_the_details_policy_and_the_measurement_does_not(host: Callable[..., Hosted]) -> None:
    hosted = host("warn")
    client = hosted.app.test_client()
    anonymous = client.get("/v1/plugins/gauge/health").get_json()
    assert (anonymous["check_output"], anonymous["observed_value"], anonymous["observed_unit"]) == (
        None, 0.93, "ratio")
    for route in ("/v1/plugins/", "/v1/plugins/gauge/health", "/v1/health", "/v1/cluster"):
        assert "hunter2" not in client.get(route).get_data(as_text=True), route
    assert client.get("/v1/plugins/gauge/health", headers=AUTH).get_json()["check_output"] == (
        "disk 93% full (password=hunter2)")
    never = host("warn", show_details="never").app.test_client()
    assert never.get("/v1/plugins/gauge/health", headers=AUTH).get_json()["check_output"] is None


def test_a_critical_plugin_that_warns_stays_ready_and_one_that_fails_does_not(host: Callable[..., Hosted]) -> None:
    hosted = host("warn")
    client = hosted.app.test_client()
    ready = client.get("/readyz?verbose")
    assert (ready.status_code, ready.get_data(as_text=True)) == (
        200, "[+]loading ok\n[+]plugin/gauge ok\nreadyz check passed\n")
    health = client.get("/v1/health")
    assert (health.status_code, health.get_json()["status"]) == (200, "warn")
    assert health.get_json()["checks"]["gauge:health"][0]["status"] == "warn"  # critical, yet only degraded

    hosted.say("fail")
    ready = client.get("/readyz?verbose")
    assert (ready.status_code, ready.get_data(as_text=True)) == (
        503, "[+]loading ok\n[-]plugin/gauge failed: last health check failed\nreadyz check failed\n")
    health = client.get("/v1/health")
    assert (health.status_code, health.get_json()["status"]) == (503, "fail")
    assert health.get_json()["checks"]["gauge:health"][0]["status"] == "fail"

    hosted.say("warn")  # back to degraded: ready again, the failure count reset
    assert client.get("/readyz").status_code == 200
    assert client.get("/v1/health").get_json()["status"] == "warn"
    assert hosted.health()[1]["consecutive_failures"] == 0

    hosted.say("pass")
    assert (client.get("/v1/health").get_json()["status"], client.get("/readyz").status_code) == ("pass", 200)


# -- /v1/health in the IETF draft's shape ---------------------------------------------------------------------


def test_the_aggregate_document_has_the_drafts_shape(host: Callable[..., Hosted]) -> None:
    hosted = host("warn", release_id="2026.03-1a2b3c")
    client = hosted.app.test_client()
    response = client.get("/v1/health", headers=AUTH)
    assert (response.status_code, response.mimetype) == (200, "application/health+json")
    document = response.get_json()
    assert AggregateHealth().validate(document) == {}
    assert set(document) == {"status", "version", "releaseId", "serviceId", "description", "notes", "checks"}
    assert (document["status"], document["version"], document["releaseId"], document["serviceId"]) == (
        "warn", metadata.version("plugin-health"), "2026.03-1a2b3c", "plugin-health")
    assert document["notes"] == []
    assert set(document["checks"]) == {"gauge:health", "plain:health"}
    snapshot = hosted.core.snapshot("gauge")
    assert snapshot.last_check is not None
    assert document["checks"]["gauge:health"] == [{
        "componentId": "gauge", "componentType": "component", "status": "warn", "observedValue": 0.93,
        "observedUnit": "ratio", "time": snapshot.last_check.isoformat(),
        "output": "last health check warned: disk 93% full (password=hunter2)",
    }]
    plain = document["checks"]["plain:health"][0]
    assert (plain["status"], plain["observedValue"], plain["observedUnit"], "output" in plain) == (
        "pass", None, None, False)  # a pass says nothing more (the draft: output is for warn and fail)
    anonymous = client.get("/v1/health").get_json()["checks"]["gauge:health"][0]
    assert anonymous["output"] == "last health check warned"


def test_a_checks_time_is_when_it_was_observed_not_the_transition(host: Callable[..., Hosted]) -> None:
    hosted = host("pass")
    client = hosted.app.test_client()
    first = client.get("/v1/health").get_json()["checks"]["gauge:health"][0]
    since = hosted.core.snapshot("gauge").since
    time.sleep(0.01)
    hosted.say("warn")
    check = client.get("/v1/health").get_json()["checks"]["gauge:health"][0]
    last_check = hosted.core.snapshot("gauge").last_check
    assert last_check is not None
    assert last_check > since
    assert check["time"] == last_check.isoformat() != first["time"]
    assert (check["observedValue"], check["observedUnit"]) == (0.93, "ratio")
    assert hosted.core.snapshot("gauge").since == since  # no transition: only the reading moved on


def test_a_change_of_status_is_published_at_once(host: Callable[..., Hosted]) -> None:
    """Only the time and the reading of a check that says what the last one said can wait for the next write (about
    a second); a plugin that starts or stops warning changes the aggregate status, so it is written at once."""
    hosted = host("pass")
    client = hosted.app.test_client()
    for mode, status in (("warn", "warn"), ("pass", "pass")):
        hosted.mode.write_text(mode)
        hosted.core.supervisor.check("gauge")  # no flush
        assert client.get("/v1/health").get_json()["status"] == status


def test_the_release_id_is_the_version_unless_set(host: Callable[..., Hosted]) -> None:
    document = host("pass").app.test_client().get("/v1/health").get_json()
    assert document["releaseId"] == document["version"] == metadata.version("plugin-health")


@pytest.mark.parametrize("value", ["x" * 101, "line\nbreak"], ids=["too-long", "newline"])
def test_a_release_id_that_cannot_be_shown_stops_the_service(value: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(environ={"PLUGIN_HEALTH_RELEASE_ID": value})
    assert caught.value.variable == "PLUGIN_HEALTH_RELEASE_ID"
    assert "at most 100 printable characters" in str(caught.value)
    assert load_settings(environ={"PLUGIN_HEALTH_RELEASE_ID": " 2026.03-1a2b3c "}).release_id == "2026.03-1a2b3c"


def test_a_plugin_that_never_ran_a_check_has_the_time_of_its_state() -> None:
    since = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    failed = PluginSnapshot("db", S.FAILED, since, reason="start failed", error_type="OSError", error="secret",
                            critical=True)
    document = aggregate([failed], loaded=True, visible=False)
    assert document["checks"]["db:health"] == [{
        "componentId": "db", "componentType": "component", "status": "fail", "observedValue": None,
        "observedUnit": None, "time": since.isoformat(), "output": "FAILED: start failed: OSError"}]
    shown = aggregate([failed], loaded=True, visible=True)["checks"]["db:health"][0]["output"]
    assert shown == "FAILED: start failed: OSError: secret"


# -- the snapshot: stored, read back, and old rows ------------------------------------------------------------


@pytest.mark.parametrize("value", [0.93, 12, True, "primary", None], ids=["float", "int", "bool", "str", "none"])
def test_a_snapshot_keeps_what_the_check_observed(value: object) -> None:
    now = datetime.now(UTC)
    snapshot = PluginSnapshot("disk", S.RUNNING, now, last_check=now, last_check_ok=True, check_status="warn",
                              observed_value=value, observed_unit="ratio", check_output="disk 93% full")  # type: ignore[arg-type]
    back = PluginSnapshot.from_json(snapshot.to_json())
    assert back == snapshot
    assert type(back.observed_value) is type(value)
    assert (back.degraded, back.healthy) == (True, True)


def test_rows_written_before_health_results_are_still_read() -> None:
    now = datetime.now(UTC)
    for ok, status in ((True, "pass"), (False, "fail"), (None, None)):
        row = json.loads(PluginSnapshot("db", S.RUNNING, now, last_check_ok=ok).to_json())
        for key in ("check_status", "observed_value", "observed_unit", "check_output"):
            del row[key]
        old = PluginSnapshot.from_json(json.dumps(row))
        assert (old.check_status, old.observed_value, old.observed_unit, old.check_output, old.degraded) == (
            status, None, None, None, False)


def test_the_cli_check_names_a_failing_results_output() -> None:
    snapshot = PluginSnapshot("gauge", S.RUNNING, datetime.now(UTC), last_check_ok=False, check_status="fail")
    assert problem(snapshot, PluginSandboxResult(True, FAIL)) == "gauge: RUNNING (health check failed) disk 99% full"
    assert problem(snapshot, PluginSandboxResult(True, {"status": "pass"})) == (
        f"gauge: RUNNING (health check failed) {NOT_A_RESULT}")


# -- the OpenAPI document --------------------------------------------------------------------------------------


def test_the_openapi_document_describes_the_new_fields() -> None:
    schemas = openapi.document()["components"]["schemas"]
    plugin = schemas["PluginHealthResponse"]
    fields = {"check_status", "observed_value", "observed_unit", "check_output", "degraded"}
    assert fields <= set(plugin["required"])
    properties = plugin["properties"]
    assert properties["check_status"]["enum"] == ["pass", "warn", "fail", None]
    assert properties["check_status"]["nullable"] is True
    assert properties["degraded"]["type"] == "boolean"
    assert {branch["type"] for branch in properties["observed_value"]["anyOf"]} == {"string", "number", "boolean"}
    assert all(branch["nullable"] for branch in properties["observed_value"]["anyOf"])
    assert (properties["observed_unit"]["nullable"], properties["check_output"]["nullable"]) == (True, True)
    aggregate = schemas["AggregateHealth"]
    assert {"status", "version", "releaseId", "serviceId", "description", "checks"} <= set(aggregate["required"])
    check = schemas["HealthCheck"]["properties"]
    assert {"componentId", "componentType", "status", "observedValue", "observedUnit", "time", "output"} == set(check)
    assert {branch["type"] for branch in check["observedValue"]["anyOf"]} == {"string", "number", "boolean"}

