"""Who hosts the plugins: the host lock, the heartbeat, readers, and the host process with its owner."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from waiting import wait_for

from plugin_health import create_app
from plugin_health.app import EXTENSION, Service
from plugin_health.coordination.locks import HostLock, lock_is_free
from plugin_health.runtime.host_process import HostProcess, PreparedCore, read_beat
from plugin_health.runtime.hosting import EXIT_LOCKED, host_problem
from plugin_health.store import SQLiteStore, open_store
from plugin_health.store.cluster import InstanceInfo

PLUGINS = {
    "core": "critical = True\n",
    "broken": "def initialize(self, context):\n    raise RuntimeError('no')\n",
}


def write_plugins(directory: Path) -> None:
    for name, body in PLUGINS.items():
        (directory / f"{name}.py").write_text(
            "from plugin_health import Plugin\n\nclass P(Plugin):\n" + textwrap.indent(body, "    ")
        )


def gone(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True
    return "\nState:\tZ" in status


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    write_plugins(plugins)
    return {**os.environ, "PLUGIN_HEALTH_PLUGIN_PATH": str(plugins), "PLUGIN_HEALTH_RUN_DIR": str(tmp_path / "run"),
            "PLUGIN_HEALTH_HEALTH_INTERVAL": "3600", "PLUGIN_HEALTH_MAX_RESTARTS": "0"}


def config(env: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if k.startswith("PLUGIN_HEALTH_")}


@pytest.fixture
def apps() -> Iterator[list[Flask]]:
    made: list[Flask] = []
    yield made
    for app in made:
        app.extensions[EXTENSION].shutdown()


@pytest.mark.parametrize(
    ("beat", "now", "expected"),
    [
        (None, 100.0, "no plugin host is running"),
        (InstanceInfo('web', 42, 0.0, 99.0), 100.0, None),
        (InstanceInfo('web', 42, 0.0, 97.0), 100.0, None),
        (InstanceInfo('web', 42, 0.0, 96.5), 100.0, "the plugin host (pid 42) last beat 3.5 s ago"),
    ],
    ids=["never", "fresh", "at-the-limit", "stale"],
)
def test_host_problem(beat: InstanceInfo | None, now: float, expected: str | None) -> None:
    assert host_problem(beat, now) == expected


def test_host_lock_is_exclusive_and_released(tmp_path: Path) -> None:
    first, second = HostLock(tmp_path / "host.lock"), HostLock(tmp_path / "host.lock")
    assert first.acquire()
    assert not second.acquire(timeout=0.1)
    first.release()
    assert second.acquire()
    second.release()


def test_second_app_on_a_shared_store_reads_what_the_first_hosts(env: dict[str, str], apps: list[Flask]) -> None:
    apps.append(create_app(config(env)))
    apps.append(create_app(config(env)))
    hosting, reading = (app.extensions[EXTENSION] for app in apps)
    assert isinstance(hosting, Service)
    assert hosting.host is not None
    assert reading.host is None
    answers = [app.test_client().get("/v1/plugins/").get_json() for app in apps]
    assert answers[0] == answers[1]
    assert {p["name"]: p["state"] for p in answers[1]} == {"broken": "FAILED", "core": "RUNNING"}
    ready = apps[1].test_client().get("/readyz?verbose")
    assert ready.status_code == 200
    assert ready.get_data(as_text=True).splitlines()[0] == "[+]host ok"


def test_reader_reports_a_missing_host(env: dict[str, str], apps: list[Flask]) -> None:
    apps.append(create_app(config(env)))
    apps.append(create_app(config(env)))
    apps[0].extensions[EXTENSION].shutdown()
    client = apps[1].test_client()
    ready = client.get("/readyz?verbose")
    assert ready.status_code == 503
    assert "[-]host failed: no plugin host is running" in ready.get_data(as_text=True)
    assert client.get("/startupz").status_code == 503
    assert client.get("/livez").status_code == 200  # liveness never depends on plugins
    health = client.get("/v1/health")
    assert health.status_code == 503
    body = health.get_json()
    assert body["status"] == "fail"
    assert body["checks"]["host:heartbeat"][0]["output"] == "no plugin host is running"


def test_external_mode_never_hosts(env: dict[str, str], apps: list[Flask]) -> None:
    apps.append(create_app({**config(env), "host_mode": "external"}))
    assert apps[0].extensions[EXTENSION].host is None
    assert apps[0].test_client().get("/v1/plugins/").get_json() == []


def test_host_process_serves_restarts_and_stops(env: dict[str, str], apps: list[Flask]) -> None:
    host = HostProcess(env)
    host.start()
    try:
        first = host.pid
        assert first is not None
        apps.append(create_app({**config(env), "host_mode": "external"}))
        client = apps[0].test_client()
        wait_for(lambda: client.get("/startupz").status_code == 200)
        assert {p["name"]: p["state"] for p in client.get("/v1/plugins/").get_json()} == {
            "broken": "FAILED", "core": "RUNNING"}
        # A host that dies (as an inline segfault would kill it) is replaced, and the plugins load again.
        store = open_store(None, env["PLUGIN_HEALTH_RUN_DIR"])
        os.kill(first, signal.SIGKILL)
        wait_for(lambda: host.pid != first and (beat := read_beat(store)) is not None and beat.pid == host.pid)
        wait_for(lambda: client.get("/readyz").status_code == 200)
    finally:
        assert host.stop() == 0
    assert client.get("/readyz").status_code == 503
    last = client.get("/v1/plugins/core/history").get_json()[-1]
    assert (last["from"], last["to"], last["reason"]) == ("RUNNING", "UNAVAILABLE", "stopped")


def test_a_second_host_process_on_the_same_store_refuses_to_start(env: dict[str, str]) -> None:
    host = HostProcess(env)
    host.start()
    try:
        second = subprocess.run([sys.executable, "-m", "plugin_health.runtime.core_main"], env=env, timeout=60,
                                capture_output=True, text=True, check=False)
        assert second.returncode == EXIT_LOCKED
        assert "another process hosts the plugins of this store" in second.stderr
    finally:
        host.stop()


def test_host_process_exits_when_its_owner_dies(env: dict[str, str], tmp_path: Path) -> None:
    owner = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent("""
            import os, subprocess, sys, time
            env = {**os.environ, "PLUGIN_HEALTH_OWNER_PID": str(os.getpid())}
            child = subprocess.Popen([sys.executable, "-m", "plugin_health.runtime.core_main"], env=env)
            print(child.pid, flush=True)
            time.sleep(120)
        """)],
        env=env, stdout=subprocess.PIPE, text=True,
    )
    assert owner.stdout is not None
    host_pid = int(owner.stdout.readline())
    store = open_store(None, env["PLUGIN_HEALTH_RUN_DIR"])
    wait_for(lambda: (beat := read_beat(store)) is not None and beat.pid == host_pid)
    owner.kill()
    owner.wait()
    owner.stdout.close()
    wait_for(lambda: gone(host_pid), timeout=10)
    assert read_beat(store) is None  # it stopped cleanly, and said so


def test_a_prepared_core_hosts_with_the_environment_it_is_started_with(env: dict[str, str], apps: list[Flask],
                                                                       tmp_path: Path) -> None:
    """A core spawned ahead imports its modules while its owner goes on, and hosts only once started, with the
    environment it is started with: here a plugin path it was not spawned with."""
    prepared = PreparedCore({**env, "PLUGIN_HEALTH_PLUGIN_PATH": str(tmp_path / "nowhere")})
    host = HostProcess(env, prepared=prepared)
    host.start()
    try:
        assert (host.pid, host.spawned_ahead) == (prepared.pid, True)
        apps.append(create_app({**config(env), "host_mode": "external"}))
        client = apps[0].test_client()
        wait_for(lambda: client.get("/readyz").status_code == 200)
        assert {p["name"]: p["state"] for p in client.get("/v1/plugins/").get_json()} == {
            "broken": "FAILED", "core": "RUNNING"}
    finally:
        assert host.stop() == 0


def test_a_prepared_core_never_started_runs_nothing_and_exits(env: dict[str, str], tmp_path: Path) -> None:
    """Discarded (its owner found it cannot use it), or left behind by an owner that exits before starting it (a
    gunicorn that only checks its configuration), a prepared core exits without opening a store or running a line
    of any plugin."""
    ran = tmp_path / "ran"
    (Path(env["PLUGIN_HEALTH_PLUGIN_PATH"]) / "marks.py").write_text(
        f"open({str(ran)!r}, 'w').close()\nfrom plugin_health import Plugin\n\nclass P(Plugin):\n    pass\n")
    prepared = PreparedCore(env)
    wait_for(lambda: _reading_a_pipe(prepared.pid), timeout=30)  # its modules imported, it awaits its start
    prepared.discard()
    assert prepared.process.returncode == 0
    owner = subprocess.run([sys.executable, "-c", textwrap.dedent("""
        import os
        from plugin_health.runtime.host_process import PreparedCore
        print(PreparedCore().pid, flush=True)
        os._exit(0)
    """)], env=env, capture_output=True, text=True, timeout=60, check=True)
    left = int(owner.stdout)
    wait_for(lambda: gone(left), timeout=30)
    assert not ran.exists()
    assert not Path(env["PLUGIN_HEALTH_RUN_DIR"]).exists()


def _reading_a_pipe(pid: int) -> bool:
    """Whether ``pid`` sleeps reading a pipe (a prepared core awaiting its start, its modules imported)."""
    try:
        return "pipe" in Path(f"/proc/{pid}/wchan").read_text()
    except OSError:
        return False


def test_a_prepared_core_started_with_another_environment_is_replaced(env: dict[str, str]) -> None:
    """A core spawned ahead whose interpreter started with another environment than the one it is started with
    (other than the service's own settings, read only once started) is not used: a fresh one is spawned, and the
    prepared one exits."""
    prepared = PreparedCore({**env, "PYTHONWARNINGS": "ignore"})
    host = HostProcess(env, prepared=prepared)
    host.start()
    try:
        assert host.pid is not None
        assert (host.pid == prepared.pid, host.spawned_ahead) == (False, False)
        assert prepared.process.poll() == 0
    finally:
        assert host.stop() == 0


def test_handing_over_to_a_prepared_core_that_never_reads_is_bounded(env: dict[str, str], tmp_path: Path) -> None:
    """An environment larger than a pipe holds, for a prepared core stuck before it reads it (here in its
    interpreter's start): the master's start gives up on it within its wait, and spawns a core that serves."""
    (tmp_path / "stuck").mkdir()
    (tmp_path / "stuck" / "sitecustomize.py").write_text(
        "import sys, time\nif sys.argv[1:] == ['--prepared']:\n    time.sleep(300)\n")
    big = {**env, "PYTHONPATH": str(tmp_path / "stuck"), "PADDING_1": "x" * 100_000, "PADDING_2": "y" * 100_000}
    prepared = PreparedCore(big)
    host = HostProcess(big, prepared=prepared)
    starting = threading.Thread(target=host.start, kwargs={"wait": 2.0}, daemon=True)
    began = time.monotonic()
    starting.start()
    starting.join(60)
    try:
        assert not starting.is_alive(), "the master's start hung on the prepared core"
        assert time.monotonic() - began < 30
        assert (host.pid == prepared.pid, host.spawned_ahead) == (False, False)
        assert prepared.process.poll() is not None  # ended: it had run nothing
        store = open_store(None, env["PLUGIN_HEALTH_RUN_DIR"])
        wait_for(lambda: (beat := read_beat(store)) is not None and beat.pid == host.pid, timeout=30)
    finally:
        if starting.is_alive():
            prepared.process.kill()  # unblocks the write, so the test ends
        host.stop()


def test_a_host_stopped_before_it_starts_discards_its_prepared_core(env: dict[str, str]) -> None:
    """A master that stops before ``on_starting`` started its core (gunicorn failed to bind) leaves nothing behind."""
    prepared = PreparedCore(env)
    host = HostProcess(env, prepared=prepared)
    assert host.stop() is None
    assert prepared.process.returncode == 0
    assert not Path(env["PLUGIN_HEALTH_RUN_DIR"]).exists()


def test_a_prepared_core_is_started_only_by_the_process_that_prepared_it(env: dict[str, str]) -> None:
    """A process forked since (gunicorn's --daemon forks its master) cannot wait for the prepared core, which is not
    its child: it spawns a fresh one, and the prepared one exits."""
    code = textwrap.dedent("""
        import os, time
        from pathlib import Path
        from plugin_health.runtime.host_process import HostProcess, PreparedCore
        prepared = PreparedCore()
        if os.fork():
            os._exit(0)  # as a daemon's first parent does: the prepared core is no child of the one that goes on
        host = HostProcess(prepared=prepared)
        host.start()
        print(prepared.pid, host.pid, flush=True)
        def running(pid):
            try:
                return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
            except OSError:
                return False
        deadline = time.monotonic() + 30
        while running(prepared.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        print("left" if running(prepared.pid) else "gone", flush=True)
        os._exit(host.stop() or 0)
    """)
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120,
                          check=True)  # returns once the forked process is done too (it holds the output)
    (prepared_pid, host_pid), (prepared_end,) = (line.split() for line in done.stdout.splitlines())
    assert prepared_pid != host_pid
    assert prepared_end == "gone"


def test_passing_checks_are_published_together_failures_at_once(tmp_path: Path) -> None:
    write_plugins(tmp_path)
    flag = tmp_path / "sick.flag"
    (tmp_path / "sick.py").write_text(
        "import os\nfrom plugin_health import Plugin\n\nclass P(Plugin):\n"
        f"    def health_check(self):\n        return not os.path.exists({str(flag)!r})\n"
    )
    app = create_app({"plugin_path": str(tmp_path), "store_url": "memory://", "health_interval": 3600,
                      "failure_threshold": 3, "max_restarts": 0})
    service: Service = app.extensions[EXTENSION]
    try:
        assert service.host is not None
        store, supervisor = service.store, service.host.supervisor
        first = store.snapshot("sick")
        assert first is not None
        assert first.last_check is not None  # the first checks are published before loading counts as done
        version = store.version()
        assert supervisor.check("sick")
        assert store.version() == version  # a passing check is news that can wait...
        wait_for(lambda: store.version() > version, timeout=3)  # ...about a second
        later = store.snapshot("sick")
        assert later is not None
        assert later.last_check is not None
        assert later.last_check > first.last_check
        version = store.version()
        flag.touch()  # the plugin runs in a runner: it fails its checks while the flag exists
        assert not supervisor.check("sick")
        assert store.version() > version  # a failing check changes the count: published at once
        failing = store.snapshot("sick")
        assert failing is not None
        assert (failing.consecutive_failures, failing.healthy) == (1, False)
    finally:
        service.shutdown()


def test_a_host_killed_without_a_word_is_seen_gone_at_once(env: dict[str, str], apps: list[Flask]) -> None:
    host = HostProcess(env)
    host.start()
    try:
        apps.append(create_app({**config(env), "host_mode": "external"}))
        client = apps[0].test_client()
        wait_for(lambda: client.get("/readyz").status_code == 200)
        pid = host.pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)  # its last beat is still fresh, but its lock went with it
        wait_for(lambda: client.get("/readyz").status_code == 503, timeout=1)
    finally:
        host.stop()


def test_lock_probe(tmp_path: Path) -> None:
    path = tmp_path / "host.lock"
    assert lock_is_free(path)
    lock = HostLock(path)
    assert lock.acquire()
    assert not lock_is_free(path)
    lock.release()
    assert lock_is_free(path)


def test_a_probe_or_the_aggregate_looks_at_the_store_once(env: dict[str, str], apps: list[Flask]) -> None:
    """A worker's ``/readyz`` asks its SQLite store for the heartbeat, the loaded flag and the version of the critical
    checks: one ``PRAGMA data_version`` between them (``store.look()``), on the fast path and on Flask's."""
    apps.append(create_app(config(env)))
    apps.append(create_app(config(env)))
    reader = apps[1].extensions[EXTENSION]
    assert reader.host is None
    store = reader.store
    assert isinstance(store, SQLiteStore)
    client = apps[1].test_client()
    for path in ("/readyz", "/startupz", "/v1/health"):
        client.get(path)  # Flask's path: the fast path answers once Flask served a request, cached reads once built
    store.version()
    assert store._watch is not None
    looks: list[str] = []
    store._watch.set_trace_callback(lambda sql: looks.append(sql) if "data_version" in sql else None)
    for path in ("/readyz", "/readyz?verbose", "/startupz", "/v1/health", "/v1/health?x=1"):
        before = len(looks)
        assert client.get(path).status_code in (200, 503)
        assert len(looks) - before == 1, path


def test_over_a_sqlite_store_a_core_loads_no_flask_and_a_worker_no_redis(env: dict[str, str]) -> None:
    """The core starts before gunicorn forks the workers, which wait for its first beat, and five workers import the
    app at once: neither pays for a library it does not use (Flask was 0.1 s of the core's start, Redis 60-75 ms of
    each worker's CPU)."""
    core = textwrap.dedent("""
        import sys
        import plugin_health.runtime.core_main
        from plugin_health.config import load_settings
        from plugin_health.runtime.core import Core
        from plugin_health.store import open_instance_store
        settings = load_settings()
        core = Core(settings, open_instance_store(settings))
        core.start(background=False)
        print(sorted(m for m in ("flask", "werkzeug", "redis") if m in sys.modules))
        core.shutdown()
        """)
    worker = textwrap.dedent("""
        import sys
        from plugin_health.serving.wsgi import app
        print(sorted(m for m in ("flask", "redis") if m in sys.modules))
        """)
    for code, expected in ((core, "[]"), (worker, "['flask']")):
        done = subprocess.run([sys.executable, "-c", code], env={**env, "PLUGIN_HEALTH_HOST_MODE": "external"},
                              capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip().splitlines()[-1] == expected


def test_the_core_says_loaded_only_once_it_takes_actions_and_tool_calls(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``/readyz`` turns 200 on the ``loaded`` mark: were it written before the control server listens, a load
    balancer would send tool calls to an instance that answers them 503 (no plugin host) for a moment."""
    import threading

    from plugin_health.config import load_settings
    from plugin_health.runtime import hosting
    from plugin_health.runtime.core import LOADED_KEY

    seen: list[str] = []
    start, set_meta = hosting.ControlServer.start, SQLiteStore.set_meta

    def control_start(self: hosting.ControlServer) -> None:
        start(self)
        seen.append("control listens")

    def mark(self: SQLiteStore, key: str, value: str) -> None:
        set_meta(self, key, value)
        if key == LOADED_KEY and value:
            seen.append("loaded")
            threading.Timer(0.05, os.kill, (os.getpid(), signal.SIGTERM)).start()  # then stop serve()

    monkeypatch.setattr(hosting.ControlServer, "start", control_start)
    monkeypatch.setattr(SQLiteStore, "set_meta", mark)
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        settings = load_settings(environ={k: v for k, v in env.items() if k.startswith("PLUGIN_HEALTH_")})
        assert hosting.serve(settings) == 0
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    assert seen == ["control listens", "loaded"]


def test_the_master_works_meanwhile_while_its_host_starts(env: dict[str, str]) -> None:
    """``start(meanwhile=...)`` runs after the host is spawned and before its first beat is awaited: the master
    imports what its workers import while the core imports its own, on the other core, instead of sleeping."""
    host = HostProcess(env)
    seen: list[tuple[int | None, bool]] = []
    store = open_store(None, env["PLUGIN_HEALTH_RUN_DIR"])
    try:
        host.start(meanwhile=lambda: seen.append((host.pid, read_beat(store) is not None)))
        assert seen == [(host.pid, False)]  # spawned, not yet beating: the wait came after
        beat = read_beat(store)
        assert beat is not None
        assert beat.pid == host.pid
    finally:
        assert host.stop() == 0
        store.close()
