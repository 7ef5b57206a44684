"""Stores keep snapshots and bounded history, drop ghosts, and (SQLite) share them between processes."""

from __future__ import annotations

import multiprocessing
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from plugin_health.errors import ConfigError
from plugin_health.lifecycle import PluginLifecycleState, TransitionRecord
from plugin_health.store import MemoryStore, PluginSnapshot, SQLiteStore, StateStore, check_url, open_store
from plugin_health.store.base import Stamps, record_from_json, record_to_json
from plugin_health.store.feed import Feed

S = PluginLifecycleState


def snap(name: str, state: S = S.RUNNING, **kw: object) -> PluginSnapshot:
    return PluginSnapshot(name=name, state=state, since=datetime.now(UTC), **kw)  # type: ignore[arg-type]


def rec(name: str, source: S | None, dest: S, trigger: str = "start") -> TransitionRecord:
    return TransitionRecord.now(name, source, dest, trigger, reason="r", error_type="E", error="boom")


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StateStore]:
    made: StateStore
    if request.param == "memory":
        made = MemoryStore(history_limit=3)
    else:
        made = SQLiteStore(tmp_path / "s.db", history_limit=3)
    yield made
    assert made.degraded() is None
    made.close()


def test_snapshot_round_trip(store: StateStore) -> None:
    original = snap(
        "auth", S.FAILED, version="1.0", reason="start failed", error_type="OSError", error="x", requires=("db>=1",),
        critical=True, isolation="process", tools=("a", "b"), consecutive_failures=2, restarts=1,
        last_check=datetime.now(UTC), last_check_ok=False, allowed=("reset",), stale_after=datetime.now(UTC),
    )
    store.put(original)
    assert store.snapshot("auth") == original
    assert store.snapshot("ghost") is None


def test_snapshots_sorted_and_version_grows(store: StateStore) -> None:
    v0 = store.version()
    for name in ("c", "a", "b"):
        store.put(snap(name))
    assert [s.name for s in store.snapshots()] == ["a", "b", "c"]
    assert store.version() == v0 + 3


def test_critical_snapshots_are_the_critical_ones_by_name(store: StateStore) -> None:
    for name, critical in (("c", True), ("a", False), ("d", True), ("b", True), ("e", False)):
        store.put(snap(name, critical=critical))
    assert store.critical_snapshots() == [s for s in store.snapshots() if s.critical]
    assert [s.name for s in store.critical_snapshots()] == ["b", "c", "d"]
    store.put(snap("c", S.FAILED, critical=True, reason="start failed"))  # read again as it is now
    store.put(snap("d", critical=False))
    assert [(s.name, s.state) for s in store.critical_snapshots()] == [("b", S.RUNNING), ("c", S.FAILED)]


def test_critical_snapshots_parse_no_other_row(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``/readyz`` judges the critical plugins at each store version: with 10,000 plugins and none critical,
    reading and parsing every snapshot was 160 ms of a worker's first probe after a change, the query 18 ms."""
    sqlite = SQLiteStore(tmp_path / "s.db")
    sqlite.put_many([snap(f"p{i:03d}", critical=i % 50 == 0) for i in range(200)])
    parsed: list[str] = []
    from_json = PluginSnapshot.from_json
    monkeypatch.setattr(PluginSnapshot, "from_json", lambda text: parsed.append(text) or from_json(text))
    assert [s.name for s in sqlite.critical_snapshots()] == ["p000", "p050", "p100", "p150"]
    assert len(parsed) == 4
    sqlite.close()


def test_critical_snapshots_without_sqlites_json_functions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sqlite = SQLiteStore(tmp_path / "s.db")
    sqlite.put_many([snap("a", critical=True), snap("b"), snap("c", critical=True)])
    read = sqlite._read

    def without_json1(sql: str, params: tuple[str, ...] = ()) -> list[tuple[str]]:
        if "json_extract" in sql:
            raise sqlite3.OperationalError("no such function: json_extract")
        return read(sql, params)

    monkeypatch.setattr(sqlite, "_read", without_json1)
    assert [s.name for s in sqlite.critical_snapshots()] == ["a", "c"]
    sqlite.close()


def test_each_read_sees_what_changed_since_the_last(store: StateStore) -> None:
    store.put(snap("a"))
    store.put(snap("b"))
    assert [(s.name, s.state) for s in store.snapshots()] == [("a", S.RUNNING), ("b", S.RUNNING)]
    store.put(snap("a", S.FAILED, reason="start failed"))
    store.begin(["a"])
    assert [(s.name, s.state, s.reason) for s in store.snapshots()] == [("a", S.FAILED, "start failed")]


def test_meta_does_not_change_the_version(store: StateStore) -> None:
    v0 = store.version()
    store.set_meta("heartbeat", "1")
    assert store.get_meta("heartbeat") == "1"
    assert store.get_meta("missing") is None
    assert store.version() == v0


def test_history_is_bounded_and_ordered(store: StateStore) -> None:
    records = [rec("p", None, S.LOADED, "load"), rec("p", S.LOADED, S.FAILED, "fail"),
               rec("p", S.FAILED, S.LOADED, "reset"), rec("p", S.LOADED, S.INITIALIZED, "initialize")]
    for record in records:
        store.put(snap("p", record.dest), record)
    store.put(snap("q"), rec("q", None, S.LOADED, "load"))
    assert store.history("p") == records[1:]
    assert [r.plugin for r in store.history("q")] == ["q"]


def test_begin_drops_ghost_snapshots_keeps_history(store: StateStore) -> None:
    store.put(snap("old"), rec("old", None, S.LOADED, "load"))
    store.put(snap("kept"))
    store.begin(["kept", "new"])
    assert [s.name for s in store.snapshots()] == ["kept"]
    assert len(store.history("old")) == 1


def test_healthy_is_running_with_no_failed_check() -> None:
    assert snap("a").healthy
    assert snap("a", last_check_ok=True).healthy
    assert not snap("a", last_check_ok=False).healthy
    assert not snap("a", S.FAILED).healthy


def _writer(path: str, name: str, count: int) -> None:
    writer = SQLiteStore(path)
    for i in range(count):
        writer.put(snap(name, version=str(i)), rec(name, S.LOADED, S.INITIALIZED))
    writer.close()


def test_sqlite_is_shared_between_processes(tmp_path: Path) -> None:
    path = str(tmp_path / "shared.db")
    reader = SQLiteStore(path)
    ctx = multiprocessing.get_context("spawn")
    writers = [ctx.Process(target=_writer, args=(path, f"w{i}", 50)) for i in range(3)]
    for process in writers:
        process.start()
    for process in writers:
        process.join(60)
        assert process.exitcode == 0
    assert [s.name for s in reader.snapshots()] == ["w0", "w1", "w2"]
    assert all(s.version == "49" for s in reader.snapshots())
    assert reader.version() == 150
    assert len(reader.history("w1")) == 50


@pytest.mark.parametrize(
    ("url", "kind"),
    [(None, SQLiteStore), ("memory://", MemoryStore), ("sqlite:///{tmp}/x.db", SQLiteStore)],
)
def test_open_store(tmp_path: Path, url: str | None, kind: Callable[..., StateStore]) -> None:
    made = open_store(None if url is None else url.format(tmp=tmp_path), tmp_path)
    assert isinstance(made, kind)  # type: ignore[arg-type]
    made.close()


def test_a_redis_url_opens_this_instances_own_sqlite_store(tmp_path: Path) -> None:
    made = open_store("redis://127.0.0.1:1/0?prefix=svc", tmp_path, instance="web-1:8000")
    assert isinstance(made, SQLiteStore)
    assert made.shared
    assert made.path == tmp_path / "instance-web-1:8000.sqlite3"  # two instances in one directory keep apart
    assert made.degraded() is None  # until its core says its copy to Redis is behind
    made.close()
    with pytest.raises(ConfigError, match="PLUGIN_HEALTH_STORE_URL"):
        open_store("redis://127.0.0.1:1/0?prefix=a%20b", tmp_path)


def test_open_store_refuses_unknown_urls(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="PLUGIN_HEALTH_STORE_URL"):
        open_store("postgres://x", tmp_path)


@pytest.mark.parametrize("url", [None, "memory://", "sqlite:////nowhere/yet.db", "redis://127.0.0.1:1/0?prefix=svc"])
def test_check_url_takes_what_open_store_opens(url: str | None) -> None:
    check_url(url)  # and opens nothing: no file, no connection


@pytest.mark.parametrize(("url", "expected"), [
    ("postgres://x", "expected empty, memory://, sqlite:///path or redis://host:port/db"),
    ("sqlite://relative.db", "expected empty, memory://, sqlite:///path or redis://host:port/db"),
    ("redis://127.0.0.1:1/0?prefix=a%20b", "expected a prefix without spaces"),
])
def test_check_url_names_the_variable(url: str, expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        check_url(url)
    assert str(caught.value) == f"PLUGIN_HEALTH_STORE_URL={url!r} is invalid: {expected}"


def test_put_many_is_one_version_step(store: StateStore) -> None:
    store.put(snap("a"))
    before = store.version()
    store.put_many([snap("b"), snap("a", S.FAILED), snap("c")])
    assert store.version() == before + 1
    assert [(s.name, s.state) for s in store.snapshots()] == [("a", S.FAILED), ("b", S.RUNNING), ("c", S.RUNNING)]
    assert store.history("a") == []  # snapshots only: no transition recorded


def test_put_many_with_records_records_them_in_order_in_one_version_step(store: StateStore) -> None:
    """A batch of a load phase: every transition recorded, in order, with its plugin's snapshot; one version step."""
    store.put(snap("q"), rec("q", None, S.LOADED, "load"))
    before, seq = store.version(), store.last_seq()
    records = [rec("p", None, S.LOADED, "load"), rec("p", S.LOADED, S.INITIALIZED, "initialize"),
               rec("q", S.LOADED, S.FAILED, "fail"), rec("p", S.INITIALIZED, S.RUNNING, "start"),
               rec("p", S.RUNNING, S.FAILED, "fail")]
    store.put_many([snap("p", S.FAILED), snap("q", S.FAILED)], records)
    assert store.version() == before + 1
    assert [(s.name, s.state) for s in store.snapshots()] == [("p", S.FAILED), ("q", S.FAILED)]
    found = store.records_since(seq)
    # Trimmed to the history limit (3 a plugin) as if recorded one by one: p's first is no longer kept.
    assert [(plugin, record_from_json(data)) for _, plugin, data in found] == [(r.plugin, r) for r in records[1:]]
    assert store.history("p") == records[1:2] + records[3:]
    assert [r.trigger for r in store.history("q")] == ["load", "fail"]
    assert store.transition_counts() == {
        (None, "LOADED"): 1, ("LOADED", "INITIALIZED"): 1, ("LOADED", "FAILED"): 1, ("INITIALIZED", "RUNNING"): 1,
        ("RUNNING", "FAILED"): 1}


def test_a_batch_of_hundreds_keeps_every_order(tmp_path: Path) -> None:
    """A load's batch holds thousands of rows, which SQLite takes many to a statement: the transitions keep their
    order (sequence numbers), and a plugin's last snapshot in the batch is the one kept, whatever statement each
    lands in."""
    store = SQLiteStore(tmp_path / "s.db", history_limit=5)
    names = [f"p{i:03d}" for i in range(150)]  # rows past whole statements of 64 too
    records = [rec(name, source, dest, trigger) for source, dest, trigger in (
        (None, S.LOADED, "load"), (S.LOADED, S.INITIALIZED, "initialize"), (S.INITIALIZED, S.RUNNING, "start"))
        for name in reversed(names)]
    snapshots = [snap(name, S.INITIALIZED) for name in names] + [snap(name, S.RUNNING) for name in reversed(names)]
    store.put_many(snapshots, records)
    found = store.records_since(0)
    assert [(plugin, record_from_json(data)) for _, plugin, data in found] == [(r.plugin, r) for r in records]
    assert [seq for seq, _, _ in found] == sorted(seq for seq, _, _ in found)
    assert [(s.name, s.state) for s in store.snapshots()] == [(name, S.RUNNING) for name in names]
    assert store.transition_counts() == {(None, "LOADED"): 150, ("LOADED", "INITIALIZED"): 150,
                                         ("INITIALIZED", "RUNNING"): 150}
    store.close()


def test_a_batch_that_cannot_be_written_records_nothing(tmp_path: Path) -> None:
    """All or nothing: a batch is one transaction, so what a reader sees is always a prefix of what happened."""
    store = SQLiteStore(tmp_path / "s.db", history_limit=3)
    store.put(snap("p"), rec("p", None, S.LOADED, "load"))
    seq, version = store.last_seq(), store.version()

    class Unwritable(PluginSnapshot):
        def to_json(self, stamps: object = None) -> str:
            raise RuntimeError("disk gone")

    broken = Unwritable(name="r", state=S.RUNNING, since=datetime.now(UTC))
    with pytest.raises(RuntimeError):
        store.put_many([snap("q"), broken], [rec("q", None, S.LOADED, "load"), rec("r", None, S.LOADED, "load")])
    assert (store.last_seq(), store.version(), [s.name for s in store.snapshots()]) == (seq, version, ["p"])
    store.close()


def test_records_since_lists_what_is_kept_in_order(store: StateStore) -> None:
    """What /v1/events and ``plugins watch`` follow: every kept transition after a sequence number, oldest first."""
    assert (store.last_seq(), store.records_since(0)) == (0, [])
    records = [rec("p", None, S.LOADED, "load"), rec("q", None, S.LOADED, "load"),
               rec("p", S.LOADED, S.INITIALIZED, "initialize"), rec("q", S.LOADED, S.FAILED, "fail"),
               rec("p", S.INITIALIZED, S.RUNNING, "start")]
    for record in records:
        store.put(snap(record.plugin, record.dest), record)
    store.put(snap("p"))  # a snapshot without a transition moves no sequence number
    last = store.last_seq()
    found = store.records_since(0)
    assert [(plugin, record_from_json(data)) for _, plugin, data in found] == [(r.plugin, r) for r in records]
    seqs = [seq for seq, _, _ in found]
    assert seqs == sorted(seqs)
    assert len(set(seqs)) == len(seqs)
    assert seqs[-1] == last
    assert store.records_since(seqs[2]) == found[3:]
    assert store.records_since(0, limit=2) == found[:2]
    assert store.records_since(last) == []
    # Past the history limit (3 a plugin), a plugin's oldest records are no longer kept, nor listed.
    store.put(snap("p"), rec("p", S.RUNNING, S.FAILED, "fail"))
    assert store.last_seq() > last
    assert [(plugin, record_from_json(data).trigger) for _, plugin, data in store.records_since(0)] == [
        ("q", "load"), ("p", "initialize"), ("q", "fail"), ("p", "start"), ("p", "fail")]


def test_transition_counts_count_the_kept_histories(store: StateStore) -> None:
    for record in (rec("p", None, S.LOADED, "load"), rec("p", S.LOADED, S.FAILED, "fail"),
                   rec("p", S.FAILED, S.LOADED, "reset"), rec("p", S.LOADED, S.FAILED, "fail"),
                   rec("q", None, S.LOADED, "load")):
        store.put(snap(record.plugin, record.dest), record)
    # p keeps its last three: fail, reset, fail.
    assert store.transition_counts() == {("LOADED", "FAILED"): 2, ("FAILED", "LOADED"): 1, (None, "LOADED"): 1}


def test_a_store_file_made_before_the_counts_is_counted_once(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    SQLiteStore(path, history_limit=3).close()
    with sqlite3.connect(path) as conn:  # as a file of the previous version: history, no counts
        conn.executescript("DROP TRIGGER history_uncounted; DROP TABLE moves; "
                           "DELETE FROM meta WHERE key = 'moves_counted';")
        conn.executemany("INSERT INTO history (plugin, data) VALUES (?, ?)", [
            ("p", record_to_json(rec("p", None, S.LOADED, "load"))),
            ("p", record_to_json(rec("p", S.LOADED, S.FAILED, "fail")))])
    for _ in range(2):  # opened again and again: counted once
        store = SQLiteStore(path, history_limit=3)
        assert store.transition_counts() == {(None, "LOADED"): 1, ("LOADED", "FAILED"): 1}
        store.close()
    store = SQLiteStore(path, history_limit=3)
    store.put(snap("p"), rec("p", S.FAILED, S.LOADED, "reset"))
    store.put(snap("p"), rec("p", S.LOADED, S.FAILED, "fail"))  # the first one (load) is trimmed
    assert store.transition_counts() == {("LOADED", "FAILED"): 2, ("FAILED", "LOADED"): 1}
    store.close()


def test_a_feed_reads_what_comes_after_its_position(store: StateStore) -> None:
    store.put(snap("p"), rec("p", None, S.LOADED, "load"))
    now = Feed(store)
    assert now.read() == []  # a feed without a position starts with the next transition
    everything = Feed(store, after=0)
    ahead = Feed(store, after=store.last_seq() + 50)  # a position this store never gave: a new store since
    store.put(snap("p"), rec("p", S.LOADED, S.INITIALIZED, "initialize"))
    assert [r.trigger for _, r in now.read()] == ["initialize"]
    assert now.read() == []
    assert [r.trigger for _, r in everything.read(limit=1)] == ["load"]
    assert [r.trigger for _, r in everything.read()] == ["initialize"]
    assert everything.position == store.last_seq()
    assert [r.trigger for _, r in ahead.read()] == ["load", "initialize"]


def data_version_looks(store: SQLiteStore) -> list[str]:
    """The ``PRAGMA data_version`` statements the store's watch connection runs from now on (opened if need be)."""
    store.version()
    assert store._watch is not None
    looks: list[str] = []
    store._watch.set_trace_callback(lambda sql: looks.append(sql) if "data_version" in sql else None)
    return looks


def test_a_pin_takes_one_look_and_outside_one_each_call_looks(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "s.db")
    store.set_meta("loaded", "1")
    looks = data_version_looks(store)
    with store.look():
        assert (store.get_meta("host"), store.get_meta("loaded"), store.version()) == (None, "1", 0)
        assert store.version() == 0
    assert len(looks) == 1
    store.version()
    store.get_meta("loaded")
    assert len(looks) == 3  # outside a pin: one look per call, as ever
    store.close()


def test_a_pin_is_never_older_than_a_write_committed_before_it(tmp_path: Path) -> None:
    reader, writer = SQLiteStore(tmp_path / "s.db"), SQLiteStore(tmp_path / "s.db")
    assert (reader.version(), reader.get_meta("loaded")) == (0, None)  # cached at this data_version
    writer.put(snap("p"))
    writer.set_meta("loaded", "1")
    with reader.look():
        assert (reader.version(), reader.get_meta("loaded")) == (1, "1")
        writer.put(snap("p"))  # after the pin's look: it may be seen or not before the pin ends
        assert reader.version() in (1, 2)
    assert reader.version() == 2  # outside the pin: the next call sees it
    with reader.look():
        reader.put(snap("p"))  # a write of this process in a pin: not promised before the block ends
    assert reader.version() == 3
    reader.close()
    writer.close()


def test_pins_nest_and_end_with_the_outer_one(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "s.db")
    looks = data_version_looks(store)
    with store.look():
        store.version()
        with store.look():  # joins the outer pin: no look of its own
            store.version()
        store.version()
        assert len(looks) == 1
    store.version()
    assert len(looks) == 2
    with store.look():  # a pin that never looked ends as cleanly
        pass
    with store.look(), store.look():
        store.version()
        store.version()
    assert len(looks) == 3
    store.close()


def test_a_pin_is_its_threads_alone(tmp_path: Path) -> None:
    store, writer = SQLiteStore(tmp_path / "s.db"), SQLiteStore(tmp_path / "s.db")
    looks = data_version_looks(store)
    seen: list[int] = []
    with store.look():
        assert store.version() == 0
        writer.put(snap("p"))  # after this thread's look, before the other thread's
        other = threading.Thread(target=lambda: seen.extend((store.version(), store.version())))
        other.start()
        other.join()
        assert seen == [1, 1]  # another thread is not in this pin: it looks at each call, and sees the write
        assert len(looks) == 3
        assert store.version() == 1  # what the other thread read since is newer: fine
        assert len(looks) == 3
    store.close()
    writer.close()


def test_a_pin_is_its_greenlets_alone(tmp_path: Path) -> None:
    """Under gevent workers every request is a greenlet of one thread: a pin is per greenlet (a context variable;
    new greenlets start with an empty context), patched or not."""
    gevent = pytest.importorskip("gevent")
    store = SQLiteStore(tmp_path / "s.db")
    looks = data_version_looks(store)

    def request() -> None:
        with store.look():
            store.version()
            gevent.sleep(0)  # the other greenlet runs in between, in its own pin
            store.version()

    gevent.joinall([gevent.spawn(request), gevent.spawn(request)], raise_error=True)
    assert len(looks) == 2
    store.close()


def test_a_pin_changes_nothing_after_it(store: StateStore) -> None:
    with store.look(), store.look():
        before = store.version()
        store.put(snap("p"))
        assert store.version() >= before
    assert store.version() == before + 1


def test_opening_waits_for_another_process_making_the_file(tmp_path: Path) -> None:
    """Two processes open a new store at once (the gunicorn master reads the core's beat while the core makes the
    file): SQLite answers a switch to WAL "database is locked" at once, with no busy wait, while another connection
    writes to a file still in rollback mode. Opening waits for it, as any other statement does."""
    path = tmp_path / "state.db"
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute("CREATE TABLE first (x)")
    other.execute("BEGIN IMMEDIATE")
    other.execute("INSERT INTO first VALUES (1)")
    release = threading.Timer(0.3, lambda: other.execute("COMMIT"))
    release.start()
    try:
        store = SQLiteStore(path)
    finally:
        release.join()
        other.close()
    store.put(snap("after"))
    assert [s.name for s in store.snapshots()] == ["after"]
    store.close()


def test_opening_gives_up_after_the_busy_wait(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "state.db"
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("CREATE TABLE first (x)")
    other.execute("BEGIN IMMEDIATE")
    other.execute("INSERT INTO first VALUES (1)")
    monkeypatch.setattr(SQLiteStore, "BUSY_WAIT", 0.2)
    began = time.monotonic()
    try:
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            SQLiteStore(path)
    finally:
        other.close()
    assert 0.2 <= time.monotonic() - began < 5.0  # it waited its busy wait, and no longer than a bounded while


_TEXT = st.text(st.characters(codec="utf-8"), max_size=40)


_WHEN = st.datetimes(timezones=st.just(UTC))


@given(plugin=_TEXT, reason=st.none() | _TEXT, error=st.none() | _TEXT, output=st.none() | _TEXT,
       observed=st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True, allow_infinity=True) | _TEXT,
       tools=st.lists(_TEXT, max_size=3).map(tuple), source=st.none() | st.sampled_from(PluginLifecycleState),
       dest=st.sampled_from(PluginLifecycleState), when=st.none() | _WHEN, ok=st.none() | st.booleans(),
       counts=st.tuples(st.integers(0, 10**12), st.integers(0, 10**12)), flags=st.tuples(*[st.booleans()] * 3))
def test_records_and_snapshots_are_kept_as_json_dumps_writes_them(
    plugin: str, reason: str | None, error: str | None, output: str | None, observed: object, tools: tuple[str, ...],
    source: PluginLifecycleState | None, dest: PluginLifecycleState, when: datetime | None, ok: bool | None,
    counts: tuple[int, int], flags: tuple[bool, bool, bool],
) -> None:
    """The stores keep records and snapshots as compact JSON written field by field: the very text
    ``json.dumps(..., separators=(",", ":"))`` writes of their dicts, whatever the strings, numbers and times."""
    import json

    from plugin_health.store.base import record_to_json

    dumps = json.JSONEncoder(separators=(",", ":")).encode

    def text(field: str, value: str | None) -> str | None:  # each field its own text: none can pass for another
        return None if value is None else f"{field}:{value}"

    record = TransitionRecord.now(plugin, source, dest, "fail", text("reason", reason), text("type", reason), error)
    assert record_to_json(record) == dumps(record.to_dict())
    snapshot = PluginSnapshot(name=plugin, state=dest, since=record.at, version=text("version", reason),
                              reason=reason, error_type=text("type", reason), error=error, requires=tools,
                              critical=flags[0], isolation=text("isolation", reason), tools=tools[1:],
                              consecutive_failures=counts[0], restarts=counts[1], last_check=when, last_check_ok=ok,
                              allowed=tools[:1], stale_after=None if when is None else when.replace(microsecond=1),
                              singleton=flags[1], owner=text("owner", output), standby=flags[2],
                              check_status=text("status", reason), check_output=output,
                              observed_unit=text("unit", output), observed_value=observed)  # type: ignore[arg-type]
    assert snapshot.to_json() == _standard_snapshot_json(snapshot, dumps)
    stamps = Stamps()  # the texts of times shared by writes, as a batch shares them: the same text
    assert record_to_json(record, stamps) == record_to_json(record) == record_to_json(record, stamps)
    assert snapshot.to_json(stamps) == snapshot.to_json() == snapshot.to_json(stamps)


def test_times_written_from_shared_texts_are_each_time_s_own() -> None:
    """A batch's writes share the text of each UTC time (``Stamps``); a time in another zone, equal to a UTC one, is
    written in its own zone, as ``isoformat`` writes it."""
    from datetime import timedelta, timezone

    from plugin_health.store.base import record_to_json

    utc = datetime(2026, 12, 2, 23, 0, 0, 5, tzinfo=UTC)
    east = utc.astimezone(timezone(timedelta(hours=1)))
    assert east == utc
    stamps = Stamps()
    first = TransitionRecord("p", None, PluginLifecycleState.LOADED, "load", at=utc)
    second = TransitionRecord("p", PluginLifecycleState.LOADED, PluginLifecycleState.FAILED, "fail", at=east)
    texts = [record_to_json(first, stamps), record_to_json(second, stamps)]
    assert [record_from_json(text).at.isoformat() for text in texts] == [utc.isoformat(), east.isoformat()]
    assert stamps == {utc: "2026-12-02T23:00:00.000005+00:00"}


def test_a_record_or_snapshot_holding_what_its_fields_should_not_is_written_as_json_dumps_would() -> None:
    """A value of another type than its field's (a subclass of ``str``, a number where text goes) is not refused:
    it is written as ``json.dumps`` would write it, as before records and snapshots were written field by field."""
    import json

    from plugin_health.store.base import record_to_json

    class Text(str):
        pass

    dumps = json.JSONEncoder(separators=(",", ":")).encode
    odd = TransitionRecord.now(Text("p"), None, PluginLifecycleState.LOADED, 5, reason=3.5)  # type: ignore[arg-type]
    assert record_to_json(odd) == dumps(odd.to_dict())
    since = datetime(2026, 12, 2, tzinfo=UTC)
    snapshot = PluginSnapshot(name="p", state=PluginLifecycleState.RUNNING, since=since, version=2,  # type: ignore
                              critical=1, requires=["a"], consecutive_failures=True, restarts=2.5,  # type: ignore
                              allowed=(Text("stop"),), owner=Text("me"))
    assert snapshot.to_json() == _standard_snapshot_json(snapshot, dumps)


def _standard_snapshot_json(snapshot: PluginSnapshot, dumps: Any) -> str:
    import dataclasses

    data = {field.name: getattr(snapshot, field.name) for field in dataclasses.fields(snapshot)}
    data["state"] = snapshot.state.value
    data["since"] = snapshot.since.isoformat()
    data["last_check"] = None if snapshot.last_check is None else snapshot.last_check.isoformat()
    data["stale_after"] = None if snapshot.stale_after is None else snapshot.stale_after.isoformat()
    return str(dumps(data))


#: The trigger the version before counted history rows with, one at a time.
_OLD_COUNTING = """
CREATE TRIGGER history_counted AFTER INSERT ON history BEGIN
    INSERT INTO moves (source, dest, n)
        VALUES (coalesce(json_extract(new.data, '$.from'), ''), json_extract(new.data, '$.to'), 1)
        ON CONFLICT (source, dest) DO UPDATE SET n = n + 1;
END;
DELETE FROM meta WHERE key = 'moves_counted';
"""


def test_a_store_file_counted_by_a_trigger_is_counted_by_its_writer_from_then_on(tmp_path: Path) -> None:
    """A file of the version that counted each history row by a trigger holds its counts already: they are kept,
    not counted again, and the trigger goes (the writer counts a batch at a time, and would count twice with it)."""
    path = tmp_path / "older.db"
    SQLiteStore(path, history_limit=3).close()
    with sqlite3.connect(path) as conn:  # as the version before left it: a trigger counted the rows
        conn.executescript(_OLD_COUNTING)
        conn.executemany("INSERT INTO history (plugin, data) VALUES (?, ?)", [
            ("p", record_to_json(rec("p", None, S.LOADED, "load"))),
            ("p", record_to_json(rec("p", S.LOADED, S.FAILED, "fail")))])
    for _ in range(2):
        store = SQLiteStore(path, history_limit=3)
        assert store.transition_counts() == {(None, "LOADED"): 1, ("LOADED", "FAILED"): 1}
        store.close()
    store = SQLiteStore(path, history_limit=3)
    store.put_many([snap("p"), snap("q")], [rec("p", S.FAILED, S.LOADED, "reset"), rec("q", None, S.LOADED, "load"),
                                           rec("p", S.LOADED, S.FAILED, "fail")])  # p's load is trimmed
    assert store.transition_counts() == {("LOADED", "FAILED"): 2, ("FAILED", "LOADED"): 1, (None, "LOADED"): 1}
    store.close()


def test_a_snapshot_made_by_filling_its_slots_is_the_one_its_fields_make() -> None:
    """``PluginSnapshot.made`` fills the slots itself (the frozen dataclass's ``__init__`` sets each field through
    ``object.__setattr__``): given each field a value of its own, it makes exactly what the constructor makes, and
    the snapshot stays frozen."""
    import dataclasses

    since = datetime(2026, 12, 2, tzinfo=UTC)
    values: dict[str, Any] = {
        "name": "p", "state": PluginLifecycleState.RUNNING, "since": since, "version": "1.0", "reason": "r",
        "error_type": "E", "error": "e", "requires": ("a",), "critical": True, "isolation": "inline",
        "tools": ("t",), "consecutive_failures": 2, "restarts": 3, "last_check": since.replace(second=1),
        "last_check_ok": False, "allowed": ("fail",), "stale_after": since.replace(second=2), "singleton": True,
        "owner": "me", "standby": True, "check_status": "warn", "observed_value": 4.5, "observed_unit": "s",
        "check_output": "slow"}
    assert set(values) == {field.name for field in dataclasses.fields(PluginSnapshot)}
    made = PluginSnapshot.made(**values)
    assert made == PluginSnapshot(**values)
    assert dataclasses.asdict(made) == values
    assert made.to_json() == PluginSnapshot(**values).to_json()
    with pytest.raises(dataclasses.FrozenInstanceError):
        made.name = "q"  # type: ignore[misc]


def test_a_slot_maker_makes_what_the_constructor_makes_whatever_the_fields_are_called() -> None:
    """``slot_maker`` writes a maker out of the class's field names: one named as a name of the maker's own
    (``made``, ``cls``) is filled like any other; one named as its reserved prefix is refused when the maker is made;
    every field must be given (defaults are the constructor's business)."""
    import dataclasses

    from plugin_health.frozen import slot_maker

    @dataclasses.dataclass(frozen=True, slots=True)
    class Odd:
        made: int
        cls: str
        new: tuple[int, ...] = ()

    make = slot_maker(Odd)
    assert make(1, "c", (2,)) == Odd(1, "c", (2,))
    assert make(made=3, cls="d", new=()) == Odd(3, "d")
    with pytest.raises(TypeError):
        make(1, "c")
    with pytest.raises(dataclasses.FrozenInstanceError):
        make(1, "c", ()).made = 2  # type: ignore[misc]

    @dataclasses.dataclass(frozen=True, slots=True)
    class Clash:
        _slot_new: int

    with pytest.raises(ValueError, match="_slot_"):
        slot_maker(Clash)
