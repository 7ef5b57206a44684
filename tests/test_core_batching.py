"""While it loads, the core records transitions in batches: each batch one step of the store, every transition in
it, in the order they happened, so that what the store holds at any moment is a prefix of what happened; a plugin
that fails in a batch of many fails alone."""

from __future__ import annotations

import dataclasses
import gc
import logging
import os
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from packaging.version import Version

from plugin_health.config import load_settings
from plugin_health.lifecycle import PluginLifecycleState, TransitionRecord
from plugin_health.loader.loader import PluginLoader
from plugin_health.loader.sources import PluginSource
from plugin_health.loader.sources import discover as listing
from plugin_health.runtime.core import BATCH_NICENESS, DISABLED_KEY, LOADING_GC_THRESHOLD, Core
from plugin_health.runtime.runners import RunnerProcess
from plugin_health.store import MemoryStore, PluginSnapshot

S = PluginLifecycleState
TRIVIAL = "from plugin_health import Plugin\nclass P(Plugin):\n    pass\n"


def plugin_directory(tmp_path: Path, trivial: int, **odd: str) -> Path:
    """``tmp_path/plugins`` with ``trivial`` trivial plugins (``p000.py`` ...) and one file per ``odd`` source."""
    directory = tmp_path / "plugins"
    directory.mkdir()
    for i in range(trivial):
        (directory / f"p{i:03d}.py").write_text(TRIVIAL)
    for name, source in odd.items():
        (directory / f"{name}.py").write_text(source)
    return directory


class Recording(MemoryStore):
    """A store that keeps every step it took: the transitions of each, in order."""

    def __init__(self) -> None:
        super().__init__(history_limit=100)
        self.steps: list[list[TransitionRecord]] = []
        self.guard = threading.RLock()  # MemoryStore.put is a put_many

        self.written: Counter[str] = Counter()  # snapshots written, by plugin

    def put_many(self, snapshots: Iterable[PluginSnapshot], records: Iterable[TransitionRecord] = ()) -> None:
        records, snapshots = list(records), list(snapshots)
        with self.guard:
            super().put_many(snapshots, records)
            self.steps.append(records)
            self.written.update(snapshot.name for snapshot in snapshots)


@pytest.fixture
def plugins(tmp_path: Path) -> Path:
    return plugin_directory(
        tmp_path, 300,
        p150_raises="from plugin_health import Plugin\nclass P(Plugin):\n    def start(self):\n"
                    "        raise OSError('no disk')\n",
        p151_exits="from plugin_health import Plugin\nclass P(Plugin):\n    def initialize(self, context):\n"
                   "        raise SystemExit(3)\n",
        p152_broken="from plugin_health import Plugin\nclass P(Plugin:\n",
        p153_needs="from plugin_health import Plugin\nclass P(Plugin):\n    requires = ('p150_raises',)\n",
    )


@pytest.fixture
def core(plugins: Path) -> Iterator[Core]:
    settings = load_settings({"plugin_path": str(plugins), "health_interval": 3600, "max_restarts": 0},
                             environ={})
    made = Core(settings, Recording())
    seen: list[TransitionRecord] = []
    made.manager.subscribe(seen.append)
    made.seen = seen  # type: ignore[attr-defined]
    try:
        yield made
    finally:
        made.shutdown()


def test_every_transition_of_a_load_is_recorded_in_order_in_few_steps(core: Core) -> None:
    store = core.store
    assert isinstance(store, Recording)
    core.start(background=False)
    happened: list[TransitionRecord] = core.seen  # type: ignore[attr-defined]
    recorded = [record for step in store.steps for record in step]
    assert recorded == happened  # every one, once, in order: each step's end is a prefix of what happened
    assert len(happened) >= 3 * 300
    assert len([step for step in store.steps if step]) < len(happened) / 50
    for name in core.manager:
        snapshot = store.snapshot(name)
        assert snapshot is not None
        assert snapshot.state is core.manager.state_of(name)
        assert store.history(name) == core.manager.history(name)


def test_a_plugin_brought_up_with_its_load_is_written_once_its_first_check_included(core: Core) -> None:
    """Its first check is judged as soon as it is known, so the snapshot written with its transitions already shows
    it: one snapshot a plugin while loading (10,000 plugins: 10,000, not 20,000), and none left to write after."""
    store = core.store
    assert isinstance(store, Recording)
    core.start(background=False)
    running = [name for name, state in core.manager.all_states().items() if state is S.RUNNING]
    assert len(running) >= 295
    for name in running:
        snapshot = store.snapshot(name)
        assert snapshot is not None
        assert (snapshot.last_check is not None, snapshot.last_check_ok) == (True, True)
    once = [name for name in running if store.written[name] == 1]
    assert len(once) >= len(running) - 10  # a batch may be written between a plugin's start and its check


def test_a_plugin_that_fails_in_a_batch_fails_alone(core: Core) -> None:
    core.start(background=False)
    states = core.manager.all_states()
    failed = {name: (core.manager.last(name).reason, core.manager.last(name).error_type)
              for name, state in states.items() if state is S.FAILED}
    assert failed == {"p150_raises": ("start failed", "OSError"), "p151_exits": ("initialize failed", "SystemExit"),
                      "p152_broken": ("import failed", "SyntaxError")}
    assert states["p153_needs"] is S.UNAVAILABLE
    assert sum(state is S.RUNNING for state in states.values()) == 300


def test_routine_moves_of_a_load_are_counted_in_a_line_failures_each_have_theirs(
    core: Core, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO):
        core.start(background=False)
    transitions = [r for r in caplog.records if getattr(r, "transition", None)]
    assert {r.transition["to"] for r in transitions} == {"FAILED", "UNAVAILABLE"}  # type: ignore[attr-defined]
    counted: dict[str, int] = {}
    for r in caplog.records:
        for state, n in (getattr(r, "counts", None) or {}).items():
            counted[state] = counted.get(state, 0) + n
    assert counted == {"LOADED": 303, "INITIALIZED": 301, "RUNNING": 300}


FAULTS = {
    "segfault": "import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)\n",
    "exit": "import os\nos._exit(3)\n",
    "hang": "import signal\nsignal.setitimer(signal.ITIMER_REAL, 0)\nsignal.signal(signal.SIGALRM, signal.SIG_IGN)\n"
            "while True:\n    pass\n",
    "raise": "raise RuntimeError('broken at import')\n",
}
EXPECTED = {"segfault": "PluginCrashedError", "exit": "PluginCrashedError", "hang": "PluginTimeoutError",
            "raise": "RuntimeError"}


@pytest.mark.parametrize("fault", list(FAULTS), ids=list(FAULTS))
def test_a_plugin_that_brings_its_runner_down_while_many_load_ahead_of_it_fails_alone(
    tmp_path: Path, fault: str
) -> None:
    """Loads go to the shared runner many at a time: the one in flight when it dies is blamed, the ones loaded
    before it come back in a fresh runner, the ones sent after it never ran and load in the fresh runner."""
    directory = plugin_directory(tmp_path, 200, p100_fault=FAULTS[fault] + TRIVIAL)
    settings = load_settings({"plugin_path": str(directory), "health_interval": 3600, "max_restarts": 0,
                              "default_timeout": 1.0}, environ={})
    core = Core(settings, MemoryStore())
    try:
        core.start(background=False)
        states = core.manager.all_states()
        last = core.manager.last("p100_fault")
        assert (states["p100_fault"], last.reason, last.error_type) == (S.FAILED, "import failed", EXPECTED[fault])
        assert sum(state is S.RUNNING for state in states.values()) == 200, {
            name: state for name, state in states.items() if state is not S.RUNNING}
    finally:
        core.shutdown()


SETUP_FAULTS = {
    "segfault": ("import os, signal\n", "os.kill(os.getpid(), signal.SIGSEGV)", "PluginCrashedError"),
    "hang": ("import signal\n", "signal.setitimer(signal.ITIMER_REAL, 0)\n        "
             "signal.signal(signal.SIGALRM, signal.SIG_IGN)\n        while True:\n            pass",
             "PluginTimeoutError"),
    "raise": ("", "raise KeyError('setting')", "KeyError"),
    "false": ("", "return False", "PluginSetupError"),
}


@pytest.mark.parametrize("phase", ["initialize", "start"])
@pytest.mark.parametrize("fault", list(SETUP_FAULTS), ids=list(SETUP_FAULTS))
def test_a_plugin_that_fails_its_setup_among_many_brought_up_together_fails_alone(
    tmp_path: Path, fault: str, phase: str
) -> None:
    """Plugins that share the runner are initialized, then started, many at a time: the one in flight when the
    runner dies is blamed; the others come back (the ones that never ran on their own, the others recovered)."""
    head, body, error_type = SETUP_FAULTS[fault]
    signature = "initialize(self, context)" if phase == "initialize" else "start(self)"
    directory = plugin_directory(
        tmp_path, 150,
        p070_fault=f"{head}from plugin_health import Plugin\nclass P(Plugin):\n    timeout = 0.5\n"
                   f"    def {signature}:\n        {body}\n",
    )
    settings = load_settings({"plugin_path": str(directory), "health_interval": 3600, "max_restarts": 0},
                             environ={})
    core = Core(settings, MemoryStore())
    try:
        core.start()
        last = core.manager.last("p070_fault")
        assert (core.manager.state_of("p070_fault"), last.reason, last.error_type) == (
            S.FAILED, f"{phase} failed", error_type)
        deadline = time.monotonic() + 20
        while sum(state is S.RUNNING for state in core.manager.all_states().values()) < 150:
            assert time.monotonic() < deadline, {
                name: (state, core.manager.last(name).reason) for name, state in core.manager.all_states().items()
                if state is not S.RUNNING}
            time.sleep(0.05)
        for name in core.manager:  # never RUNNING without an initialize in the instance that runs
            moves = [(r.trigger, r.dest) for r in core.manager.history(name)]
            if moves[-1][1] is S.RUNNING:
                assert moves[-3:] == [("reset", S.LOADED), ("initialize", S.INITIALIZED), ("start", S.RUNNING)] or (
                    moves[-2:] == [("initialize", S.INITIALIZED), ("start", S.RUNNING)])
    finally:
        core.shutdown()


def test_the_first_health_checks_of_many_are_judged_each_and_a_hard_hang_is_blamed_alone(tmp_path: Path) -> None:
    directory = plugin_directory(
        tmp_path, 150,
        p050_false="from plugin_health import Plugin\nclass P(Plugin):\n    def health_check(self):\n"
                   "        return False\n",
        p060_hang="import signal\nfrom plugin_health import Plugin\nclass P(Plugin):\n    timeout = 0.5\n"
                  "    def health_check(self):\n        signal.setitimer(signal.ITIMER_REAL, 0)\n"
                  "        signal.signal(signal.SIGALRM, signal.SIG_IGN)\n        while True:\n            pass\n",
    )
    settings = load_settings({"plugin_path": str(directory), "health_interval": 3600, "max_restarts": 0},
                             environ={})
    core = Core(settings, MemoryStore())
    try:
        core.start()
        hang = core.manager.last("p060_hang")
        assert (core.manager.state_of("p060_hang"), hang.error_type) == (S.FAILED, "PluginTimeoutError")
        assert (hang.reason or "").startswith("quarantined into a runner of its own")
        deadline = time.monotonic() + 20
        while not all(core.manager.state_of(f"p{i:03d}") is S.RUNNING and core.supervisor.watch(
                f"p{i:03d}").last_check_ok for i in range(150)):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert core.supervisor.watch("p050_false").last_check_ok is False  # judged, though its runner was lost
    finally:
        core.shutdown()


def test_a_plugin_that_needs_nothing_comes_up_in_the_request_that_loads_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Loading, initializing and starting a plain plugin is one request to its runner; a plugin that needs another
    (known only once loaded) is brought up by the core, one phase at a time, after what it needs."""
    directory = plugin_directory(
        tmp_path, 20, p900_needs="from plugin_health import Plugin\nclass P(Plugin):\n    requires = ('p000',)\n")
    sent: Counter[tuple[str, str | None, bool]] = Counter()
    frame = RunnerProcess._frame

    def counting(self: RunnerProcess, message: dict[str, Any], ident: int | None = None) -> tuple[int, bytes]:
        sent[(message["op"], message.get("method"), "up" in message)] += 1
        return frame(self, message, ident)

    monkeypatch.setattr(RunnerProcess, "_frame", counting)
    settings = load_settings({"plugin_path": str(directory), "health_interval": 3600}, environ={})
    core = Core(settings, MemoryStore())
    try:
        core.start(background=False)
        assert set(core.manager.all_states().values()) == {S.RUNNING}
        for name in core.manager:
            assert [(r.trigger, r.dest) for r in core.manager.history(name)] == [
                ("load", S.LOADED), ("initialize", S.INITIALIZED), ("start", S.RUNNING)]
        assert sent == {("load", None, True): 21, ("call", "initialize", False): 1, ("call", "start", False): 1,
                        ("call", "health_check", False): 1}
    finally:
        core.shutdown()


def test_a_setup_that_hangs_past_its_own_timeout_is_stopped_by_it_when_brought_up_with_its_load(
    tmp_path: Path
) -> None:
    """The core holds each phase of a plugin brought up with its load to that plugin's own timeout (plus the grace),
    not the longest a phase may take: the load's answer, sent before ``initialize`` runs, declares it."""
    directory = plugin_directory(
        tmp_path, 30,
        p010_hang="import signal\nfrom plugin_health import Plugin\nclass P(Plugin):\n    timeout = 0.5\n"
                  "    def initialize(self, context):\n        signal.setitimer(signal.ITIMER_REAL, 0)\n"
                  "        signal.signal(signal.SIGALRM, signal.SIG_IGN)\n        while True:\n            pass\n",
    )
    settings = load_settings({"plugin_path": str(directory), "health_interval": 3600, "max_restarts": 0,
                              "default_timeout": 30}, environ={})
    core = Core(settings, MemoryStore())
    try:
        began = time.monotonic()
        core.start(background=False)
        assert time.monotonic() - began < 10  # 0.5 s + the grace, on a busy machine; never the 30 s default
        last = core.manager.last("p010_hang")
        assert (core.manager.state_of("p010_hang"), last.reason, last.error_type) == (
            S.FAILED, "initialize failed", "PluginTimeoutError")
    finally:
        core.shutdown()


#: A plugin that leaves a line in ``<its file>.log`` for each of its setup calls (what ran, and its config).
LOGGED = """
from pathlib import Path
from plugin_health import Plugin

class P(Plugin):
    def initialize(self, context):
        with open(Path(__file__).with_suffix(".log"), "a") as log:
            log.write(f"initialize {dict(context.config)}\\n")

    def start(self):
        with open(Path(__file__).with_suffix(".log"), "a") as log:
            log.write("start\\n")
"""


def test_no_plugin_runs_a_setup_the_core_would_not_have_run(tmp_path: Path) -> None:
    """Brought up with its load or not, a plugin gets its own configuration; a second source of a taken name is
    refused before its initialize (only its import ran), and a plugin an operator disabled is never set up."""
    first, second = plugin_directory(tmp_path, 5, same=LOGGED, off=LOGGED, configured=LOGGED), tmp_path / "b"
    second.mkdir()
    (second / "same.py").write_text(LOGGED.replace(".log", ".second.log"))
    settings = load_settings({"plugin_path": f"{first}:{second}", "health_interval": 3600,
                              "plugins": {"configured": {"region": "eu", "retries": 3}}}, environ={})
    store = MemoryStore()
    store.set_meta(DISABLED_KEY, '["off"]')
    core = Core(settings, store)
    try:
        core.start(background=False)
        assert (core.manager.state_of("same"), core.manager.state_of("configured")) == (S.RUNNING, S.RUNNING)
        assert (core.manager.state_of("off"), core.manager.last("off").reason) == (S.UNAVAILABLE, "disabled")
        assert (first / "configured.log").read_text() == "initialize {'region': 'eu', 'retries': 3}\nstart\n"
        assert (first / "same.log").read_text() == "initialize {}\nstart\n"
        assert not (second / "same.second.log").exists()
        assert not (first / "off.log").exists()
    finally:
        core.shutdown()


class _Tagged(str):
    """A str subclass: JSON writes it as a string, but the core's requests (``marshal``) cannot carry it."""


@pytest.mark.parametrize("value", [datetime(2026, 1, 1, tzinfo=UTC), _Tagged("eu")], ids=["date", "str-subclass"])
def test_a_configuration_that_cannot_travel_fails_its_plugin_as_before(tmp_path: Path, value: object) -> None:
    """A configuration the core's requests cannot carry (a TOML date; a ``str`` subclass, which JSON would write but
    ``marshal`` refuses) goes with no load: the plugin comes up the usual way, whose initialize fails naming the
    arguments, and the others come up with their loads."""
    directory = plugin_directory(tmp_path, 5, odd=LOGGED)
    settings = load_settings({"plugin_path": str(directory), "health_interval": 3600, "max_restarts": 0,
                              "plugins": {"odd": {"value": value}}}, environ={})
    core = Core(settings, MemoryStore())
    try:
        core.start(background=False)
        last = core.manager.last("odd")
        assert (core.manager.state_of("odd"), last.reason, last.error_type) == (
            S.FAILED, "initialize failed", "UnencodableArgumentsError")
        assert not (directory / "odd.log").exists()
        assert sum(core.manager.state_of(f"p{i:03d}") is S.RUNNING for i in range(5)) == 5
    finally:
        core.shutdown()


#: A plugin that, in ``initialize``, finds its request's id on the runner's stack and sends the core a forged answer
#: (``forged``: what it says besides the id), ahead of its initialize's own answer.
FORGER = """
import inspect, json, struct
from plugin_health import Plugin

class P(Plugin):
    timeout = 2

    def initialize(self, context):
        frame = inspect.currentframe()
        while frame is not None and "ident" not in frame.f_locals:
            frame = frame.f_back
        runner = frame.f_locals["self"]
        body = json.dumps({{"id": frame.f_locals["ident"], "ok": True, "result": None, "error": None,
                           "error_type": None, "duration_ms": 0.1, {forged}}}).encode()
        runner.sock.sendall(struct.pack(">I", len(body)) + body)
"""


@pytest.mark.parametrize(("forged", "phase"), [
    ('"method": "start"', "initialize"),
    ('"method": "initialize", "then": "not a list"', "initialize"),
    ('"method": "initialize", "then": [{"method": "health_check", "ok": True, "result": True}]', "start"),
    ('"method": "initialize", "then": [None]', "start"),
    ('"method": "initialize", "then": ["health_check"]', "start"),
], ids=["start-for-initialize", "riding-not-a-list", "riding-another-phase", "riding-not-an-answer",
        "riding-another-phase-s-name"])
def test_a_plugin_that_forges_answers_breaks_its_runner_and_is_blamed(tmp_path: Path, forged: str, phase: str) -> None:
    """An answer must be to the phase the core awaits: a forged answer for ``start`` read as the initialize's is a
    broken runner, and so are answers riding in a frame (``then``: the phases that ran no plugin code after it) that
    are not a list of the awaited phases' answers; blamed on the plugin whose phase was in flight. The others come
    back, and the forger is never recorded RUNNING on the word of a start that never ran."""
    directory = plugin_directory(tmp_path, 40, p020_forger=FORGER.format(forged=forged))
    settings = load_settings({"plugin_path": str(directory), "health_interval": 3600, "max_restarts": 0},
                             environ={})
    core = Core(settings, MemoryStore())
    try:
        core.start()
        assert "broke the protocol" in failed_as(core, "p020_forger", f"{phase} failed", "PluginCrashedError")
        assert S.RUNNING not in [record.dest for record in core.manager.history("p020_forger")]
        wait_all_running(core, 40)
    finally:
        core.shutdown()


def failed_as(core: Core, name: str, reason: str, error_type: str) -> str:
    """Assert that ``name`` is FAILED for ``reason`` with ``error_type``; its error message."""
    last = core.manager.last(name)
    assert (core.manager.state_of(name), last.reason, last.error_type) == (S.FAILED, reason, error_type)
    return last.error or ""


def wait_all_running(core: Core, trivial: int) -> None:
    """Wait until the ``trivial`` plugins ``p000``... are all RUNNING (those of a runner a neighbour brought down
    come back in a new one), for at most 20 s."""
    deadline = time.monotonic() + 20
    while [core.manager.state_of(f"p{i:03d}") for i in range(trivial)] != [S.RUNNING] * trivial:
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_memory_kept_by_each_phase_of_a_plugin_brought_up_with_its_load_adds_up(tmp_path: Path) -> None:
    """A plugin that keeps 40 MiB in ``initialize`` and 40 more in ``start`` has kept 80 MiB, past its 64: its start
    fails for memory and its runner is replaced (what each phase kept is counted, the readings between phases
    shared), while a neighbour that keeps 40 MiB in one phase comes up."""
    keeper = ("from plugin_health import Plugin\nclass P(Plugin):\n    memory_limit_mb = 64\n    kept = []\n"
              "    def initialize(self, context):\n        self.kept.append(bytearray(40 << 20))\n")
    directory = plugin_directory(
        tmp_path, 10,
        p004_keeps_twice=keeper + "    def start(self):\n        self.kept.append(bytearray(40 << 20))\n",
        p005_keeps_once=keeper,
    )
    settings = load_settings({"plugin_path": str(directory), "health_interval": 3600, "max_restarts": 0},
                             environ={})
    core = Core(settings, MemoryStore())
    try:
        core.start()
        assert "kept 80 MiB" in failed_as(core, "p004_keeps_twice", "start failed", "PluginMemoryError")
        assert core.manager.state_of("p005_keeps_once") is S.RUNNING
        wait_all_running(core, 10)
    finally:
        core.shutdown()


def test_the_collector_runs_less_often_while_the_core_loads_and_as_before_after(core: Core) -> None:
    """While loading, the first generation is collected every LOADING_GC_THRESHOLD allocations (the core then only
    adds long-lived state, and each full collection walks all of it); the process's thresholds come back after."""
    before = gc.get_threshold()
    during: list[tuple[int, int, int]] = []
    core.manager.subscribe(lambda record: during.append(gc.get_threshold()))
    core.start(background=False)
    assert during
    assert set(during[:300]) == {(max(before[0], LOADING_GC_THRESHOLD), *before[1:])}
    assert gc.get_threshold() == before


def test_a_core_with_its_process_to_itself_collects_no_older_generation_while_it_loads_and_freezes_after(
    core: Core,
) -> None:
    """A core that has its process to itself (the plugin host's) collects only the first generation while it loads,
    and when loading ends moves everything the process holds out of the collector's reach (``gc.freeze``): what
    loading made is the core's long-lived state (10,000 plugins: 216,000 objects, none of them garbage, 73 ms a full
    collection), which no collection needs to walk again, and none did while it grew. The thresholds come back after;
    an embedded core (the test's other one) freezes nothing of its host's."""
    before = gc.get_threshold()
    collected: list[int] = []

    def counting(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            collected.append(info["generation"])

    core.own_process = True
    gc.callbacks.append(counting)
    try:
        core.start(background=False)
        frozen = gc.get_freeze_count()
        core.shutdown()  # and gives it back to the collector, for the interpreter's shutdown
        at_shutdown = gc.get_freeze_count()
    finally:
        gc.callbacks.remove(counting)
        gc.unfreeze()
    assert at_shutdown == 0
    assert gc.get_threshold() == before
    assert collected.count(0) >= 1  # the first generation was collected
    assert set(collected) == {0}
    assert frozen > 1_000


def test_an_embedded_core_freezes_nothing(core: Core) -> None:
    core.start(background=False)
    assert gc.get_freeze_count() == 0


@pytest.mark.skipif(sys.platform != "linux", reason="a thread's own priority is Linux's")
def test_the_batch_writer_yields_the_cpu_to_the_loading_and_only_it(core: Core) -> None:
    """While plugins load, the thread writing the batches runs BATCH_NICENESS nicer than the rest of the process
    (it publishes what already happened; the runner bringing plugins up goes first where cores are few); every other
    thread keeps its priority, the core's main thread included, and so does the process once loading is over."""
    def niceness() -> int:
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    main = niceness()
    seen: dict[str, set[int]] = {}
    write = core._write_batch

    def writing(last: bool = False) -> None:
        seen.setdefault(threading.current_thread().name, set()).add(niceness())
        write(last)

    core._write_batch = writing  # type: ignore[method-assign]
    core.start(background=False)
    assert seen["plugin-health-batches"] == {min(19, main + BATCH_NICENESS)}
    assert seen[threading.current_thread().name] == {main}  # the last batch, written by the thread that loaded
    assert niceness() == main
    assert os.getpriority(os.PRIO_PROCESS, 0) == main


def test_a_collector_turned_off_by_threshold_stays_off_while_the_core_loads(core: Core) -> None:
    """A host app that set the first generation's threshold to 0 (no automatic collection) keeps it so."""
    before = gc.get_threshold()
    during: list[tuple[int, int, int]] = []
    core.manager.subscribe(lambda record: during.append(gc.get_threshold()))
    gc.set_threshold(0, *before[1:])
    try:
        core.start(background=False)
    finally:
        gc.set_threshold(*before)
    assert during
    assert {threshold[0] for threshold in during[:300]} == {0}


@pytest.mark.parametrize("body", ["x = 1" + "+1" * 200_000, "x = " + "not " * 100_000 + "1"],
                         ids=["too-deep-for-the-parser", "too-big-for-the-parser"])
def test_a_source_the_core_cannot_parse_for_its_declaration_fails_alone(tmp_path: Path, body: str) -> None:
    """Before it loads a source, the core reads it for ``isolation`` and ``singleton`` (``ast``), and a source can be
    built so that the parser runs out of stack or memory: that plugin fails to import (in its runner, where the same
    text cannot compile either), and the start goes on for the others."""
    source = f"from plugin_health import Plugin\nclass P(Plugin):\n    isolation = 'inline'\n{body}\n"
    directory = plugin_directory(tmp_path, 20, p005_deep=source)
    settings = load_settings({"plugin_path": str(directory), "health_interval": 3600, "max_restarts": 0},
                             environ={})
    core = Core(settings, MemoryStore())
    try:
        core.start(background=False)
        assert core.manager.state_of("p005_deep") is S.FAILED
        assert core.manager.last("p005_deep").reason == "import failed"
        assert [name for name, state in core.manager.all_states().items() if state is S.RUNNING] == [
            f"p{i:03d}" for i in range(20)]
    finally:
        core.shutdown()


def test_the_first_loads_go_out_before_the_last_source_is_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whether a source runs apart is read (from its text) as the loads reach it, so the shared runner imports the
    first plugins while the core still reads the last sources; one that runs apart loads in its own runner, in its
    place in the order."""
    directory = plugin_directory(
        tmp_path, 300, p100_apart="from plugin_health import Plugin\nclass P(Plugin):\n    isolation = 'process'\n")
    events: list[str] = []
    read, send_many = PluginLoader._placing, RunnerProcess.send_many

    def reading(source: PluginSource) -> tuple[bool, bytes | None]:
        events.append(f"read {source.name}")
        return read(source)

    def sending(self: RunnerProcess, requests: list[tuple[dict[str, Any], float | None]]) -> Any:
        events.append(f"send {len(requests)}")
        return send_many(self, requests)

    monkeypatch.setattr(PluginLoader, "_placing", staticmethod(reading))
    monkeypatch.setattr(RunnerProcess, "send_many", sending)
    settings = load_settings({"plugin_path": str(directory), "health_interval": 3600}, environ={})
    core = Core(settings, MemoryStore())
    try:
        core.start(background=False)
        assert set(core.manager.all_states().values()) == {S.RUNNING}
        first_send = next(i for i, event in enumerate(events) if event.startswith("send"))
        assert first_send <= 70  # a chunk's worth of sources read, of 301
        assert sum(event.startswith("read") for event in events) >= 301  # each source was read, through the spy
        handle = core.registry.get("p100_apart").handle
        assert getattr(handle, "isolation", None) == "process"
        assert list(core.manager)[:3] == ["p000", "p001", "p002"]
    finally:
        core.shutdown()


def test_first_checks_that_fail_plugins_at_once_are_judged_after_the_loads(tmp_path: Path) -> None:
    """With ``failure_threshold`` 1, a first check that fails fails its plugin, which stops it: a call into the shared
    runner, which the load stream holds until its last load. Such a check is judged once loading ends (a passing
    one at once): each of them FAILED for its check after every plugin was loaded, every other plugin RUNNING."""
    failing = {f"p{i:03d}_false": "from plugin_health import Plugin\nclass P(Plugin):\n    def health_check(self):\n"
                                  "        return False\n" for i in range(10, 300, 30)}
    directory = plugin_directory(tmp_path, 300, **failing)
    settings = load_settings({"plugin_path": str(directory), "health_interval": 3600, "max_restarts": 0,
                              "failure_threshold": 1}, environ={})
    core = Core(settings, MemoryStore())
    seen: list[TransitionRecord] = []
    core.manager.subscribe(seen.append)
    try:
        core.start(background=False)
        for name in failing:
            last = core.manager.last(name)
            assert (core.manager.state_of(name), last.reason) == (S.FAILED, "1 consecutive failures (health check)")
        assert [name for name, state in core.manager.all_states().items() if state is S.RUNNING] == [
            f"p{i:03d}" for i in range(300)]
        triggers = [record.trigger for record in seen]
        last_load = len(triggers) - 1 - triggers[::-1].index("load")
        assert triggers.index("fail") > last_load
    finally:
        core.shutdown()


def test_the_shared_runner_boots_while_the_core_discovers_its_plugins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The core starts its shared runner before it lists its plugins (10,000 files: 0.1 s, as long as a runner's
    boot); the plugins load in that runner."""
    directory = plugin_directory(tmp_path, 3)
    started_when_listing: list[int] = []

    def discover(*args: Any) -> Any:
        started_when_listing.extend(runner.pid for runner in made.runners.runners())
        return listing(*args)

    monkeypatch.setattr("plugin_health.runtime.core.discover", discover)
    settings = load_settings({"plugin_path": str(directory), "health_interval": 3600}, environ={})
    made = Core(settings, MemoryStore())
    try:
        made.start(background=False)
        assert set(made.manager.all_states().values()) == {S.RUNNING}
        shared = made.runners.shared_runner()
        assert shared is not None
        assert started_when_listing == [shared.pid]
        assert all(made.registry.get(name).handle.runner is shared for name in made.manager)
    finally:
        made.shutdown()


@pytest.mark.parametrize("apart", [0, 1], ids=["no-plugin", "process-plugin-only"])
def test_a_shared_runner_no_plugin_needs_is_stopped_once_loaded(tmp_path: Path, apart: int) -> None:
    directory = plugin_directory(
        tmp_path, 0, **({"alone": "from plugin_health import Plugin\nclass P(Plugin):\n    isolation = 'process'\n"}
                        if apart else {}))
    settings = load_settings({"plugin_path": str(directory), "health_interval": 3600}, environ={})
    core = Core(settings, MemoryStore())
    try:
        core.start(background=False)
        assert core.runners.shared_runner() is None
        assert len(core.runners.runners()) == apart
        assert all(state is S.RUNNING for state in core.manager.all_states().values())
    finally:
        core.shutdown()


def counted(name: str, **labels: str) -> float:
    """This process's count of one metric sample (0 when it has none yet)."""
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value(name, labels) or 0.0


WATCHED = [("plugin_health_transitions_total", {"from_state": "", "to_state": "LOADED", "trigger": "load"}),
           ("plugin_health_transitions_total", {"from_state": "LOADED", "to_state": "INITIALIZED",
                                                "trigger": "initialize"}),
           ("plugin_health_transitions_total", {"from_state": "INITIALIZED", "to_state": "RUNNING",
                                                "trigger": "start"}),
           ("plugin_health_transitions_total", {"from_state": "INITIALIZED", "to_state": "FAILED", "trigger": "fail"}),
           ("plugin_health_sandbox_calls_total", {"call": "initialize", "outcome": "ok"}),
           ("plugin_health_sandbox_calls_total", {"call": "start", "outcome": "ok"}),
           ("plugin_health_sandbox_calls_total", {"call": "start", "outcome": "error"}),
           ("plugin_health_sandbox_calls_total", {"call": "health_check", "outcome": "ok"}),
           ("plugin_health_plugin_failed_calls_total", {"plugin": "p150_raises"}),
           ("plugin_health_sandbox_call_duration_seconds_count", {"isolation": "inline", "call": "start"}),
           ("plugin_health_sandbox_call_duration_seconds_bucket", {"isolation": "inline", "call": "start",
                                                                   "le": "0.0001"}),
           ("plugin_health_sandbox_call_duration_seconds_bucket", {"isolation": "inline", "call": "start",
                                                                   "le": "+Inf"})]


@pytest.mark.parametrize("writer", ["keeping-up", "behind"])
def test_what_a_load_counts_reaches_the_metrics_with_its_batches_and_all_of_it_by_the_end(core: Core,
                                                                                          writer: str) -> None:
    """While loading, calls and transitions are counted in memory and added to the metrics with each batch the store
    takes (one step a series, not one a call): nothing is lost, nothing counted twice, and once loading is over every
    count is in. ``behind``: the batch writer was still writing when loading ended (here: it never got to write), so
    the transitions since go in the last batch, written by the thread that loaded: they too are counted first."""
    if writer == "behind":
        write = core._write_batch
        core._write_batch = lambda last=False: write(last) if last else None  # type: ignore[method-assign]
    before = {(name, tuple(labels.items())): counted(name, **labels) for name, labels in WATCHED}
    lagging: list[tuple[float, int]] = []
    store = core.store
    assert isinstance(store, Recording)
    put_many = store.put_many

    def watching(*args: Any, **kwargs: Any) -> None:
        put_many(*args, **kwargs)
        written = sum(record.source is None and record.dest is S.LOADED for step in store.steps for record in step)
        metric = counted(WATCHED[0][0], **WATCHED[0][1]) - before[WATCHED[0][0], tuple(WATCHED[0][1].items())]
        if metric < written:
            lagging.append((metric, written))

    store.put_many = watching  # type: ignore[method-assign]
    core.start(background=False)
    grew = {name_labels: counted(name_labels[0], **dict(name_labels[1])) - was for name_labels, was in before.items()}
    values = list(grew.values())
    running = sum(state is S.RUNNING for state in core.manager.all_states().values())
    assert running == 300
    loaded_entries = 300 + 3  # every plugin but the one that cannot be imported entered LOADED
    # p151 failed its initialize, p150 its start, p153 waits for p150 (never initialized)
    assert values[:4] == [loaded_entries, running + 1, running, 1]
    assert values[4:9] == [running + 1, running, 1, running, 1]
    assert values[9] == running + 1  # every start timed, the inherited ones in no time
    assert values[10] >= running
    assert values[11] == running + 1
    # counted while loading: each transition the store holds was already counted when the store took it
    assert lagging == []
    if writer == "behind":  # one batch, the last, took every transition of the load
        assert len([step for step in store.steps if any(record.dest is S.LOADED for record in step)]) == 1


SWAPPED_IN = "import os\nfrom plugin_health import Plugin\nos._exit(3)\nclass P(Plugin):\n    isolation = 'process'\n"


def test_the_shared_runner_imports_the_text_the_core_scanned(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where a plugin runs is decided on its text (``isolation = "process"`` takes it out of the shared runner): the
    shared runner imports the very bytes the core read to decide, sent with the load, never the file as it is by
    then. A file swapped just after the core read it, for one that asks to run apart and ends its process at
    import, does not run in the shared runner: the plugin runs as scanned and no neighbour is touched."""
    directory = plugin_directory(tmp_path, 30, p015_swapped="from plugin_health import Plugin\nclass P(Plugin):\n"
                                                           "    version = '1.0'\n")
    scan = PluginLoader._placing

    def swap_after_scan(source: PluginSource) -> tuple[bool, bytes | None]:
        placing = scan(source)
        if source.name == "p015_swapped":
            (directory / "p015_swapped.py").write_text(SWAPPED_IN)
        return placing

    monkeypatch.setattr(PluginLoader, "_placing", staticmethod(swap_after_scan))
    settings = load_settings({"plugin_path": str(directory), "health_interval": 3600}, environ={})
    core = Core(settings, MemoryStore())
    try:
        core.start()
        assert (core.manager.state_of("p015_swapped"), core.registry.get("p015_swapped").spec.version) == (
            S.RUNNING, Version("1.0"))
        for i in range(30):  # each came up once, in the one shared runner: nobody was lost
            assert [record.dest for record in core.manager.history(f"p{i:03d}")] == [S.LOADED, S.INITIALIZED, S.RUNNING]
        assert len(core.runners.runners()) == 1
    finally:
        core.shutdown()


def test_a_phase_whose_result_is_too_large_to_send_fails_that_phase(tmp_path: Path) -> None:
    """A plugin brought up with its load whose ``initialize`` returns more than a message may carry: its answer is
    refused in the runner (``ResultTooLargeError``), as the initialize's, so that phase fails, and nobody's runner is
    taken for broken."""
    big = "from plugin_health import Plugin\nclass P(Plugin):\n    def initialize(self, context):\n" \
          "        return 'x' * 100_000\n"
    directory = plugin_directory(tmp_path, 20, p010_big=big)
    settings = load_settings({"plugin_path": str(directory), "health_interval": 3600, "max_message_bytes": 65536},
                             environ={})
    core = Core(settings, MemoryStore())
    try:
        core.start()
        assert "larger than the limit" in failed_as(core, "p010_big", "initialize failed", "ResultTooLargeError")
        for i in range(20):  # brought up once, in the one runner nobody broke
            assert [record.dest for record in core.manager.history(f"p{i:03d}")] == [S.LOADED, S.INITIALIZED, S.RUNNING]
    finally:
        core.shutdown()


UNBLOCKER = """
import inspect, select
from plugin_health import Plugin

class P(Plugin):
    def initialize(self, context):
        frame = inspect.currentframe()
        while frame is not None and "ident" not in frame.f_locals:
            frame = frame.f_back
        frame.f_locals["self"].sock.setblocking(False)
        {also}
"""


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.mark.parametrize("also", ["pass", "select.select = lambda *args: ([], [], [])"],
                         ids=["unblocked", "and-select-patched"])
def test_a_plugin_that_unblocks_its_runner_s_socket_does_not_make_it_spin(tmp_path: Path, also: str) -> None:
    """The runner waits for the core's next request in ``recv``; a plugin that makes its socket non-blocking (and
    replaces ``select.select``, which the runner bound before any plugin loaded) does not turn that wait into a busy
    loop: the runner still sleeps until a request comes, and answers it."""
    directory = plugin_directory(tmp_path, 3, p001_unblocker=UNBLOCKER.format(also=also))
    settings = load_settings({"plugin_path": str(directory), "health_interval": 3600}, environ={})
    core = Core(settings, MemoryStore())
    try:
        core.start()
        assert core.manager.state_of("p001_unblocker") is S.RUNNING
        (runner,) = core.runners.runners()
        child = int(Path(f"/proc/{runner.pid}/task/{runner.pid}/children").read_text().split()[0])
        before = _cpu_seconds(child)
        time.sleep(0.5)
        assert _cpu_seconds(child) - before < 0.1  # asleep, not spinning
        assert core.supervisor.check("p001_unblocker")
    finally:
        core.shutdown()


def _outcome(core: Core) -> tuple[dict[str, list[tuple[Any, ...]]], dict[str, dict[str, Any]]]:
    """Each plugin's history and stored snapshot, without their times."""
    store = core.store
    histories = {name: [(r.source, r.dest, r.trigger, r.reason, r.error_type, r.error) for r in store.history(name)]
                 for name in core.manager}
    timeless = {"since", "last_check", "stale_after"}
    snapshots = {}
    for name in core.manager:
        snapshot = store.snapshot(name)
        assert snapshot is not None
        snapshots[name] = {k: v for k, v in dataclasses.asdict(snapshot).items() if k not in timeless}
    return histories, snapshots


def test_plugins_brought_up_with_their_load_enter_running_in_one_step_as_they_would_one_move_at_a_time(
    plugins: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A plugin whose ``initialize`` and ``start`` passed with its load enters LOADED, INITIALIZED and RUNNING in one
    step (its listeners told of the three records together, with those of the plugins whose loads arrived with it):
    the store ends as it does when each move is made on its own (the same histories and snapshots, failures
    included), and so do the metrics."""
    settings = load_settings({"plugin_path": str(plugins), "health_interval": 3600, "max_restarts": 0}, environ={})
    ends = []
    for whole in (True, False):
        if not whole:
            monkeypatch.setattr(PluginLoader, "_joined_whole", lambda *args: False)
        core = Core(settings, Recording())
        told: list[list[TransitionRecord]] = []
        core.manager.subscribe(lambda record, told=told: told.append([record]), told.append)
        before = {(name, tuple(labels.items())): counted(name, **labels) for name, labels in WATCHED}
        try:
            core.start(background=False)
            grew = [counted(name, **labels) - before[name, tuple(labels.items())] for name, labels in WATCHED]
            ends.append((_outcome(core), grew))
        finally:
            core.shutdown()
        # Each plugin's records of one step, in the order told (a step may tell of several plugins').
        steps = [[r for r in group if r.plugin == name] for group in told for name in dict.fromkeys(
            r.plugin for r in group)]
        ways_up = Counter(tuple(r.dest for r in step) for step in steps
                          if step[0].plugin.startswith("p0") and step[0].source is not S.RUNNING)
        if whole:
            assert ways_up == {(S.LOADED, S.INITIALIZED, S.RUNNING): 100}  # p000 ... p099, each in one step
        else:
            assert ways_up == {(S.LOADED,): 100, (S.INITIALIZED,): 100, (S.RUNNING,): 100}
    (whole_outcome, whole_metrics), (stepwise_outcome, stepwise_metrics) = ends
    assert whole_outcome == stepwise_outcome
    # Every count but the bucket of the calls that took under 0.1 ms, which depends on the machine's speed.
    timed = [labels.get("le") == "0.0001" for _, labels in WATCHED]
    assert [n for n, t in zip(whole_metrics, timed, strict=True) if not t] == [
        n for n, t in zip(stepwise_metrics, timed, strict=True) if not t]
    assert sum(timed) == 1
    histories = whole_outcome[0]
    assert [dest for _, dest, *_ in histories["p000"]] == [S.LOADED, S.INITIALIZED, S.RUNNING]
    assert histories["p150_raises"][-1][1:5] == (S.FAILED, "fail", "start failed", "OSError")


#: Plugin code that makes its runner bring up, with their loads, the plugins loaded after it whatever they declare
#: (the runner decides by a function of its main module, which plugin code in it can replace).
LIAR = ("import sys\nfrom plugin_health import Plugin\n"
        "setattr(sys.modules['__main__'], '_may_come_up', lambda *args: True)\n"
        "class P(Plugin):\n    pass\n")
NEEDS_GHOST = "from plugin_health import Plugin\nclass P(Plugin):\n    requires = ('ghost',)\n"


def test_a_plugin_its_runner_brought_up_against_the_core_s_rules_is_not_believed(tmp_path: Path) -> None:
    """A runner made to bring up a plugin that needs another (missing here) answers that its initialize and start
    passed: the core does not take its word for it, and the plugin waits for what it needs (never RUNNING)."""
    directory = plugin_directory(tmp_path, 3, p500_liar=LIAR, p501_needs=NEEDS_GHOST)
    settings = load_settings({"plugin_path": str(directory), "health_interval": 3600}, environ={})
    core = Core(settings, MemoryStore())
    ups: list[str] = []
    answer = RunnerProcess.answer

    def watching(self: RunnerProcess, ident: int, timeout: float, method: str | None = None,
                 ahead: bool = False) -> dict[str, Any]:
        found = answer(self, ident, timeout, method, ahead)
        if found.get("up") is True:
            ups.append(found["result"]["name"])
        return found

    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(RunnerProcess, "answer", watching)
            core.start(background=False)
        assert "p501_needs" in ups  # its runner did bring it up
        assert core.manager.state_of("p501_needs") is S.UNAVAILABLE
        assert (core.manager.last("p501_needs").reason or "").startswith("dependency_missing")
        assert S.RUNNING not in [record.dest for record in core.manager.history("p501_needs")]
        assert core.manager.state_of("p000") is S.RUNNING
    finally:
        core.shutdown()


def test_observers_are_told_of_a_plugin_s_bring_up_in_one_call_or_one_call_each(core: Core) -> None:
    """A plugin brought up with its load made three calls (``initialize``, ``start``, its first ``health_check``): an
    observer with a ``many`` form is told of them in one call, in order; one without, once a call, in the same
    order; and an observer that fails is logged, and neither the plugin nor the other observers see it."""
    together: list[tuple[str, str, list[tuple[str, bool]]]] = []
    each: list[tuple[str, str, str, bool]] = []

    def broken(*args: object) -> None:
        raise RuntimeError("observer bug")

    core.loader.observe(broken, broken)
    core.loader.observe(lambda name, method, isolation, result: each.append((name, method, isolation, result.ok)),
                        lambda name, isolation, calls: together.append(
                            (name, isolation, [(method, result.ok) for method, result in calls])))
    lone: list[tuple[str, str, str, bool]] = []
    core.loader.observe(lambda name, method, isolation, result: lone.append((name, method, isolation, result.ok)))
    core.start(background=False)
    whole = [("initialize", True), ("start", True), ("health_check", True)]
    assert ("p000", "inline", whole) in together
    assert [call for call in lone if call[0] == "p000"] == [("p000", method, "inline", ok) for method, ok in whole]
    assert not [call for call in each if call[0] == "p000"]  # its many form was told instead
    assert ("p150_raises", "start", "inline", False) in lone  # not brought up whole: one call at a time
    assert sum(state is S.RUNNING for state in core.manager.all_states().values()) == 300


def test_an_observer_that_cannot_be_hashed_is_told_of_each_call(core: Core) -> None:
    """``observers`` is a plain list: an observer appended to it that cannot be hashed (a callable object with
    ``__eq__`` and no ``__hash__``) has no many form, and is told of a bring-up's calls one at a time."""
    told: list[tuple[str, str]] = []

    class Unhashable:
        __hash__ = None  # type: ignore[assignment]

        def __call__(self, name: str, method: str, isolation: str, result: object) -> None:
            told.append((name, method))

    core.loader.observers.append(Unhashable())
    core.start(background=False)
    assert [method for name, method in told if name == "p000"] == ["initialize", "start", "health_check"]


def test_a_snapshot_shows_the_version_as_its_plugin_declared_it(tmp_path: Path) -> None:
    """Versions that PEP 440 calls equal are written as each plugin declared them (``1.0`` and ``1.0.0`` are equal
    versions, not the same text): a version's text is never taken from another's."""
    directory = plugin_directory(
        tmp_path, 0,
        a="from plugin_health import Plugin\nclass P(Plugin):\n    version = '1.0'\n",
        b="from plugin_health import Plugin\nclass P(Plugin):\n    version = '1.0.0'\n",
        c="from plugin_health import Plugin\nclass P(Plugin):\n    version = '1.0'\n")
    settings = load_settings({"plugin_path": str(directory), "health_interval": 3600}, environ={})
    core = Core(settings, MemoryStore())
    try:
        core.start(background=False)
        versions = {name: core.store.snapshot(name).version for name in ("a", "b", "c")}  # type: ignore[union-attr]
        assert versions == {"a": "1.0", "b": "1.0.0", "c": "1.0"}
    finally:
        core.shutdown()
