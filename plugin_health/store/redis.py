"""Several instances on one Redis: each publishes its heartbeat and a copy of its states; any instance reads all.

An instance's own truth is its local store (SQLite in its run directory): its core writes there, its workers read
there, so nothing an instance says of itself waits on Redis. The core's replicator (:meth:`RedisCluster.replicate`)
copies what the local store recorded to Redis, in order and exactly once: each instance's transitions carry the
local store's sequence numbers, and Redis keeps the last one copied (the cursor) in the same transaction as the
copy. While Redis is away the local store simply keeps everything; when it returns, the replicator copies what is
past the cursor; if Redis came back empty, or the local store is a new one, it copies all it has.

Keys, under a prefix (``?prefix=`` in the URL, default ``plugin-health``):

* ``instances``: a hash, instance id -> its heartbeat (:class:`InstanceInfo` JSON);
* ``i:<id>:plugins``: a hash, plugin name -> snapshot JSON; ``i:<id>:history:<name>``: a capped list of records;
* ``i:<id>:cursor``: ``<local store id>:<sequence>`` of the last record copied;
* ``version``: moved by every copy (readers' caches); ``i:<id>:control``: requests to that instance's core;
* ``singleton:<name>`` and ``singleton:<name>:fence``: a singleton's lease and its fencing counter.

Readers never wait long on Redis: commands time out after :data:`READ_TIMEOUT`, and after a failure a circuit
breaker (pybreaker) answers from the last known view for :data:`BREAK_FOR` seconds before trying again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit, urlunsplit

import pybreaker
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from plugin_health.errors import ConfigError
from plugin_health.lifecycle import TransitionRecord
from plugin_health.store.base import PluginSnapshot, record_from_json
from plugin_health.store.cluster import InstanceInfo
from plugin_health.store.sqlite import SQLiteStore

logger = logging.getLogger(__name__)

#: Seconds a reader's Redis command may take before the view counts Redis as gone.
READ_TIMEOUT = 0.05
#: Seconds a core's Redis command may take (replication, heartbeat, leases).
WRITE_TIMEOUT = 0.25
#: Seconds the circuit stays open after a failed read: reads answer from the last known view meanwhile.
BREAK_FOR = 1.0

T = TypeVar("T")


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


class Keys:
    """The names of a service's keys in Redis (see the module's docstring)."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def key(self, *parts: str) -> str:
        """A key under the prefix."""
        return ":".join((self.prefix, *parts))

    def instances(self) -> str:
        return self.key("instances")

    def version(self) -> str:
        return self.key("version")

    def plugins(self, instance: str) -> str:
        return self.key("i", instance, "plugins")

    def history(self, instance: str, name: str) -> str:
        return self.key("i", instance, "history", name)

    def cursor(self, instance: str) -> str:
        return self.key("i", instance, "cursor")

    def control(self, instance: str) -> str:
        return self.key("i", instance, "control")

    def singleton(self, name: str) -> str:
        return self.key("singleton", name)


def connect(url: str, timeout: float) -> tuple[redis.Redis, Keys]:
    """A client whose commands give up after ``timeout`` seconds, and the key names, for a store URL."""
    address, prefix = parse_url(url)
    # No retries: redis-py retries a command that timed out (measured: a 0.2 s timeout took 5-6 s against a paused
    # Redis), which would stall every caller that counts on the timeout; ours decide themselves when to try again.
    client = redis.Redis.from_url(address, socket_timeout=timeout, socket_connect_timeout=timeout,
                                  decode_responses=False, retry=Retry(NoBackoff(), 0))
    return client, Keys(prefix)


class RedisCluster:
    """Every instance sharing a Redis, seen from this one (a :class:`~plugin_health.store.cluster.ClusterView`).

    ``local`` is this instance's own store: its column of the grid and its history come from there, always
    current. What other instances said comes from Redis, cached until the ``version`` key moves.
    """

    def __init__(self, url: str, instance: str, local: SQLiteStore, retention: float = 600.0,
                 timeout: float = READ_TIMEOUT) -> None:
        self.instance = instance
        self.local = local
        self.retention = retention
        self.client, self.keys = connect(url, timeout)
        self._breaker = pybreaker.CircuitBreaker(fail_max=1, reset_timeout=BREAK_FOR, name="redis")
        self._problem: str | None = None
        self._lock = threading.Lock()
        self._instances: list[InstanceInfo] = []
        self._others: dict[str, list[PluginSnapshot]] = {}
        self._seen_version: int | None = None
        self._prober: threading.Thread | None = None
        self._closed = threading.Event()

    # -- reads, guarded ---------------------------------------------------------------------------------

    def _guarded(self, read: Callable[[], T], fallback: T) -> T:
        """``read()``; or ``fallback``, at once while the circuit is open, or after a failed read.

        A reader never probes a Redis that failed: a thread of this view does (every :data:`BREAK_FOR` seconds),
        and closes the circuit when Redis answers again.
        """
        if self._breaker.current_state == pybreaker.STATE_OPEN:
            self._probe_later()
            return fallback
        try:
            value = self._breaker.call(read)
        except (redis.RedisError, pybreaker.CircuitBreakerError) as err:
            self._failed(err)
            return fallback
        self._problem = None
        return value

    def _failed(self, err: Exception) -> None:
        cause = err.__cause__ if isinstance(err, pybreaker.CircuitBreakerError) and err.__cause__ else err
        if self._problem is None:
            logger.warning("redis unreachable (%s); the cluster view shows the last known states", type(cause).__name__)
            self._problem = f"redis unreachable ({type(cause).__name__}); showing the last known states"
        self._probe_later()

    def _probe_later(self) -> None:
        with self._lock:
            if self._prober is not None and self._prober.is_alive():
                return
            self._prober = threading.Thread(target=self._probe, name="plugin-health-redis-probe", daemon=True)
            self._prober.start()

    def _probe(self) -> None:
        """Until Redis answers: wait for the circuit's timeout, then try once (the circuit closes on an answer)."""
        while not self._closed.wait(BREAK_FOR):
            try:
                self._breaker.call(self.client.ping)
            except (redis.RedisError, pybreaker.CircuitBreakerError):
                continue
            self._problem = None
            return

    def degraded(self) -> str | None:
        """None while Redis answers this process; else why the view is the last known one."""
        return self._problem or self.local.degraded()

    def instances(self) -> list[InstanceInfo]:
        """Every instance that beat within the retention period, ordered by id."""

        def read() -> list[InstanceInfo]:
            raw = self.client.hgetall(self.keys.instances())
            found = (InstanceInfo.from_json(value) for value in raw.values())
            horizon = time.time() - self.retention
            return sorted((i for i in found if i is not None and i.beat >= horizon), key=lambda i: i.id)

        found = self._guarded(read, self._instances)
        with self._lock:
            # An instance seen before and missing now (Redis restarted empty: each says so again at its next beat)
            # is kept with its last heartbeat: gone once that is old, dropped after the retention.
            horizon = time.time() - self.retention
            ids = {info.id for info in found}
            kept = [info for info in self._instances if info.id not in ids and info.beat >= horizon]
            self._instances = sorted([*found, *kept], key=lambda i: i.id)
            return list(self._instances)

    def grid(self) -> dict[str, list[PluginSnapshot]]:
        """Each instance's plugins: this instance's from its local store, the others' from Redis."""
        ids = [i.id for i in self.instances() if i.id != self.instance]

        def read() -> dict[str, list[PluginSnapshot]]:
            version = int(self.client.get(self.keys.version()) or 0)
            if version == self._seen_version and set(ids) == set(self._others):
                return self._others
            pipe = self.client.pipeline(transaction=False)
            for instance in ids:
                pipe.hgetall(self.keys.plugins(instance))
            others = {
                instance: sorted((PluginSnapshot.from_json(v) for v in raw.values()), key=lambda s: s.name)
                for instance, raw in zip(ids, pipe.execute(), strict=True)
            }
            self._seen_version = version
            return others

        others = self._guarded(read, self._others)
        with self._lock:
            self._others = others
            grid = {instance: list(snapshots) for instance, snapshots in others.items() if instance in ids}
        grid[self.instance] = self.local.snapshots()
        return dict(sorted(grid.items()))

    def history_of(self, instance: str, name: str) -> list[TransitionRecord]:
        """A plugin's transitions on an instance (this one's from the local store); [] while Redis is away."""
        if instance == self.instance:
            return self.local.history(name)

        def read() -> list[TransitionRecord]:
            return [record_from_json(r) for r in self.client.lrange(self.keys.history(instance, name), 0, -1)]

        return self._guarded(read, [])

    def holder(self, name: str) -> str | None:
        """The instance that holds singleton ``name``'s lease now (None: nobody); RedisError when it cannot tell."""
        raw = self.client.get(self.keys.singleton(name))
        return None if raw is None else _text(raw).split("\n", 1)[0]

    def close(self) -> None:
        """Stop probing; close the connections."""
        self._closed.set()
        self.client.close()


class Replicator:
    """The core's side: copies its local store and heartbeat to Redis (each call one step; the core loops)."""

    def __init__(self, url: str, instance: str, local: SQLiteStore, history_limit: int = 100,
                 timeout: float = WRITE_TIMEOUT) -> None:
        self.instance = instance
        self.local = local
        self.history_limit = history_limit
        self.client, self.keys = connect(url, timeout)
        self._pushed: dict[str, str] | None = None  # plugin rows as last copied (None: copy them all)
        self._copied = 0  # the last local sequence number copied
        self._version: int | None = None  # the local store's version at the last copy

    def replicate(self) -> int:
        """Copy to Redis what the local store recorded since the cursor; how many transitions were copied.

        One ``WATCH``/``MULTI`` transaction: the cursor is read and moved with the copy, so a copy whose answer was
        lost (it may have run) is never made twice. RedisError when Redis does not answer (nothing is lost: the
        next call copies it).
        """
        version = self.local.version()  # read first: a write after it moves it, and the next call copies that write
        if version == self._version and self._pushed is not None:
            return 0  # nothing written since the last copy (one indexed read, not every row)
        store_id = self.local.store_id()
        local_seq = self.local.last_seq()
        rows = self.local.rows()
        if local_seq == self._copied and rows == self._pushed:
            self._version = version
            return 0
        cursor_key, version_key = self.keys.cursor(self.instance), self.keys.version()
        copied = reached = 0

        def copy(pipe: Any) -> None:
            nonlocal copied, reached
            raw = pipe.get(cursor_key)
            mark, _, seq_text = _text(raw).partition(":") if raw else ("", "", "")
            whole = mark != store_id or not seq_text.isdigit()  # Redis lost it, or this is a new local store
            since = 0 if whole else int(seq_text)
            records = self.local.records_since(since)
            pushed = None if whole else self._pushed
            changed = {n: d for n, d in rows.items() if pushed is None or pushed.get(n) != d}
            gone = set(pushed or ()) - set(rows) if pushed is not None else set()
            if whole:
                stale = [k for k in pipe.hkeys(self.keys.plugins(self.instance)) if _text(k) not in rows]
            pipe.multi()
            if whole:
                for name in {*rows, *(r[1] for r in records)}:
                    pipe.delete(self.keys.history(self.instance, name))
                if stale:
                    pipe.hdel(self.keys.plugins(self.instance), *stale)
            if changed:
                pipe.hset(self.keys.plugins(self.instance), mapping=changed)
            if gone:
                pipe.hdel(self.keys.plugins(self.instance), *gone)
            touched = set()
            for _, plugin, data in records:
                pipe.rpush(self.keys.history(self.instance, plugin), data)
                touched.add(plugin)
            for plugin in touched:
                pipe.ltrim(self.keys.history(self.instance, plugin), -self.history_limit, -1)
            # The last sequence copied, not the last read before: one recorded since then is copied next time.
            last = max((seq for seq, _, _ in records), default=since)
            pipe.set(cursor_key, f"{store_id}:{last}")
            pipe.incr(version_key)
            copied = len(records)
            reached = last

        try:
            self.client.transaction(copy, cursor_key)
        except redis.RedisError:
            self._pushed = None  # the copy may or may not have run: next time, send every row again
            raise
        self._pushed, self._copied, self._version = rows, reached, version
        return copied

    def beat(self, info: InstanceInfo) -> None:
        """Publish this instance's heartbeat; notice a Redis that lost what was copied (restarted empty)."""
        pipe = self.client.pipeline(transaction=False)
        pipe.hset(self.keys.instances(), self.instance, info.to_json())
        pipe.exists(self.keys.cursor(self.instance))
        _, copied = pipe.execute()
        if not copied:
            self._pushed, self._copied = None, -1  # the next replicate() copies everything again

    def prune(self, retention: float, now: float) -> list[str]:
        """Drop the instances silent for longer than ``retention`` seconds, and their states; their ids."""
        dropped = []
        for raw_id, raw in self.client.hgetall(self.keys.instances()).items():
            info = InstanceInfo.from_json(raw)
            instance = _text(raw_id)
            if instance == self.instance or (info is not None and now - info.beat <= retention):
                continue
            keys = list(self.client.scan_iter(match=self.keys.key("i", instance, "*"), count=500))
            pipe = self.client.pipeline(transaction=True)
            pipe.hdel(self.keys.instances(), instance)
            if keys:
                pipe.delete(*keys)
            pipe.incr(self.keys.version())
            pipe.execute()
            dropped.append(instance)
        return dropped

    def close(self) -> None:
        """Close the connections."""
        self.client.close()

