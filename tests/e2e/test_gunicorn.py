"""End to end: real gunicorn, 3 workers and the plugin host, over fault plugins, hit from outside on loopback.

Checks every read route, that the server survives its plugins, and that the workers are one service: the
same answer from each, a transition visible from all within 1 s, a ``kill -9`` of a worker (or of the host)
changing nothing that clients rely on, and a shutdown that leaves no process behind.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from e2e.server import ROOT, Server, alive, gunicorn_ready, spawn_gunicorn, wait_for
from plugin_health.diagrams import MEDIA_TYPES

PLUGINS = {
    "core": "critical = True\nversion = '2.0'\ntimeout = 1.0\n@tool\ndef ping(self, who):\n    return f'pong {who}'\n"
            "@tool\ndef slow(self):\n    time.sleep(5)\n",
    "user": "requires = ('core>=1.5',)\n",
    "flappy": "def health_check(self):\n    return not os.path.exists(FLAG)\n",
    "broken": "def initialize(self, context):\n    raise RuntimeError('password=hunter2 at /etc/secret.py')\n",
    "needy": "requires = ('missing>=1',)\n",
    "hanger": "timeout = 0.3\ndef initialize(self, context):\n    time.sleep(60)\n",
    "crasher": "isolation = 'process'\ndef start(self):\n    import ctypes\n    ctypes.string_at(0)\n",
    "sysexit": "def start(self):\n    raise SystemExit(3)\n",
}
TOKEN = "e2e-operator-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
EXPECTED = {
    "broken": ("FAILED", "RuntimeError"),
    "core": ("RUNNING", None),
    "crasher": ("FAILED", "PluginCrashedError"),
    "flappy": ("RUNNING", None),
    "hanger": ("FAILED", "PluginTimeoutError"),
    "needy": ("UNAVAILABLE", None),
    "sysexit": ("FAILED", "SystemExit"),
    "user": ("RUNNING", None),
}


@pytest.fixture(scope="module")
def server(tmp_module: Path, gunicorn_factory: object) -> Server:
    plugins = tmp_module / "plugins"
    plugins.mkdir()
    flag = tmp_module / "flappy.flag"
    for name, body in PLUGINS.items():
        (plugins / f"{name}.py").write_text(
            f"import os, time\nfrom plugin_health import Plugin, tool\n\nFLAG = {str(flag)!r}\n\nclass P(Plugin):\n"
            + textwrap.indent(body, "    ")
        )
    env = {"PLUGIN_HEALTH_HEALTH_INTERVAL": "0.2", "PLUGIN_HEALTH_FAILURE_THRESHOLD": "1",
           "PLUGIN_HEALTH_MAX_RESTARTS": "0", "PLUGIN_HEALTH_ADMIN_TOKEN": TOKEN}
    made: Server = gunicorn_factory(plugins, env)  # type: ignore[operator]
    return made


def states(server: Server) -> dict[str, tuple[str, str | None]]:
    answer = server.get("/v1/plugins/")
    assert answer.status == 200
    return {p["name"]: (p["state"], p["error_type"]) for p in json.loads(answer.body)}


def assert_problem(server: Server, path: str, status: int, method: str = "GET") -> None:
    answer = server.get(path, method=method)
    assert answer.status == status, answer
    assert answer.headers["content-type"] == "application/problem+json"
    body = json.loads(answer.body)
    assert body["status"] == status
    assert {"type", "title", "detail"} <= set(body)


def test_plugins_are_served_with_the_states_their_faults_earn(server: Server) -> None:
    assert states(server) == EXPECTED


def test_the_core_is_spawned_ahead_as_gunicorn_reads_its_configuration(server: Server) -> None:
    """The master spawns its core as it reads its configuration, to import its modules while gunicorn starts, and
    starts that very process in on_starting: the host serving is the one spawned ahead."""
    running = re.findall(r"plugin host running as pid (\d+)(.*)", server.log.read_text())
    assert running == [(str(server.host_pid()), " (spawned as gunicorn read its configuration)")]


def test_every_read_route_answers_from_outside(server: Server) -> None:
    assert server.get("/v1/plugins/core/health").status == 200
    assert server.get("/v1/plugins/broken/health").status == 503
    assert server.get("/v1/plugins/?state=FAILED").status == 200
    history = json.loads(server.get("/v1/plugins/core/history").body)
    assert [(h["from"], h["to"]) for h in history][:3] == [(None, "LOADED"), ("LOADED", "INITIALIZED"),
                                                          ("INITIALIZED", "RUNNING")]
    health = server.get("/v1/health")
    assert (health.status, health.headers["content-type"]) == (200, "application/health+json")
    assert json.loads(health.body)["status"] == "warn"  # the critical plugin runs; others fail
    for probe in ("/livez", "/readyz", "/startupz"):
        answer = server.get(probe)
        assert (answer.status, answer.text) == (200, "ok"), probe
    assert "[+]plugin/core ok" in server.get("/readyz?verbose").text
    for fmt, media in MEDIA_TYPES.items():
        answer = server.get(f"/v1/plugins/core/diagram?format={fmt}")
        assert (answer.status, answer.headers["content-type"]) == (200, media)
    assert server.get("/v1/lifecycle/diagram").body.lstrip().startswith(b"<?xml")
    assert json.loads(server.get("/openapi.json").body)["openapi"].startswith("3.")
    assert_problem(server, "/v1/plugins/nobody/health", 404)
    assert_problem(server, "/v1/plugins/bad%20name/health", 400)
    assert_problem(server, "/v1/plugins/?state=ASLEEP", 400)
    assert_problem(server, "/no/such/route", 404)
    assert_problem(server, "/v1/plugins/", 405, method="DELETE")


def test_no_secret_or_path_reaches_an_anonymous_caller(server: Server) -> None:
    for path in ("/v1/plugins/", "/v1/plugins/broken/health", "/v1/plugins/broken/history", "/v1/health",
                 "/readyz?verbose"):
        text = server.get(path).text
        assert "hunter2" not in text, path
        assert "/etc/secret" not in text, path
        assert "Traceback" not in text, path


def without_check_times(body: bytes) -> list[dict[str, object]]:
    """The plugin list without ``last_check``, which moves on with every passing check (here every 0.2 s)."""
    return [{k: v for k, v in p.items() if k != "last_check"} for p in json.loads(body)]


def test_etag_and_304_across_workers(server: Server) -> None:
    etag, not_modified = server.get("/v1/plugins/").headers["etag"], 0
    for _ in range(20):  # new connections: several workers answer, and all know the same version
        again = server.get("/v1/plugins/", headers={"If-None-Match": etag})
        if again.status == 304:
            not_modified += 1
            assert again.body == b""
        else:  # the passing checks' times are published about once a second: a new version, a new tag
            assert again.status == 200
            assert again.headers["etag"] != etag
            etag = again.headers["etag"]
    assert not_modified >= 15


def test_every_worker_gives_the_same_answer(server: Server) -> None:
    answers = [server.get("/v1/plugins/") for _ in range(30)]
    assert all(without_check_times(a.body) == without_check_times(answers[0].body) for a in answers)
    by_tag: dict[str, set[bytes]] = {}
    for answer in answers:
        by_tag.setdefault(answer.headers["etag"], set()).add(answer.body)
    assert all(len(bodies) == 1 for bodies in by_tag.values())  # one tag, one body, whichever worker answers


def test_kill_9_of_a_worker_changes_nothing_clients_see(server: Server) -> None:
    before = server.get("/v1/plugins/")
    history = server.get("/v1/plugins/core/history").body
    workers = server.workers()
    victim = min(workers)
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: len(server.workers()) == 3 and victim not in server.workers(), 30, "a replacement worker")
    for _ in range(20):
        answer = server.get("/v1/plugins/")
        assert answer.status == 200
        assert without_check_times(answer.body) == without_check_times(before.body)
    assert server.get("/v1/plugins/core/history").body == history


def test_a_transition_is_visible_from_every_worker_within_a_second(server: Server, tmp_module: Path) -> None:
    (tmp_module / "flappy.flag").touch()  # its next health check (every 0.2 s) fails it
    wait_for(lambda: states(server)["flappy"][0] == "FAILED", 10, "a worker to see flappy FAILED")
    seen = time.monotonic()
    time.sleep(max(0.0, seen + 1.0 - time.monotonic()))
    assert {states(server)["flappy"] for _ in range(20)} == {("FAILED", "HealthCheckFailed")}
    last = json.loads(server.get("/v1/plugins/flappy/history").body)[-1]
    assert (last["from"], last["to"], last["trigger"]) == ("RUNNING", "FAILED", "fail")


def test_operator_actions_reach_the_host_and_every_worker(server: Server) -> None:
    assert server.get("/v1/plugins/user/disable", method="POST").status == 401
    answer = server.get("/v1/plugins/user/disable", headers=AUTH, method="POST")
    assert (answer.status, json.loads(answer.body)["reason"]) == (200, "disabled")
    assert {states(server)["user"] for _ in range(15)} == {("UNAVAILABLE", None)}
    illegal = server.get("/v1/plugins/user/disable", headers=AUTH, method="POST")
    assert (illegal.status, json.loads(illegal.body)["allowed"]) == (409, ["reset"])
    answer = server.get("/v1/plugins/broken/restart", headers=AUTH, method="POST")
    assert (answer.status, json.loads(answer.body)["restarts"]) == (200, 1)  # and still broken: FAILED
    assert states(server)["broken"] == ("FAILED", "RuntimeError")


def test_tool_calls_run_in_the_host(server: Server) -> None:
    body = json.dumps({"args": ["e2e"]})
    answer = server.get("/v1/plugins/core/tools/ping", headers={**AUTH, "Content-Type": "application/json"},
                        method="POST", body=body)
    assert (answer.status, json.loads(answer.body)["result"]) == (200, "pong e2e")
    slow = server.get("/v1/plugins/core/tools/slow", headers=AUTH, method="POST")
    assert (slow.status, json.loads(slow.body)["error_type"]) == (504, "PluginTimeoutError")
    assert server.get("/v1/plugins/core/tools/nope", headers=AUTH, method="POST").status == 404
    assert server.get("/v1/plugins/needy/tools/x", headers=AUTH, method="POST").status == 404


def test_the_service_outlives_its_plugin_host(server: Server) -> None:
    host = server.host_pid()
    assert host is not None
    os.kill(host, signal.SIGKILL)  # what a segfault in an inline plugin would do to it
    deadline = time.monotonic() + 30
    while True:
        assert server.get("/livez").status == 200  # the HTTP service never went away
        assert server.get("/v1/plugins/").status == 200
        new = server.host_pid()
        if new not in (None, host) and server.get("/readyz").status == 200:
            break
        assert time.monotonic() < deadline, "no new plugin host in 30 s"
        time.sleep(0.1)
    assert states(server)["core"] == ("RUNNING", None)
    assert states(server)["user"] == ("UNAVAILABLE", None)  # still disabled: the store kept it
    assert json.loads(server.get("/v1/plugins/user/health").body)["reason"] == "disabled"


def test_shutdown_stops_every_process(server: Server) -> None:
    processes = server.descendants()
    assert len(processes) >= 4  # 3 workers and the host, with the host's own children (a forkserver)
    assert server.host_pid() in processes
    assert server.stop() == 0
    wait_for(lambda: not any(alive(pid) for pid in server.seen), 10, "every process to exit")
    log = server.log.read_text()
    assert "plugin host stopped (exit status 0)" in log
    transitions = [json.loads(line) for line in log.splitlines() if '"event":"transition"' in line]
    assert {"plugin": "flappy", "from": "RUNNING", "to": "FAILED", "trigger": "fail"}.items() <= next(
        t for t in transitions if t["plugin"] == "flappy" and t["to"] == "FAILED").items()
    assert not any("hunter2" in line for line in log.splitlines() if '"event":"transition"' in line)
    assert "Traceback" not in log.split("Shutting down")[-1]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_to_the_whole_group_stops_the_service_without_starting_its_host_again(
    tmp_path: Path, sig: signal.Signals
) -> None:
    """What systemd's default ``KillMode=control-group`` (SIGTERM) and Ctrl-C in a terminal (SIGINT) do: every
    process of the service gets the signal at once. The plugin host stops with it, and the master, stopping too,
    must not start a new host meanwhile: its plugins would be set up again, for nothing, while the service ends."""
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    setups = tmp_path / "setups.log"
    (plugins / "counted.py").write_text(textwrap.dedent(f"""
        from plugin_health import Plugin

        class P(Plugin):
            def initialize(self, context):
                with open({str(setups)!r}, "a") as log:
                    log.write("setup\\n")
        """))
    server = spawn_gunicorn(tmp_path, plugins, {}, workers=2, session=True)
    try:
        wait_for(lambda: gunicorn_ready(server, 2), 60, "gunicorn to start")
        processes = server.descendants()
        os.killpg(server.process.pid, sig)
        assert server.process.wait(30) == 0
        wait_for(lambda: not any(alive(pid) for pid in processes | server.descendants()), 10, "every process to exit")
        log = server.log.read_text()
        assert "restarting it" not in log
        assert log.count("serves 1 plugins") == 1
        assert setups.read_text().splitlines() == ["setup"]
    finally:
        server.stop()


@pytest.mark.parametrize("command", [["gunicorn", "wsgi:app"], ["flask", "--app", "wsgi", "plugins", "list"]])
@pytest.mark.parametrize(("variable", "value", "expected"), [
    ("PLUGIN_HEALTH_DEFAULT_TIMEOUT", "soon", "a positive number"),
    ("PLUGIN_HEALTH_STORE_URL", "postgres://db", "empty, memory://, sqlite:///path or redis://host:port/db"),
], ids=["timeout", "store"])
def test_a_bad_setting_stops_the_service_with_one_clear_line(
    tmp_path: Path, command: list[str], variable: str, value: str, expected: str
) -> None:
    env = {**os.environ, variable: value, "PLUGIN_HEALTH_RUN_DIR": str(tmp_path)}
    run = subprocess.run([sys.executable, "-m", *command, *(["-b", "127.0.0.1:0"] if command[0] == "gunicorn" else [])],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert run.returncode != 0
    assert f"plugin-health: {variable}={value!r} is invalid: expected {expected}" in run.stderr
    assert "Traceback" not in run.stderr
