"""The lease that lets one instance, of several sharing a Redis, run a ``singleton`` plugin, with a fencing token.

A :class:`SingletonLease` is a :class:`redis.lock.Lock` with a time to live: its owner renews it, and an owner
that stops renewing (dead, or cut off from Redis) loses it once the time to live has passed in Redis. An owner
cut off cannot learn that it lost the lease, so it keeps a local deadline, :attr:`SingletonLease.valid_until`,
that ends no later than the key in Redis: the clock is read *before* each acquire or renew is sent, and Redis
counts the time to live from when the command runs, which is later. An owner that stops its plugin when
:meth:`SingletonLease.remaining` reaches 0 never overlaps with the next one, whatever the network does (as
long as the two clocks run at about the same rate).

Each acquisition increments ``<key>:fence``; the result, the fencing token, grows with every new owner, across
restarts of an owner and of a Redis that keeps nothing (a counter that is not there starts from Redis's clock in
microseconds), so an external system that remembers the largest token it has seen can refuse a stale one.

A call waits for Redis ``socket_timeout`` seconds per attempt, and redis-py 8 retries a timed-out command 10
times by default: with ``socket_timeout=0.2``, a renewal against a frozen Redis returns after 5 to 6 s. Give the
lease a client with ``retry=Retry(NoBackoff(), 0)`` (it then returns after 0.2 s) and a ``socket_timeout``
well under ``ttl``; the deadline stays safe either way, but a renewal must not block past it.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import uuid
from collections.abc import Callable

import redis
from redis.exceptions import LockError
from redis.lock import Lock

logger = logging.getLogger(__name__)


class SingletonLease:
    """One instance's claim on a singleton: taken with :meth:`try_acquire`, kept with :meth:`renew`."""

    def __init__(
        self, client: redis.Redis, key: str, owner: str, ttl: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        granted_ms = int(ttl * 1000)  # what redis-py's Lock asks of Redis: whole milliseconds, rounded down
        if granted_ms < 1:
            raise ValueError(f"a lease lives at least a millisecond, not ttl={ttl!r}")
        self.key = key
        self.owner = owner
        self.ttl = ttl
        self.token: int | None = None
        self._client = client
        self._clock = clock
        self._granted = granted_ms / 1000  # the deadline must not outlast what Redis grants
        self._fence = f"{key}:fence"
        # Not thread-local: the thread that renews is seldom the one that acquired.
        self._lock = Lock(client, key, timeout=ttl, blocking=False, thread_local=False)
        self._valid_until = 0.0
        self._mutex = threading.Lock()  # one request at a time: a release never races a renewal

    def try_acquire(self) -> int | None:
        """Take the lease if it is free (never blocks); the fencing token, or None when another holds it or Redis
        does not answer. Already ours: renews and returns the current token."""
        with self._mutex:
            if self.token is not None:
                if self._renew():
                    return self.token
                if self.token is not None:
                    return None  # Redis did not answer: maybe still ours, but not confirmed
            return self._acquire()

    def renew(self) -> bool:
        """Keep it for another ttl; False when it is no longer ours (taken, expired) or Redis did not answer."""
        with self._mutex:
            return self._renew()

    @property
    def valid_until(self) -> float:
        """The clock reading before which the lease is surely still ours; 0.0 when not held."""
        return self._valid_until if self.token is not None else 0.0

    def remaining(self) -> float:
        """Seconds the lease is surely still ours; 0.0 when not held."""
        return max(0.0, self.valid_until - self._clock()) if self.token is not None else 0.0

    def held(self) -> bool:
        """Whether the lease is ours and its local deadline has not passed."""
        return self.token is not None and self.remaining() > 0

    def release(self) -> None:
        """Give it back if ours (if Redis does not answer, it expires by itself)."""
        with self._mutex:
            if self.token is not None:
                logger.info("lease %s released by %s (token %d)", self.key, self.owner, self.token)
            self.token = None
            self._valid_until = 0.0
            self._give_back()

    def holder(self) -> str | None:
        """The owner id of whoever holds the lease now, read from Redis; None if it is free."""
        value = self._client.get(self.key)
        if value is None:
            return None
        text = value.decode(errors="replace") if isinstance(value, bytes) else str(value)
        owner, newline, _ = text.rpartition("\n")
        return owner if newline else text

    def _acquire(self) -> int | None:
        started = self._clock()
        try:
            if not self._lock.acquire(blocking=False, token=f"{self.owner}\n{uuid.uuid4().hex}"):
                return None
            token = self._next_token()
        except redis.RedisError as err:
            # The SET may have run although its answer was lost: the key then expires by itself.
            logger.warning("lease %s: not acquired by %s: %s", self.key, self.owner, err)
            self._give_back()
            return None
        valid_until = started + self._granted
        if self._clock() >= valid_until:
            # The answers came so late that the lease may have expired meanwhile, and another taken a later token.
            logger.warning("lease %s: acquired by %s too late to use (after %.3f s)", self.key, self.owner, self.ttl)
            self._give_back()
            return None
        self.token = token
        self._valid_until = valid_until
        logger.info("lease %s acquired by %s (token %d)", self.key, self.owner, token)
        return token

    def _next_token(self) -> int:
        """The next fencing token: the counter's next value. A counter Redis does not have (never made, or lost when
        Redis restarted empty) starts from Redis's clock in microseconds, so tokens still only grow: an owner
        before the loss took its token from a smaller clock reading (plus one per acquisition since)."""
        seconds, micros = self._client.time()
        self._client.set(self._fence, int(seconds) * 1_000_000 + int(micros), nx=True)
        return int(self._client.incr(self._fence))

    def _renew(self) -> bool:
        if self.token is None:
            return False
        started = self._clock()
        try:
            self._lock.reacquire()  # the key's time to live set to ttl again, if the key still carries our token
        except LockError:  # LockNotOwnedError: the key expired, or carries another's token
            logger.warning("lease %s lost by %s (token %d)", self.key, self.owner, self.token)
            self.token = None
            self._valid_until = 0.0
            return False
        except redis.RedisError:
            return False  # it may still be ours; the deadline, not moved, tells for how long at most
        # A key that still carries our token never expired: nobody else held it, even if our deadline had passed.
        self._valid_until = started + self._granted
        return True

    def _give_back(self) -> None:
        # Not ours (LockError is a RedisError), or Redis away: the key then expires by itself.
        with contextlib.suppress(redis.RedisError):
            self._lock.release()
