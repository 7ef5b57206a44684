"""The embedded default store: SQLite in WAL mode in the run directory, shared by every local process.

Writers (the host) use ``BEGIN IMMEDIATE``; readers (every gunicorn worker) read without blocking writers.
``version()`` is one indexed read, so a worker can serve a cached answer until something changes.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from plugin_health.lifecycle import TransitionRecord
from plugin_health.store.base import PluginSnapshot, record_from_json, record_to_json

_SCHEMA = """
CREATE TABLE IF NOT EXISTS plugins (name TEXT PRIMARY KEY, data TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS history (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, plugin TEXT NOT NULL, data TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS history_by_plugin ON history (plugin, seq);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT OR IGNORE INTO meta (key, value) VALUES ('version', '0');
"""
_UPSERT = "INSERT INTO plugins (name, data) VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET data = excluded.data"


class SQLiteStore:
    """A SQLite database file; one connection per thread of each process."""

    def __init__(self, path: str | Path, history_limit: int = 100) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._history_limit = history_limit
        self._local = threading.local()
        self._parsed: dict[str, PluginSnapshot] = {}  # the last read of snapshots(), by row text
        self._conn().executescript(_SCHEMA)

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=10.0, isolation_level=None, check_same_thread=True)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA busy_timeout=10000")
            self._local.conn = conn
        return conn

    @contextmanager
    def _write(self, bump: bool = True) -> Iterator[sqlite3.Connection]:
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
            if bump:
                conn.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'version'")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def begin(self, names: Iterable[str]) -> None:
        """Forget the snapshots of plugins not in ``names`` (history stays)."""
        keep = sorted(set(names))
        with self._write() as conn:
            conn.execute("CREATE TEMP TABLE IF NOT EXISTS keep (name TEXT PRIMARY KEY)")
            conn.execute("DELETE FROM keep")
            conn.executemany("INSERT INTO keep (name) VALUES (?)", [(n,) for n in keep])
            conn.execute("DELETE FROM plugins WHERE name NOT IN (SELECT name FROM keep)")

    def put(self, snapshot: PluginSnapshot, record: TransitionRecord | None = None) -> None:
        """Publish a snapshot and its transition in one transaction; trim the history."""
        with self._write() as conn:
            conn.execute(_UPSERT, (snapshot.name, snapshot.to_json()))
            if record is not None:
                conn.execute(
                    "INSERT INTO history (plugin, data) VALUES (?, ?)", (record.plugin, record_to_json(record))
                )
                conn.execute(
                    "DELETE FROM history WHERE plugin = ? AND seq <= "
                    "(SELECT seq FROM history WHERE plugin = ? ORDER BY seq DESC LIMIT 1 OFFSET ?)",
                    (record.plugin, record.plugin, self._history_limit),
                )

    def put_many(self, snapshots: Iterable[PluginSnapshot]) -> None:
        """Publish several snapshots in one transaction."""
        rows = [(snapshot.name, snapshot.to_json()) for snapshot in snapshots]
        with self._write() as conn:
            conn.executemany(_UPSERT, rows)

    def degraded(self) -> str | None:
        """Always None: this store is as available as the process itself."""
        return None

    def version(self) -> int:
        """Grows with every write by any process."""
        row = self._conn().execute("SELECT value FROM meta WHERE key = 'version'").fetchone()
        return int(row[0])

    def snapshots(self) -> list[PluginSnapshot]:
        """Every plugin, by name."""
        rows = self._conn().execute("SELECT data FROM plugins ORDER BY name").fetchall()
        # Between two reads few plugins change: the rows kept as they were are not parsed again (with 10,000
        # plugins parsing was 70 of the 100 ms a read took, and every worker reads them all after each change).
        parsed = self._parsed
        fresh = {data: parsed.get(data) or PluginSnapshot.from_json(data) for (data,) in rows}
        self._parsed = fresh
        return list(fresh.values())

    def snapshot(self, name: str) -> PluginSnapshot | None:
        """One plugin, or None."""
        row = self._conn().execute("SELECT data FROM plugins WHERE name = ?", (name,)).fetchone()
        return None if row is None else PluginSnapshot.from_json(row[0])

    def history(self, name: str) -> list[TransitionRecord]:
        """Oldest first."""
        rows = self._conn().execute("SELECT data FROM history WHERE plugin = ? ORDER BY seq", (name,)).fetchall()
        return [record_from_json(data) for (data,) in rows]

    def set_meta(self, key: str, value: str) -> None:
        """Keep a small value (it does not change ``version``: a heartbeat must not invalidate caches)."""
        with self._write(bump=False) as conn:
            conn.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, value),
            )

    def get_meta(self, key: str) -> str | None:
        """A kept value, or None."""
        row = self._conn().execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def close(self) -> None:
        """Close this thread's connection."""
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
