"""The embedded default store: SQLite in WAL mode in the run directory, shared by every local process.

Writers (the host) use ``BEGIN IMMEDIATE``; readers (every gunicorn worker) read without blocking writers.
``version()`` is one ``PRAGMA data_version`` on a connection of its own (which tells whether any other connection
committed since its last look, without reading a page), and one indexed read only when one did: so a worker can
serve a cached answer until something changes, and knows at once when it has.

Connections are pooled per process, not kept per thread: a call takes an idle connection (or opens one), runs
its statements, and gives it back; at most ``KEEP_IDLE`` idle ones are kept. So a process holds as many
connections as calls it runs at once, whatever its threads: under gevent, where every greenlet is a "thread"
of its own, one connection per client connection would pile up (measured: 294 descriptors across five workers
after 2,000 connections); a call never waits for another to give its connection back, so a slow write never
holds up a read of the same process.

A request that asks ``version()`` and ``get_meta()`` several times can pin one look for its duration
(``with store.look():``): every call of that request then reuses the ``PRAGMA data_version`` its first call ran,
instead of one each (``/readyz`` of a gunicorn worker made three, 3 us each).
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar, Token
from pathlib import Path

from plugin_health.lifecycle import TransitionRecord
from plugin_health.store.base import PluginSnapshot, Stamps, record_from_json, record_to_json

_SCHEMA = """
CREATE TABLE IF NOT EXISTS plugins (name TEXT PRIMARY KEY, data TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS history (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, plugin TEXT NOT NULL, data TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS history_by_plugin ON history (plugin, seq);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT OR IGNORE INTO meta (key, value) VALUES ('version', '0');
INSERT OR IGNORE INTO meta (key, value) VALUES ('store_id', lower(hex(randomblob(8))));
"""
#: How many kept transitions went from each state to each other one (source '' for a first state), so that reading
#: them costs nine rows whatever the history holds (a GROUP BY over 100,000 rows took 120 ms): counted by the writer
#: as it inserts history rows, a batch at a time (``_count_moves``; a trigger a row, which read each row's JSON, was
#: half the time of inserting it), and uncounted by a trigger as rows are trimmed. A file made before the counts is
#: counted once, in the same transaction; one that a trigger counted (``history_counted``) is counted already, and
#: its trigger goes (a file this version wrote is not to be written by an older one, whose trigger would count again).
_MOVES = """
BEGIN IMMEDIATE;
CREATE TABLE IF NOT EXISTS moves (
    source TEXT NOT NULL, dest TEXT NOT NULL, n INTEGER NOT NULL, PRIMARY KEY (source, dest)
);
INSERT INTO moves (source, dest, n)
    SELECT coalesce(json_extract(data, '$.from'), ''), json_extract(data, '$.to'), count(*) FROM history
    WHERE NOT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'trigger' AND name = 'history_counted')
    AND NOT EXISTS (SELECT 1 FROM meta WHERE key = 'moves_counted')
    GROUP BY 1, 2;
INSERT OR IGNORE INTO meta (key, value) VALUES ('moves_counted', '1');
DROP TRIGGER IF EXISTS history_counted;
CREATE TRIGGER IF NOT EXISTS history_uncounted AFTER DELETE ON history BEGIN
    UPDATE moves SET n = n - 1
        WHERE source = coalesce(json_extract(old.data, '$.from'), '') AND dest = json_extract(old.data, '$.to');
END;
COMMIT;
"""
_COUNT_MOVES = ("INSERT INTO moves (source, dest, n) VALUES (?, ?, ?) "
                "ON CONFLICT (source, dest) DO UPDATE SET n = n + excluded.n")
#: Meta key where the core says why its copy to the shared (Redis) store is behind ("" while it is not).
SHARED_PROBLEM_KEY = "shared-store-problem"
#: Forget a plugin's records past the history limit (its newest kept).
_TRIM = ("DELETE FROM history WHERE plugin = ? AND seq <= "
         "(SELECT seq FROM history WHERE plugin = ? ORDER BY seq DESC LIMIT 1 OFFSET ?)")
_UPSERT = "INSERT INTO plugins (name, data) VALUES {} ON CONFLICT (name) DO UPDATE SET data = excluded.data"
_APPEND = "INSERT INTO history (plugin, data) VALUES {}"
#: Rows a statement of ``_insert_pairs`` inserts (two parameters each: far below SQLite's least limit of 999).
_ROWS_A_STATEMENT = 64


def _insert_pairs(conn: sqlite3.Connection, statement: str, rows: list[tuple[str, str]]) -> None:
    """Run ``statement`` (an insert whose ``{}`` takes its ``VALUES`` rows) over ``rows`` of two values each, in
    order, :data:`_ROWS_A_STATEMENT` rows a statement: a row at a time (``executemany``) cost each row a step of its
    own, its own reset and a hand-over of the GIL, which the core's other threads wait on as thousands of plugins
    load (27 us a plugin loaded, its snapshot and three transitions, against 15 so). Rows go in the order given, so
    the last of a name is the one an upsert keeps and transitions get their sequence numbers in order."""
    whole = len(rows) - len(rows) % _ROWS_A_STATEMENT
    if whole:
        full = statement.format(_VALUES[_ROWS_A_STATEMENT])
        for start in range(0, whole, _ROWS_A_STATEMENT):
            conn.execute(full, [value for row in rows[start:start + _ROWS_A_STATEMENT] for value in row])
    if whole < len(rows):
        conn.execute(statement.format(_VALUES[len(rows) - whole]), [value for row in rows[whole:] for value in row])


#: The ``VALUES`` rows of ``_insert_pairs``' statements, by their count.
_VALUES = ["", *(",".join(["(?, ?)"] * count) for count in range(1, _ROWS_A_STATEMENT + 1))]
_UPSERT_ONE = _UPSERT.format(_VALUES[1])
_APPEND_ONE = _APPEND.format(_VALUES[1])


def _count_moves(conn: sqlite3.Connection, records: Iterable[TransitionRecord]) -> None:
    """Count the moves of ``records``, just inserted into the history, into ``moves`` (a statement a kind of move)."""
    moves = Counter([(record.source, record.dest) for record in records])  # states hash as their text: no value asked
    conn.executemany(_COUNT_MOVES, [("" if source is None else source._value_, dest._value_, n)
                                    for (source, dest), n in moves.items()])


class SQLiteStore:
    """A SQLite database file; a small pool of connections in each process."""

    #: Idle connections kept open per process (more are opened while more calls run at once, then closed).
    KEEP_IDLE = 4
    #: How long a statement waits for another connection's lock, in seconds (SQLite's busy timeout).
    BUSY_WAIT = 10.0

    def __init__(self, path: str | Path, history_limit: int = 100, shared: bool = False) -> None:
        self.path = Path(path)
        #: This is an instance's own store, copied to a shared one (Redis) by its core (``degraded`` then says
        #: when that copy cannot be made).
        self.shared = shared
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._history_limit = history_limit
        self._lock = threading.Lock()  # guards the two lists below, never held during a statement
        self._idle: list[sqlite3.Connection] = []
        self._inherited: list[sqlite3.Connection] = []  # opened before a fork: never used nor closed here
        self._pid = os.getpid()
        self._parsed: dict[str, PluginSnapshot] = {}  # the last read of snapshots(), by row text
        # version(): a connection only it uses (in this process), its last data_version and the version then.
        self._watch_lock = threading.Lock()
        self._watch: sqlite3.Connection | None = None
        self._watch_pid = 0
        self._data_version: int | None = None
        self._seen_version: int | None = None
        self._seen_meta: dict[str, str | None] = {}
        #: The pin of ``look()`` in the current thread or greenlet: None outside one, False inside one before its
        #: first look, True after it. A context variable, not a ``threading.local``: each thread and each greenlet
        #: (greenlet >= 0.4.17) has a context of its own whether gevent has patched ``threading`` or not, and a
        #: local made before the patch (a store opened by the master, before post_fork patches a worker) would be
        #: shared by every greenlet of the worker.
        self._pinned: ContextVar[bool | None] = ContextVar(f"sqlite-look-{id(self)}", default=None)
        with self._conn() as conn:
            conn.executescript(_SCHEMA)
            conn.executescript(_MOVES)

    def _open(self) -> sqlite3.Connection:
        # Used by one call at a time, but not always on the thread that opened it.
        conn = sqlite3.connect(self.path, timeout=self.BUSY_WAIT, isolation_level=None, check_same_thread=False)
        try:
            _into_wal(conn, time.monotonic() + self.BUSY_WAIT)
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute(f"PRAGMA busy_timeout={int(self.BUSY_WAIT * 1000)}")
        except BaseException:
            conn.close()
            raise
        return conn

    @contextmanager
    def _conn(self) -> Iterator[sqlite3.Connection]:
        """An idle connection of this process (or a new one) for the duration of the block."""
        with self._lock:
            self._forget_inherited()
            conn = self._idle.pop() if self._idle else None
        if conn is None:
            conn = self._open()
        try:
            yield conn
        finally:
            if conn.in_transaction:  # a transaction that could not even be rolled back: not for another call
                conn.close()
            else:
                with self._lock:
                    self._forget_inherited()
                    keep = len(self._idle) < self.KEEP_IDLE
                    if keep:
                        self._idle.append(conn)
                if not keep:
                    conn.close()

    def _forget_inherited(self) -> None:
        """In a child forked with idle connections: set them aside (the caller holds ``_lock``).

        SQLite connections must not cross a fork, and closing one in the child could undo what the parent holds
        (its locks, its WAL): they stay referenced, so never closed, and unused.
        """
        if self._pid != os.getpid():
            self._inherited += self._idle
            self._idle = []
            self._pid = os.getpid()

    @contextmanager
    def _write(self, bump: bool = True) -> Iterator[sqlite3.Connection]:
        with self._conn() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                if bump:
                    conn.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'version'")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def _read(self, sql: str, params: tuple[str, ...] = ()) -> list[tuple[str]]:
        """Every row of one query."""
        with self._conn() as conn:
            rows: list[tuple[str]] = conn.execute(sql, params).fetchall()
        return rows

    def begin(self, names: Iterable[str]) -> None:
        """Forget the snapshots of plugins not in ``names`` (history stays). The names kept are read and the others
        deleted by name (usually none: the core wrote every plugin's snapshot as it loaded): 7 ms for 10,000
        plugins, where filling a temporary table of the names to keep took 27, at the end of a start."""
        keep = set(names)
        with self._write() as conn:
            gone = [(name,) for (name,) in conn.execute("SELECT name FROM plugins") if name not in keep]
            conn.executemany("DELETE FROM plugins WHERE name = ?", gone)

    def put(self, snapshot: PluginSnapshot, record: TransitionRecord | None = None) -> None:
        """Publish a snapshot and its transition in one transaction; trim the history."""
        with self._write() as conn:
            conn.execute(_UPSERT_ONE, (snapshot.name, snapshot.to_json()))
            if record is not None:
                conn.execute(_APPEND_ONE, (record.plugin, record_to_json(record)))
                _count_moves(conn, (record,))
                conn.execute(_TRIM, (record.plugin, record.plugin, self._history_limit))

    def put_many(self, snapshots: Iterable[PluginSnapshot], records: Iterable[TransitionRecord] = ()) -> None:
        """Publish several snapshots, and the transitions that led there (in the order they happened), in one
        transaction: a batch is recorded whole or not at all. Each plugin's history is trimmed once."""
        stamps = Stamps()
        rows = [(snapshot.name, snapshot.to_json(stamps)) for snapshot in snapshots]
        records = list(records)
        history = [(record.plugin, record_to_json(record, stamps)) for record in records]
        with self._write() as conn:
            _insert_pairs(conn, _UPSERT, rows)
            if history:
                _insert_pairs(conn, _APPEND, history)
                _count_moves(conn, records)
                conn.executemany(_TRIM, [(name, name, self._history_limit) for name in dict.fromkeys(
                    plugin for plugin, _ in history)])

    def degraded(self) -> str | None:
        """None, but for an instance's own store whose copy to the shared store is behind: then why."""
        if not self.shared:
            return None  # this store is as available as the process itself
        return self.get_meta(SHARED_PROBLEM_KEY) or None

    # -- what the core copies to a shared store ---------------------------------------------------------

    def store_id(self) -> str:
        """A random id this database file got when it was made (a new file: a new id)."""
        return str(self._read("SELECT value FROM meta WHERE key = 'store_id'")[0][0])

    def last_seq(self) -> int:
        """The sequence number of the newest transition recorded (0: none)."""
        rows = self._read("SELECT coalesce(max(seq), 0) FROM history")
        return int(rows[0][0])

    def records_since(self, seq: int, limit: int | None = None) -> list[tuple[int, str, str]]:
        """The transitions recorded after ``seq`` (still kept), oldest first, at most ``limit``: (seq, plugin,
        record JSON)."""
        with self._conn() as conn:
            found: list[tuple[int, str, str]] = conn.execute(
                "SELECT seq, plugin, data FROM history WHERE seq > ? ORDER BY seq LIMIT ?",
                (seq, -1 if limit is None else limit)).fetchall()
        return found

    def transition_counts(self) -> dict[tuple[str | None, str], int]:
        """How many kept transitions went from each state to each other one (None: a first state)."""
        with self._conn() as conn:
            rows: list[tuple[str, str, int]] = conn.execute("SELECT source, dest, n FROM moves WHERE n > 0").fetchall()
        return {(source or None, dest): count for source, dest, count in rows}

    def rows(self) -> dict[str, str]:
        """Every plugin's snapshot as the JSON text kept, by name."""
        with self._conn() as conn:
            return dict(conn.execute("SELECT name, data FROM plugins").fetchall())

    def version(self) -> int:
        """Grows with every write by any process.

        Read again only when ``PRAGMA data_version`` says another connection committed since the last look (this
        connection never writes, so every write of every process counts): 3 us instead of 20 for a read of the
        meta table through the pool, on every cached answer. data_version is read first, so a write between the
        two statements makes the next call read again, never keeps an old version. A write of this process's own
        goes through another connection of the pool, so it counts too.
        """
        with self._watch_lock:
            watch = self._watched()
            version = self._seen_version
            if version is None:
                version = self._seen_version = int(
                    watch.execute("SELECT value FROM meta WHERE key = 'version'").fetchone()[0])
            return version

    def look(self) -> _Pin:
        """Pin one look at the store for the block, in this thread (or greenlet): its first ``version()`` or
        ``get_meta()`` runs ``PRAGMA data_version`` as ever, the others of the block reuse that look.

        A cached read asks several times (``/readyz`` of a worker: the heartbeat, the loaded flag, the version of
        the critical checks), and each look cost 3 us of a 17 us request. Inside a pin nothing is older than its
        first look: the values cached then are kept, or newer ones another thread read since (when it saw
        data_version move it forgot them, and what is read again is read now). A write committed after the first
        look, by another process or by this one (even in this block: pin reads only), may be seen or not until the
        block ends. A pin inside a pin joins it (the outer block's first look stands for both).
        """
        return _Pin(self._pinned)

    def _watched(self) -> sqlite3.Connection:
        """The connection of ``version()``, its values read at the current data_version forgotten if another
        connection committed since (the caller holds ``_watch_lock``); inside a pin that looked already, as it
        is (see ``look``)."""
        pinned = self._pinned.get()
        if pinned and self._watch is not None and self._watch_pid == os.getpid():
            return self._watch
        if self._watch is None or self._watch_pid != os.getpid():
            # One opened before a fork stays referenced and unused (see _forget_inherited).
            with self._lock:
                if self._watch is not None:
                    self._inherited.append(self._watch)
            self._watch, self._watch_pid, self._data_version = self._open(), os.getpid(), None
        data_version = int(self._watch.execute("PRAGMA data_version").fetchone()[0])
        if data_version != self._data_version:
            self._data_version, self._seen_version, self._seen_meta = data_version, None, {}
        if pinned is False:
            self._pinned.set(True)  # in the pin's own context: its end (reset) forgets it
        return self._watch

    def snapshots(self) -> list[PluginSnapshot]:
        """Every plugin, by name."""
        return list(self._reparsed()[0].values())

    def parse_ahead(self, pause: Callable[[], None], step: int) -> int:
        """Parse the rows the cache of ``snapshots()`` does not hold, ``step`` at a time with ``pause()`` after each:
        a worker that booted while the core loaded (and parsed rows that have all changed since) warms again in
        steps, not in one block of its event loop (10,000 rows took 100-150 ms)."""
        return self._reparsed(pause, step)[1]

    def _reparsed(self, pause: Callable[[], None] | None = None,
                  step: int = 0) -> tuple[dict[str, PluginSnapshot], int]:
        """Every row as its snapshot, by row text, kept for the next read; and how many rows were parsed. Between two
        reads few plugins change: the rows kept as they were are not parsed again (with 10,000 plugins parsing was
        70 of the 100 ms a read took, and every worker reads them all after each change)."""
        rows = self._read("SELECT data FROM plugins ORDER BY name")
        known: dict[str, PluginSnapshot] = self._parsed
        fresh: dict[str, PluginSnapshot] = {}
        parsed = 0
        for (data,) in rows:
            snapshot = known.get(data)
            if snapshot is None:
                snapshot = PluginSnapshot.from_json(data)
                parsed += 1
                if pause is not None and parsed % step == 0:
                    pause()
            fresh[data] = snapshot
        self._parsed = fresh
        return fresh, parsed

    def critical_snapshots(self) -> list[PluginSnapshot]:
        """Every critical plugin, by name: only their rows are read and parsed (SQLite's ``json_extract``), or, where
        SQLite has no JSON functions, every row as ``snapshots()`` reads them. With 10,000 plugins reading and
        parsing them all took 160 ms of a worker's first ``/readyz`` after each change, the query 18 ms."""
        try:
            rows = self._read("SELECT data FROM plugins WHERE json_extract(data, '$.critical') ORDER BY name")
        except sqlite3.OperationalError:  # built without JSON1 (SQLite < 3.38 and not enabled)
            return [snapshot for snapshot in self.snapshots() if snapshot.critical]
        parsed = self._parsed  # the last read of every row: those that did not change are not parsed again
        return [parsed.get(data) or PluginSnapshot.from_json(data) for (data,) in rows]

    def snapshot(self, name: str) -> PluginSnapshot | None:
        """One plugin, or None."""
        rows = self._read("SELECT data FROM plugins WHERE name = ?", (name,))
        return PluginSnapshot.from_json(rows[0][0]) if rows else None

    def history(self, name: str) -> list[TransitionRecord]:
        """Oldest first."""
        rows = self._read("SELECT data FROM history WHERE plugin = ? ORDER BY seq", (name,))
        return [record_from_json(data) for (data,) in rows]

    def set_meta(self, key: str, value: str) -> None:
        """Keep a small value (it does not change ``version``: a heartbeat must not invalidate caches)."""
        with self._write(bump=False) as conn:
            conn.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, value),
            )

    def get_meta(self, key: str) -> str | None:
        """A kept value, or None (read again only when another connection committed: ``/readyz`` asks each
        time whether the plugins are loaded)."""
        with self._watch_lock:
            watch = self._watched()
            if key not in self._seen_meta:
                rows = watch.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchall()
                self._seen_meta[key] = str(rows[0][0]) if rows else None
            return self._seen_meta[key]

    def close(self) -> None:
        """Close this process's idle connections (one in use is closed or kept when its call ends; a later call
        opens a new one)."""
        with self._lock:
            self._forget_inherited()
            idle, self._idle = self._idle, []
        with self._watch_lock:
            if self._watch is not None:
                if self._watch_pid == os.getpid():
                    idle.append(self._watch)
                else:
                    with self._lock:
                        self._inherited.append(self._watch)
            self._watch, self._data_version = None, None
        for conn in idle:
            conn.close()


def _into_wal(conn: sqlite3.Connection, deadline: float) -> None:
    """Put the file in WAL mode (kept in the file: a no-op once done). While another connection writes to a file
    still in rollback mode (a new store, made by another process at this moment), SQLite answers the switch
    ``SQLITE_BUSY`` at once, without its busy wait (the switch would upgrade a shared lock another writer waits
    on), so wait here as any other statement waits: until ``deadline``, then raise what SQLite said."""
    pause = 0.001
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as error:
            busy = error.sqlite_errorcode & 0xFF == sqlite3.SQLITE_BUSY  # SQLITE_BUSY_RECOVERY and the like too
            if not busy or time.monotonic() >= deadline:
                raise
        time.sleep(pause)  # looked up at each call: gevent's in a patched worker
        pause = min(pause * 2, 0.05)


class _Pin:
    """One ``SQLiteStore.look()`` block (a class, not ``@contextmanager``: a generator's with costs 1 us, this 0.3)."""

    __slots__ = ("_pinned", "_token")

    def __init__(self, pinned: ContextVar[bool | None]) -> None:
        self._pinned = pinned
        self._token: Token[bool | None] | None = None

    def __enter__(self) -> None:
        if self._pinned.get() is None:  # else: inside a pin already, which this one joins
            self._token = self._pinned.set(False)

    def __exit__(self, *exc: object) -> None:
        if self._token is not None:
            self._pinned.reset(self._token)
            self._token = None
