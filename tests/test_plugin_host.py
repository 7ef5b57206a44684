"""plugin_health.testing: plugins hosted for a test as the service hosts them, and assertions that say why they fail."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from waiting import wait_for

from plugin_health import IllegalTransitionError, PluginLifecycleManager, UnknownPluginError
from plugin_health.config import EXAMPLES
from plugin_health.errors import ConfigError, PluginNotRunningError, ToolArgumentsError, UnknownToolError
from plugin_health.testing import (
    PluginHostFactory,
    assert_history,
    assert_illegal,
    assert_states,
    drive_to,
    oracle,
    run_host_state_machine,
    start_host,
    wait_for_state,
)

GEO = """
    from plugin_health import Plugin

    class Geo(Plugin):
        version = "2.1"
"""

WEATHER = """
    import os
    from plugin_health import Plugin, tool

    class Weather(Plugin):
        name = "weather"
        requires = ("geo>=2.0",)

        def initialize(self, context):
            self.units = context.config.get("units", "metric")

        @tool
        def forecast(self, city: str) -> dict:
            return {"city": city, "units": self.units}

        @tool
        def pid(self) -> int:
            return os.getpid()
"""


def sick_while(flag: Path) -> str:
    """A plugin ``sick`` whose health check fails while ``flag`` exists."""
    return f"""
        from pathlib import Path
        from plugin_health import Plugin

        class Sick(Plugin):
            name = "sick"

            def health_check(self):
                return not Path({str(flag)!r}).exists()
    """


def alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie does not)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rpartition(")")[2].split()[0] != "Z"
    except FileNotFoundError:
        return False


# -- hosting ----------------------------------------------------------------------------------------------------


def test_plugins_run_in_a_runner_with_their_config(plugin_host: PluginHostFactory) -> None:
    host = plugin_host({"geo": GEO, "weather": WEATHER}, config={"weather": {"units": "imperial"}})
    assert host.states == {"geo": "RUNNING", "weather": "RUNNING"}
    result = host.call_tool("weather", "forecast", city="Oslo")
    assert (result.ok, result.result) == (True, {"city": "Oslo", "units": "imperial"})
    pid = host.call_tool("weather", "pid").result
    assert isinstance(pid, int)
    assert pid != os.getpid()  # in a runner process, as in the service
    assert host.health("weather").isolation == "inline"
    with pytest.raises(UnknownToolError):
        host.call_tool("weather", "nowcast")
    with pytest.raises(ToolArgumentsError):
        host.call_tool("weather", "forecast", "Oslo", "Bergen")
    with pytest.raises(UnknownPluginError):
        host.state("ghost")


def test_a_source_is_named_after_its_plugin(plugin_host: PluginHostFactory) -> None:
    host = plugin_host(WEATHER)
    assert host.states == {"weather": "UNAVAILABLE"}  # geo is not there
    assert host.health("weather").reason == "dependency_missing: geo is not installed"
    assert (host.plugin_dirs[0] / "weather.py").is_file()
    assert plugin_host(GEO).states == {"plugin": "RUNNING"}  # no literal name: the module's


def test_the_bundled_examples_as_the_service_hosts_them(plugin_host: PluginHostFactory) -> None:
    host = plugin_host(EXAMPLES)
    assert_states(host, {"database": "RUNNING", "cache": "RUNNING", "clock": "RUNNING", "billing": "FAILED",
                         "weather": "UNAVAILABLE"})
    billing = host.health("billing")
    assert (billing.reason, billing.error_type) == ("initialize failed", "RuntimeError")
    assert plugin_host(EXAMPLES / "clock.py").states == {"clock": "RUNNING"}  # a file is hosted alone


def test_package_plugins_from_a_mapping(plugin_host: PluginHostFactory) -> None:
    host = plugin_host({
        "geo/__init__.py": "from plugin_health import Plugin\nfrom .data import VERSION\n\n"
                           "class Geo(Plugin):\n    version = VERSION\n",
        "geo/data.py": "VERSION = '2.5'\n",
        "weather": WEATHER,
    })
    assert_states(host, {"geo": "RUNNING", "weather": "RUNNING"})
    assert host.health("geo").version == "2.5"


def test_check_now_judges_as_the_supervisor_does(plugin_host: PluginHostFactory, tmp_path: Path) -> None:
    flag = tmp_path / "sick"
    host = plugin_host(sick_while(flag))
    assert host.check_now("sick").healthy
    flag.touch()
    first = host.check_now("sick")
    assert (first.state, first.healthy, first.consecutive_failures) == ("RUNNING", False, 1)
    host.check_now("sick")
    failed = host.check_now("sick")
    assert (failed.state, failed.reason) == ("FAILED", "3 consecutive failures (health check)")
    with pytest.raises(PluginNotRunningError, match="plugin 'sick' is FAILED, not RUNNING"):
        host.check_now("sick")
    flag.unlink()
    assert host.restart("sick").state == "RUNNING"
    assert_history(host, "sick", [("RUNNING", "FAILED", "3 consecutive failures (health check)"),
                                  ("FAILED", "LOADED"), ("LOADED", "INITIALIZED"), ("INITIALIZED", "RUNNING")],
                   tail=True)


def test_background_supervision_with_overridden_settings(plugin_host: PluginHostFactory, tmp_path: Path) -> None:
    flag = tmp_path / "sick"
    flag.touch()
    host = plugin_host(sick_while(flag), health_interval=0.05, max_restarts=5, backoff_base=0.05, backoff_max=0.1)
    record = wait_for_state(host, "sick", "FAILED", timeout=10)
    assert record.reason == "3 consecutive failures (health check)"
    flag.unlink()
    wait_for_state(host, "sick", "RUNNING", timeout=10)  # restarted by the supervisor, after its backoff
    assert host.health("sick").restarts >= 1


def test_operator_actions(plugin_host: PluginHostFactory) -> None:
    host = plugin_host({"geo": GEO, "weather": WEATHER})
    assert host.disable("geo").reason == "disabled"
    assert_states(host, {"geo": "UNAVAILABLE", "weather": "UNAVAILABLE"})
    error = assert_illegal(host, "weather", "disable")
    assert (error.state, error.attempted, error.allowed) == ("UNAVAILABLE", "make_unavailable", ("reset",))
    assert host.enable("geo").state == "RUNNING"
    assert_states(host, {"weather": "RUNNING"})  # brought back by the cascade
    assert_illegal(host, "geo", "enable")
    assert host.restart("geo").restarts == 2


@pytest.mark.parametrize(
    ("settings", "error", "fragment"),
    [
        ({"health_interval": -1}, ConfigError, "health_interval=-1 is invalid: expected a positive number"),
        ({"helth_interval": 1}, ConfigError, "helth_interval=1 is invalid: expected a known setting"),
        ({"store_url": "redis://localhost"}, TypeError, "cannot include store_url: the host sets them itself"),
        ({"PLUGIN_HEALTH_PLUGIN_PATH": "/"}, TypeError, "cannot include plugin_path"),
    ],
    ids=["bad-value", "unknown", "store", "path"],
)
def test_settings_are_validated(plugin_host: PluginHostFactory, settings: dict[str, object],
                                error: type[Exception], fragment: str) -> None:
    with pytest.raises(error, match=fragment.replace("(", r"\(")):
        plugin_host(GEO, **settings)


def test_what_is_hosted_is_checked(plugin_host: PluginHostFactory, tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="a str is a plugin's source"):
        plugin_host(str(EXAMPLES))
    with pytest.raises(ConfigError, match="does not exist"):
        plugin_host(tmp_path / "missing")
    with pytest.raises(ValueError, match="must be a name or a relative path"):
        plugin_host({"../escape": GEO})


def test_closing_stops_the_runners_and_removes_what_it_wrote() -> None:
    with start_host({"geo": GEO, "weather": WEATHER}) as host:
        pid = host.call_tool("weather", "pid").result
        directory = host.plugin_dirs[0]
        assert alive(pid)
        assert directory.is_dir()
    assert host.states == {"geo": "UNAVAILABLE", "weather": "UNAVAILABLE"}  # stopped, dependents first
    assert host.history("weather")[-1].reason == "stopped"
    wait_for(lambda: not alive(pid), timeout=5)
    assert not directory.exists()
    host.close()  # twice is fine


# -- the assertions -------------------------------------------------------------------------------------------------


def test_assert_states_names_what_each_plugin_did(lifecycle_manager: PluginLifecycleManager) -> None:
    lifecycle_manager.set_state("weather", "LOADED")
    lifecycle_manager.trigger("weather", "fail", reason="initialize failed", error_type="RuntimeError",
                              error="no API key")
    assert_states(lifecycle_manager, {"weather": "FAILED"})
    with pytest.raises(AssertionError) as caught:
        assert_states(lifecycle_manager, {"weather": "RUNNING", "geo": "RUNNING"})
    assert str(caught.value) == (
        "plugin states differ from the expected ones:\n"
        "  weather: FAILED, expected RUNNING (initialize failed; RuntimeError: no API key)\n"
        "  geo: not hosted, expected RUNNING (hosted: weather)"
    )
    with pytest.raises(ValueError, match="'RUNING' is not a lifecycle state"):
        assert_states(lifecycle_manager, {"weather": "RUNING"})


def test_assert_history(lifecycle_manager: PluginLifecycleManager) -> None:
    drive_to(lifecycle_manager, "p", "RUNNING")
    lifecycle_manager.trigger("p", "make_unavailable", reason="disabled")
    assert_history(lifecycle_manager, "p", [("LOADED", "INITIALIZED"), ("INITIALIZED", "RUNNING"),
                                            ("RUNNING", "UNAVAILABLE", "disabled")])
    assert_history(lifecycle_manager, "p", [(None, "LOADED"), ("LOADED", "INITIALIZED"),
                                            ("INITIALIZED", "RUNNING"), ("RUNNING", "UNAVAILABLE")])
    assert_history(lifecycle_manager, "p", [("RUNNING", "UNAVAILABLE", "disabled")], tail=True)
    with pytest.raises(AssertionError) as caught:
        assert_history(lifecycle_manager, "p", [("RUNNING", "UNAVAILABLE", "stopped")], tail=True)
    assert str(caught.value) == (
        "the newest moves of plugin 'p' differ from the expected ones\n"
        "  expected:\n    RUNNING -> UNAVAILABLE  (stopped)\n"
        "  actual:\n    RUNNING -> UNAVAILABLE  (disabled)"
    )
    with pytest.raises(AssertionError, match=r"actual:\n    \(entered\) -> LOADED\n    LOADED -> INITIALIZED"):
        assert_history(lifecycle_manager, "p", [(None, "LOADED")])
    with pytest.raises(ValueError, match="a move is"):
        assert_history(lifecycle_manager, "p", [("LOADED",)])  # type: ignore[list-item]


def test_assert_illegal_passes_only_when_refused_and_nothing_changed(
    lifecycle_manager: PluginLifecycleManager,
) -> None:
    drive_to(lifecycle_manager, "p", "RUNNING")
    drive_to(lifecycle_manager, "q", "FAILED")
    error = assert_illegal(lifecycle_manager, "p", "start")
    assert (error.plugin, error.state, error.allowed) == ("p", "RUNNING", ("fail", "make_unavailable"))
    assert assert_illegal(lifecycle_manager, "p", to="LOADED").attempted == "moving to LOADED"
    assert_illegal(lifecycle_manager, "new", to="RUNNING")  # untracked: enters in LOADED or FAILED only
    with pytest.raises(AssertionError, match="trigger 'fail' on plugin 'p' in state RUNNING was allowed: "
                                             "p RUNNING -> FAILED"):
        assert_illegal(lifecycle_manager, "p", "fail")
    with pytest.raises(AssertionError, match=r"raised UnknownPluginError .* not IllegalTransitionError"):
        assert_illegal(lifecycle_manager, "ghost", "start")
    with pytest.raises(TypeError, match="a trigger or to=<state>"):
        assert_illegal(lifecycle_manager, "p")
    with pytest.raises(TypeError, match="operator action 'enable' needs a PluginHost"):
        assert_illegal(lifecycle_manager, "p", "enable")


def test_assert_illegal_sees_a_refusal_that_changed_something(
    lifecycle_manager: PluginLifecycleManager, monkeypatch: pytest.MonkeyPatch,
) -> None:
    drive_to(lifecycle_manager, "p", "LOADED")
    drive_to(lifecycle_manager, "q", "LOADED")
    trigger = lifecycle_manager.trigger

    def sloppy(name: str, what: str, **kwargs: str | None) -> object:
        trigger("q", "fail")  # a bug: moves another plugin, then refuses
        raise IllegalTransitionError(name, "LOADED", what)

    monkeypatch.setattr(lifecycle_manager, "trigger", sloppy)
    with pytest.raises(AssertionError, match="raised IllegalTransitionError but changed things: q LOADED -> FAILED"):
        assert_illegal(lifecycle_manager, "p", "start")


def test_wait_for_state_says_where_the_plugin_is(lifecycle_manager: PluginLifecycleManager) -> None:
    drive_to(lifecycle_manager, "p", "INITIALIZED")
    assert wait_for_state(lifecycle_manager, "p", "INITIALIZED").trigger == "initialize"
    with pytest.raises(AssertionError) as caught:
        wait_for_state(lifecycle_manager, "p", "RUNNING", timeout=0.05)
    assert str(caught.value) == (
        "plugin 'p' did not reach RUNNING within 0.05 s: it is INITIALIZED\n"
        "  its moves:\n    (entered) -> LOADED\n    LOADED -> INITIALIZED"
    )
    with pytest.raises(AssertionError, match="it is not hosted"):
        wait_for_state(lifecycle_manager, "ghost", "RUNNING", timeout=0.01)


@pytest.mark.parametrize("state", oracle.STATES)
def test_drive_to_takes_the_shortest_legal_path(lifecycle_manager: PluginLifecycleManager, state: str) -> None:
    records = drive_to(lifecycle_manager, "p", state)
    assert lifecycle_manager.get_state("p") == state
    assert len(records) == (1 if state in oracle.FIRST_STATES else 1 + len(oracle.path("LOADED", state) or ()))
    assert drive_to(lifecycle_manager, "p", state) == []
    drive_to(lifecycle_manager, "p", "LOADED")
    assert lifecycle_manager.get_state("p") == "LOADED"


# -- the host state machine --------------------------------------------------------------------------------------------


def test_random_operator_actions_follow_the_table(plugin_host: PluginHostFactory) -> None:
    broken = "from plugin_health import Plugin\n\nclass P(Plugin):\n    def start(self):\n        raise OSError('x')\n"
    host = plugin_host({"geo": GEO, "weather": WEATHER, "broken": broken})
    run_host_state_machine(host)


def test_the_host_state_machine_catches_an_action_that_breaks_the_table(
    plugin_host: PluginHostFactory, monkeypatch: pytest.MonkeyPatch,
) -> None:
    host = plugin_host(GEO)

    def disable_by_failing(name: str) -> object:
        host.manager.trigger(name, "fail", reason="disabled")  # a bug: FAILED is not what disable promises
        return host.health(name)

    monkeypatch.setattr(host, "disable", disable_by_failing)
    with pytest.raises(AssertionError, match=r"disable of 'plugin' in RUNNING recorded \[\('RUNNING', 'FAILED'"):
        run_host_state_machine(host, database=None)
