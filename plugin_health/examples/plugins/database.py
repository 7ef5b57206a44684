"""An in-memory SQLite database that other plugins build on; critical: the service is not ready without it."""

from __future__ import annotations

import sqlite3
import threading

from plugin_health import Plugin, PluginContext, tool


class Database(Plugin):
    version = "2.3.0"
    critical = True
    timeout = 2.0

    def initialize(self, context: PluginContext) -> None:
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(":memory:", check_same_thread=False)
        self._conn.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, text TEXT NOT NULL)")
        context.logger.info("database ready")

    def start(self) -> None:
        with self._lock:
            self._conn.execute("INSERT INTO notes (text) VALUES ('started')")

    def stop(self) -> None:
        self._conn.close()

    def health_check(self) -> bool:
        with self._lock:
            return bool(self._conn.execute("SELECT 1").fetchone() == (1,))

    @tool
    def add_note(self, text: str) -> int:
        """Store a note and return its id."""
        with self._lock:
            cursor = self._conn.execute("INSERT INTO notes (text) VALUES (?)", (text,))
            return int(cursor.lastrowid or 0)

    @tool
    def count_notes(self) -> int:
        """How many notes are stored."""
        with self._lock:
            return int(self._conn.execute("SELECT COUNT(*) FROM notes").fetchone()[0])
