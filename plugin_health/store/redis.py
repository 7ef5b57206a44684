"""A Redis store (``PLUGIN_HEALTH_STORE_URL=redis://...``): one truth for several service instances.

Keys, under a prefix (``?prefix=`` in the URL, default ``plugin-health``): ``snapshots`` (a hash of each
plugin's snapshot), ``history:<name>`` (a capped list), ``meta`` (a hash), ``version`` (a counter bumped with
every change, in the same ``MULTI``/``EXEC`` as the change).

Redis may go away. Every process keeps a local mirror of what it last read or wrote: reads then answer from
it, writes are applied to it and queued, and :meth:`RedisStore.degraded` says why; a background thread replays
the queue, in order, as soon as Redis answers again, so no transition recorded meanwhile is lost.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qs, urlsplit, urlunsplit

import redis

from plugin_health.errors import ConfigError
from plugin_health.lifecycle import TransitionRecord
from plugin_health.store.base import PluginSnapshot, record_from_json, record_to_json
from plugin_health.store.memory import MemoryStore

logger = logging.getLogger(__name__)

#: Seconds a Redis command may take before the store counts Redis as gone.
SOCKET_TIMEOUT = 0.5
#: Seconds between two attempts to replay what was queued while Redis was away.
RETRY = 0.25

_Op = tuple[str, tuple[Any, ...]]

#: A transition, at most once: a command whose answer timed out may still have run, and is then replayed; the
#: record's own key (kept a day) tells the replay that it already did.
_PUT_RECORD = """
if redis.call('set', KEYS[4], '1', 'NX', 'EX', 86400) then
    redis.call('hset', KEYS[1], ARGV[1], ARGV[2])
    redis.call('rpush', KEYS[2], ARGV[3])
    redis.call('ltrim', KEYS[2], -tonumber(ARGV[4]), -1)
    redis.call('incr', KEYS[3])
end
return 1
"""


def parse_url(url: str) -> tuple[str, str]:
    """The Redis URL without our ``prefix`` parameter, and the prefix."""
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    prefix = query.pop("prefix", ["plugin-health"])[0]
    if not prefix or any(c.isspace() for c in prefix):
        raise ConfigError("PLUGIN_HEALTH_STORE_URL", url, "a prefix without spaces")
    rest = "&".join(f"{k}={v}" for k, values in query.items() for v in values)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, rest, parts.fragment)), prefix


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class RedisStore:
    """Plugin states in Redis, with a local mirror that answers while Redis is away."""

    def __init__(self, url: str, history_limit: int = 100) -> None:
        address, self.prefix = parse_url(url)
        self._address = address
        self.client: redis.Redis = redis.Redis.from_url(
            address, socket_timeout=SOCKET_TIMEOUT, socket_connect_timeout=SOCKET_TIMEOUT, decode_responses=False
        )
        self._history_limit = history_limit
        self._mirror = MemoryStore(history_limit)
        self._pending: list[_Op] = []
        self._lock = threading.RLock()  # orders writes: the queue is replayed before any new write
        self._degraded: str | None = None
        self._last_version = 0
        self._wrote = False  # this process publishes (the host): it may give a wiped Redis back what it knows
        self._retry: threading.Thread | None = None
        self._closed = threading.Event()

    def blocking_client(self, timeout: float | None = None) -> redis.Redis:
        """A client of its own for blocking commands (``BLPOP``), which outlast the store's socket timeout."""
        return redis.Redis(connection_pool=redis.ConnectionPool.from_url(
            self._address, socket_timeout=timeout, socket_connect_timeout=SOCKET_TIMEOUT))

    def key(self, *parts: str) -> str:
        """A key under this store's prefix."""
        return ":".join((self.prefix, *parts))

    # -- health of the store ----------------------------------------------------------------------------

    def degraded(self) -> str | None:
        """None while Redis answers; else why not, and that answers come from this process's last known states."""
        return self._degraded

    def pending(self) -> int:
        """How many writes wait for Redis to come back."""
        with self._lock:
            return len(self._pending)

    def _failed(self, err: redis.RedisError) -> None:
        if self._degraded is None:
            logger.warning("redis store degraded: %s; answering from the last known states", err)
        self._degraded = f"redis unreachable ({type(err).__name__}); serving the last known states"

    def _recovered(self) -> None:
        if self._degraded is not None and not self._pending:
            logger.warning("redis store recovered")
            self._degraded = None

    # -- writes ------------------------------------------------------------------------------------------

    def _apply(self, op: str, args: tuple[Any, ...]) -> None:
        pipe = self.client.pipeline(transaction=True)
        if op == "put":
            snapshot, record, op_id = args
            if record is not None:
                keys = (self.key("snapshots"), self.key("history", record.plugin), self.key("version"),
                        self.key("op", op_id))
                self.client.eval(_PUT_RECORD, 4, *keys, snapshot.name, snapshot.to_json(), record_to_json(record),
                                 self._history_limit)
                self._wrote = True
                return
            pipe.hset(self.key("snapshots"), snapshot.name, snapshot.to_json())
        elif op == "put_many":
            (snapshots,) = args
            pipe.hset(self.key("snapshots"), mapping={s.name: s.to_json() for s in snapshots})
        elif op == "begin":
            (names,) = args
            ghosts = [n for n in self.client.hkeys(self.key("snapshots")) if _text(n) not in names]
            if ghosts:
                pipe.hdel(self.key("snapshots"), *ghosts)
        elif op == "meta":
            key, value = args
            pipe.hset(self.key("meta"), key, value)
            pipe.exists(self.key("version"))
            _, exists = pipe.execute()  # meta never moves the version: a heartbeat must not invalidate caches
            if not exists and self._wrote:
                self._reseed()  # Redis came back empty (restarted without persistence): give it what we know
            return
        pipe.incr(self.key("version"))
        pipe.execute()
        self._wrote = True

    def _reseed(self) -> None:
        """Write this process's whole mirror to Redis, which lost it; the version moves on."""
        snapshots, histories, meta = self._mirror.everything()
        pipe = self.client.pipeline(transaction=True)
        if snapshots:
            pipe.hset(self.key("snapshots"), mapping={s.name: s.to_json() for s in snapshots})
        for name, records in histories.items():
            pipe.delete(self.key("history", name))
            if records:
                pipe.rpush(self.key("history", name), *(record_to_json(r) for r in records))
        if meta:
            pipe.hset(self.key("meta"), mapping=dict(meta.items()))
        # A version no reader can have seen before the loss (the counter started again from nothing).
        pipe.set(self.key("version"), max(self._last_version + 1, int(time.time() * 1000)))
        pipe.execute()
        logger.warning("redis store: Redis had lost the states; %d plugins written to it again", len(snapshots))

    def _write(self, op: str, *args: Any) -> None:
        with self._lock:
            if self._pending:
                self._queue(op, args)
                return
            try:
                self._apply(op, args)
            except redis.RedisError as err:
                self._failed(err)
                self._queue(op, args)
                return
        self._recovered()

    def _queue(self, op: str, args: tuple[Any, ...]) -> None:
        if op == "meta":  # only the last value of a key matters
            self._pending = [p for p in self._pending if not (p[0] == "meta" and p[1][0] == args[0])]
        self._pending.append((op, args))
        if self._retry is None or not self._retry.is_alive():
            self._retry = threading.Thread(target=self._replay_loop, name="plugin-health-redis-replay", daemon=True)
            self._retry.start()

    def _replay_loop(self) -> None:
        while not self._closed.wait(RETRY):
            with self._lock:
                try:
                    if self._wrote and not self.client.exists(self.key("version")):
                        self._reseed()  # Redis came back empty: the mirror holds all, what was queued included
                        self._pending.clear()
                    while self._pending:
                        op, args = self._pending[0]
                        self._apply(op, args)
                        self._pending.pop(0)
                except redis.RedisError as err:
                    self._failed(err)
                    continue
            self._recovered()
            logger.warning("redis store: every write queued while it was away is replayed")
            return

    def begin(self, names: Iterable[str]) -> None:
        """Forget the snapshots of plugins not in ``names`` (history stays)."""
        keep = frozenset(names)
        self._mirror.begin(keep)
        self._write("begin", keep)

    def put(self, snapshot: PluginSnapshot, record: TransitionRecord | None = None) -> None:
        """Publish a snapshot and its transition in one transaction (or queue them while Redis is away)."""
        self._mirror.put(snapshot, record)
        self._write("put", snapshot, record, uuid.uuid4().hex)

    def put_many(self, snapshots: Iterable[PluginSnapshot]) -> None:
        """Publish several snapshots in one transaction."""
        batch = list(snapshots)
        self._mirror.put_many(batch)
        self._write("put_many", batch)

    def set_meta(self, key: str, value: str) -> None:
        """Keep a small value (the version does not move)."""
        self._mirror.set_meta(key, value)
        self._write("meta", key, value)

    # -- reads -------------------------------------------------------------------------------------------

    def _read(self, fetch: Callable[[], Any], fallback: Callable[[], Any]) -> Any:
        if self._pending:  # this process's own writes are newer than what Redis holds
            return fallback()
        try:
            value = fetch()
        except redis.RedisError as err:
            self._failed(err)
            return fallback()
        self._recovered()
        return value

    def version(self) -> int:
        """Redis's version; while it is away, a number of this process's own (negative, so never confused)."""

        def fetch() -> int:
            raw = self.client.get(self.key("version"))
            self._last_version = int(raw or 0)
            return self._last_version

        value: int = self._read(fetch, lambda: -1 - self._mirror.version())
        return value

    def snapshots(self) -> list[PluginSnapshot]:
        """Every plugin, by name."""

        def fetch() -> list[PluginSnapshot]:
            raw = self.client.hgetall(self.key("snapshots"))
            found = sorted((PluginSnapshot.from_json(v) for v in raw.values()), key=lambda s: s.name)
            self._mirror.begin(s.name for s in found)
            self._mirror.put_many(found)
            return found

        value: list[PluginSnapshot] = self._read(fetch, self._mirror.snapshots)
        return value

    def snapshot(self, name: str) -> PluginSnapshot | None:
        """One plugin, or None."""

        def fetch() -> PluginSnapshot | None:
            raw = self.client.hget(self.key("snapshots"), name)
            if raw is None:
                return None
            found = PluginSnapshot.from_json(raw)
            self._mirror.put(found)
            return found

        value: PluginSnapshot | None = self._read(fetch, lambda: self._mirror.snapshot(name))
        return value

    def history(self, name: str) -> list[TransitionRecord]:
        """Oldest first."""

        def fetch() -> list[TransitionRecord]:
            records = [record_from_json(r) for r in self.client.lrange(self.key("history", name), 0, -1)]
            self._mirror.replace_history(name, records)
            return records

        value: list[TransitionRecord] = self._read(fetch, lambda: self._mirror.history(name))
        return value

    def get_meta(self, key: str) -> str | None:
        """A kept value, or None."""

        def fetch() -> str | None:
            raw = self.client.hget(self.key("meta"), key)
            value = None if raw is None else _text(raw)
            if value is not None:
                self._mirror.set_meta(key, value)
            return value

        value: str | None = self._read(fetch, lambda: self._mirror.get_meta(key))
        return value

    def close(self) -> None:
        """Give queued writes a last chance (1 s), then close the connections."""
        deadline = time.monotonic() + 1.0
        while self.pending() and time.monotonic() < deadline:
            time.sleep(0.05)
        self._closed.set()
        self.client.close()
