"""Stores: where plugin states live so that every worker answers the same (memory, SQLite, Redis)."""

from __future__ import annotations

from pathlib import Path

from plugin_health.errors import ConfigError
from plugin_health.store.base import PluginSnapshot, StateStore
from plugin_health.store.memory import MemoryStore
from plugin_health.store.sqlite import SQLiteStore

__all__ = ["MemoryStore", "PluginSnapshot", "SQLiteStore", "StateStore", "open_store"]


def open_store(url: str | None, run_dir: str | Path, history_limit: int = 100) -> StateStore:
    """The store a URL names: None (SQLite in ``run_dir``), ``memory://``, ``sqlite:///path``, ``redis://...``."""
    if url is None:
        return SQLiteStore(Path(run_dir) / "state.sqlite3", history_limit)
    if url == "memory://":
        return MemoryStore(history_limit)
    if url.startswith("sqlite:///"):
        return SQLiteStore(Path(url.removeprefix("sqlite://")), history_limit)
    if url.startswith(("redis://", "rediss://", "unix://")):
        from plugin_health.store.redis import RedisStore  # only services that use Redis import redis-py

        return RedisStore(url, history_limit)
    raise ConfigError("PLUGIN_HEALTH_STORE_URL", url, "empty, memory://, sqlite:///path or redis://host:port/db")
