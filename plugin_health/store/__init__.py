"""Stores: where plugin states live so that every worker answers the same (memory, SQLite, Redis)."""

from __future__ import annotations

from pathlib import Path

from plugin_health.config import Settings
from plugin_health.errors import ConfigError
from plugin_health.store.base import PluginSnapshot, StateStore
from plugin_health.store.memory import MemoryStore
from plugin_health.store.sqlite import SQLiteStore

__all__ = [
    "MemoryStore", "PluginSnapshot", "SQLiteStore", "StateStore", "check_url", "instance_store_file", "is_shared",
    "open_instance_store", "open_store", "store_file",
]


def is_shared(url: str | None) -> bool:
    """Whether ``url`` names a store several instances share (Redis)."""
    return url is not None and url.startswith(("redis://", "rediss://", "unix://"))


def store_file(url: str | None, run_dir: str | Path, instance: str = "") -> Path | None:
    """The SQLite file a store URL names (None: SQLite in ``run_dir``), or None for a store that is no file.

    With a Redis URL, each instance keeps its own states in SQLite in ``run_dir`` too (a file named after the
    instance, so that two instances started from one directory keep apart), and its core copies them to Redis.
    The host's lock and control socket live beside it.
    """
    if url is None:
        return Path(run_dir) / "state.sqlite3"
    if is_shared(url):
        return Path(run_dir) / f"instance-{instance or 'default'}.sqlite3"
    if url.startswith("sqlite:///"):
        return Path(url.removeprefix("sqlite://"))
    return None


def check_url(url: str | None) -> None:
    """Refuse a store URL that names no store, naming ``PLUGIN_HEALTH_STORE_URL``, without opening anything (so that
    a bad one stops the service at start, before any process is started)."""
    if url is None or url == "memory://" or url.startswith("sqlite:///"):
        return
    if not is_shared(url):
        raise ConfigError("PLUGIN_HEALTH_STORE_URL", url, "empty, memory://, sqlite:///path or redis://host:port/db")
    from plugin_health.store.redis import parse_url  # only services that use Redis import redis-py

    parse_url(url)  # a bad prefix


def open_store(url: str | None, run_dir: str | Path, history_limit: int = 100, instance: str = "") -> StateStore:
    """This instance's store for a URL: None (SQLite in ``run_dir``), ``memory://``, ``sqlite:///path``, or
    ``redis://...`` (this instance's SQLite in ``run_dir``, copied to Redis by its core)."""
    check_url(url)
    if url == "memory://":
        return MemoryStore(history_limit)
    path = store_file(url, run_dir, instance)
    assert path is not None  # every URL check_url takes but memory:// names a file
    return SQLiteStore(path, history_limit, shared=is_shared(url))


def open_instance_store(settings: Settings) -> StateStore:
    """The store of this instance, as its settings name it."""
    return open_store(settings.store_url, settings.run_dir, settings.history_limit, settings.instance_id)


def instance_store_file(settings: Settings) -> Path | None:
    """The SQLite file of this instance's store, or None (``memory://``)."""
    return store_file(settings.store_url, settings.run_dir, settings.instance_id)
