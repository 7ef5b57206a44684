"""Stores: where plugin states live so that every worker answers the same (memory, SQLite, Redis)."""

from __future__ import annotations

from pathlib import Path

from plugin_health.errors import ConfigError
from plugin_health.store.base import PluginSnapshot, StateStore
from plugin_health.store.memory import MemoryStore
from plugin_health.store.sqlite import SQLiteStore

__all__ = ["MemoryStore", "PluginSnapshot", "SQLiteStore", "StateStore", "open_store", "store_file"]


def store_file(url: str | None, run_dir: str | Path) -> Path | None:
    """The SQLite file a store URL names (None: SQLite in ``run_dir``), or None for a store that is no file.

    The host's lock and control socket live beside it.
    """
    if url is None:
        return Path(run_dir) / "state.sqlite3"
    if url.startswith("sqlite:///"):
        return Path(url.removeprefix("sqlite://"))
    return None


def open_store(url: str | None, run_dir: str | Path, history_limit: int = 100) -> StateStore:
    """The store a URL names: None (SQLite in ``run_dir``), ``memory://``, ``sqlite:///path``, ``redis://...``."""
    if url == "memory://":
        return MemoryStore(history_limit)
    path = store_file(url, run_dir)
    if path is not None:
        return SQLiteStore(path, history_limit)
    if url is not None and url.startswith(("redis://", "rediss://", "unix://")):
        from plugin_health.store.redis import RedisStore  # only services that use Redis import redis-py

        return RedisStore(url, history_limit)
    raise ConfigError("PLUGIN_HEALTH_STORE_URL", url, "empty, memory://, sqlite:///path or redis://host:port/db")
