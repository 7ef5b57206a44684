"""The singleton lease against a real Redis: one owner at a time, growing fencing tokens, and no overlap when an
owner dies, is cut off, or Redis freezes."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol, TypeVar, overload
from urllib.parse import parse_qs, urlsplit

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from redis_server import RedisServer
from tcp_proxy import TcpProxy
from waiting import wait_for

from plugin_health.coordination.leases import SingletonLease

#: Short, so that expiry takes a fraction of a second; 0.2 s timeouts fit in it three times.
TTL = 0.6
#: How late a takeover may come after the lease expired: the polling period, plus a scheduler's hiccup.
MARGIN = 0.25

R = TypeVar("R", bound=redis.Redis)


class Connect(Protocol):
    """Makes a client of ``url``, of class ``cls``."""

    @overload
    def __call__(self, url: str, **options: Any) -> redis.Redis: ...
    @overload
    def __call__(self, url: str, cls: type[R], **options: Any) -> R: ...


@pytest.fixture
def connect() -> Iterator[Connect]:
    """Clients that give up on Redis after 0.2 s, without retrying (redis-py's default retries 10 times)."""
    made: list[redis.Redis] = []

    def connect(url: str, cls: type[Any] = redis.Redis, **options: Any) -> Any:
        client = cls.from_url(url, socket_timeout=0.2, socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0),
                              **options)
        made.append(client)
        return client

    yield connect
    for client in made:
        client.close()


@pytest.fixture
def address(redis_url: str) -> str:
    """The session's Redis."""
    return redis_url.partition("?")[0]


@pytest.fixture
def key(redis_url: str) -> str:
    """A lease key of this test's own."""
    prefix = parse_qs(urlsplit(redis_url).query)["prefix"][0]
    return f"{prefix}:singleton:report"


class FakeClock:
    """A clock that moves only when told to."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class SlowRedis(redis.Redis):
    """A client whose every answer arrives ``delay`` seconds (of ``clock``) after its request was sent."""

    clock = FakeClock(0.0)
    delay = 0.0

    def execute_command(self, *args: Any, **options: Any) -> Any:
        try:
            return super().execute_command(*args, **options)  # type: ignore[no-untyped-call]
        finally:
            self.clock.now += self.delay


class FenceDown(redis.Redis):
    """A client that loses Redis exactly when the fencing counter is incremented."""

    def execute_command(self, *args: Any, **options: Any) -> Any:
        if args[0] in ("INCR", "INCRBY"):
            raise redis.ConnectionError("Redis went away")
        return super().execute_command(*args, **options)  # type: ignore[no-untyped-call]


def test_only_one_of_two_owners_acquires(connect: Connect, address: str, key: str) -> None:
    a = SingletonLease(connect(address), key, "instance-a", TTL)
    b = SingletonLease(connect(address), key, "instance-b", TTL)

    token = a.try_acquire()

    assert token is not None
    assert a.token == token
    assert a.held()
    assert b.try_acquire() is None
    assert b.token is None
    assert not b.held()
    assert b.valid_until == 0.0
    assert b.remaining() == 0.0


def test_holder_names_the_owner(connect: Connect, address: str, key: str) -> None:
    a = SingletonLease(connect(address), key, "instance-a", TTL)
    b = SingletonLease(connect(address, decode_responses=True), key, "instance-b", TTL)
    assert a.holder() is None

    a.try_acquire()

    assert a.holder() == "instance-a"
    assert b.holder() == "instance-a"  # a client that decodes answers reads it too


def test_fencing_tokens_strictly_increase_across_owners(connect: Connect, address: str, key: str) -> None:
    tokens = []
    for owner in ("instance-a", "instance-b", "instance-a", "instance-c"):
        lease = SingletonLease(connect(address), key, owner, TTL)  # a fresh lease each time: a restarted owner
        token = lease.try_acquire()
        assert token is not None
        tokens.append(token)
        lease.release()

    assert tokens == sorted(set(tokens))


def test_try_acquire_when_already_ours_renews_and_keeps_the_token(connect: Connect, address: str, key: str) -> None:
    a = SingletonLease(connect(address), key, "instance-a", TTL)
    token = a.try_acquire()
    first_deadline = a.valid_until
    time.sleep(0.05)

    assert a.try_acquire() == token
    assert a.valid_until > first_deadline


def test_renewing_keeps_it_for_longer_than_one_ttl(connect: Connect, address: str, key: str) -> None:
    a = SingletonLease(connect(address), key, "instance-a", TTL)
    b = SingletonLease(connect(address), key, "instance-b", TTL)
    token = a.try_acquire()
    until = time.monotonic() + 2.5 * TTL

    while time.monotonic() < until:
        time.sleep(TTL / 4)
        assert a.renew() is True
        assert b.try_acquire() is None
        assert a.held()

    assert a.token == token
    assert a.holder() == "instance-a"


def test_another_takes_over_once_the_owner_stops_renewing(connect: Connect, address: str, key: str) -> None:
    a = SingletonLease(connect(address), key, "instance-a", TTL)
    b = SingletonLease(connect(address), key, "instance-b", TTL)
    first = a.try_acquire()
    assert first is not None
    time.sleep(TTL / 3)
    renew_sent = time.monotonic()
    assert a.renew()
    renew_answered = time.monotonic()
    deadline = a.valid_until
    assert renew_sent <= deadline - TTL <= renew_answered

    while (second := b.try_acquire()) is None:  # the owner renews no more
        assert time.monotonic() < renew_answered + TTL + MARGIN, "nobody took the expired lease over"
        time.sleep(0.01)
    taken = time.monotonic()

    assert taken >= deadline  # never while the old owner could still believe it holds the lease
    assert taken >= renew_sent + TTL
    assert second > first
    assert a.remaining() == 0.0
    assert not a.held()
    assert a.renew() is False
    assert a.token is None
    assert a.valid_until == 0.0
    a.release()  # the old owner's release leaves the new owner's lease alone
    assert b.holder() == "instance-b"
    assert b.renew() is True


def test_valid_until_counts_from_before_the_request(connect: Connect, address: str, key: str) -> None:
    clock = FakeClock(100.0)
    client = connect(address, SlowRedis)
    client.clock, client.delay = clock, 0.2
    a = SingletonLease(client, key, "instance-a", 1.0, clock=clock)

    assert a.try_acquire() is not None
    assert clock.now >= 100.4  # the SET and the INCR each answered 0.2 s late
    assert a.valid_until == pytest.approx(101.0)
    assert a.remaining() == pytest.approx(101.0 - clock.now)

    clock.now = 200.0
    assert a.renew() is True
    assert clock.now >= 200.2
    assert a.valid_until == pytest.approx(201.0)


def test_an_acquisition_answered_after_its_deadline_is_given_back(connect: Connect, address: str, key: str) -> None:
    clock = FakeClock(100.0)
    client = connect(address, SlowRedis)
    client.clock, client.delay = clock, 0.6  # SET answered at 100.6, INCR at 101.2: past the deadline, 101.0
    a = SingletonLease(client, key, "instance-a", 1.0, clock=clock)

    assert a.try_acquire() is None
    assert a.token is None
    assert a.holder() is None
    assert SingletonLease(connect(address), key, "instance-b", TTL).try_acquire() is not None


def test_no_fencing_token_no_lease(connect: Connect, address: str, key: str) -> None:
    a = SingletonLease(connect(address, FenceDown), key, "instance-a", TTL)
    b = SingletonLease(connect(address), key, "instance-b", TTL)

    assert a.try_acquire() is None
    assert a.token is None
    assert b.holder() is None  # given back at once, not left to expire
    assert b.try_acquire() is not None


def test_release_frees_it_at_once(connect: Connect, address: str, key: str) -> None:
    a = SingletonLease(connect(address), key, "instance-a", 10.0)
    b = SingletonLease(connect(address), key, "instance-b", 10.0)
    first = a.try_acquire()
    assert first is not None

    a.release()

    assert a.token is None
    assert a.valid_until == 0.0
    assert not a.held()
    assert a.holder() is None
    second = b.try_acquire()
    assert second is not None
    assert second > first
    assert a.renew() is False


def test_release_by_another_does_nothing(connect: Connect, address: str, key: str) -> None:
    a = SingletonLease(connect(address), key, "instance-a", 10.0)
    b = SingletonLease(connect(address), key, "instance-b", 10.0)
    token = a.try_acquire()
    assert b.try_acquire() is None

    b.release()

    assert a.holder() == "instance-a"
    assert a.renew() is True
    assert a.token == token


def test_a_ttl_under_a_millisecond_is_refused(connect: Connect, address: str, key: str) -> None:
    with pytest.raises(ValueError, match="at least a millisecond"):
        SingletonLease(connect(address), key, "instance-a", 0.0005)


def test_redis_paused_renew_fails_fast_and_the_deadline_stays(connect: Connect, tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis").start()
    try:
        a = SingletonLease(connect(server.url), "singleton:report", "instance-a", 1.0)
        b = SingletonLease(connect(server.url), "singleton:report", "instance-b", 1.0)
        token = a.try_acquire()
        assert token is not None
        deadline = a.valid_until
        server.pause()

        started = time.monotonic()
        assert a.renew() is False
        assert time.monotonic() - started < 0.35
        assert a.valid_until == deadline
        assert a.token == token  # not known to be lost: the deadline says for how long it may still be ours
        started = time.monotonic()
        assert b.try_acquire() is None
        assert time.monotonic() - started < 0.35
        b.release()
        with pytest.raises(redis.RedisError):
            b.holder()
        wait_for(lambda: not a.held(), timeout=deadline - time.monotonic() + 0.1)
        assert a.remaining() == 0.0

        server.resume()
        wait_for(lambda: b.try_acquire() is not None, timeout=3.0)
        wait_for(lambda: not a.renew() and a.token is None, timeout=1.0)
    finally:
        server.stop()


def test_redis_gone_nothing_raises_but_holder(connect: Connect, tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis").start()
    try:
        a = SingletonLease(connect(server.url), "singleton:report", "instance-a", 1.0)
        token = a.try_acquire()
        assert token is not None
        server.stop()

        assert a.renew() is False
        assert a.held()  # refused at once, not known to be lost: still ours until its deadline
        assert a.try_acquire() is None
        a.release()
        assert a.token is None
        assert SingletonLease(connect(server.url), "singleton:report", "instance-b", 1.0).try_acquire() is None
        with pytest.raises(redis.ConnectionError):
            a.holder()
    finally:
        server.stop()


def test_partition_the_cut_owner_stops_before_another_takes_over(
    connect: Connect, redis_server: RedisServer, address: str, key: str
) -> None:
    ttl = 1.0
    with TcpProxy(redis_server.port) as proxy:
        a = SingletonLease(connect(proxy.redis_url), key, "instance-a", ttl)
        b = SingletonLease(connect(address), key, "instance-b", ttl)
        first = a.try_acquire()
        assert first is not None
        deadline = a.valid_until
        proxy.cut()
        cut_at = time.monotonic()
        renewals: list[bool] = []
        stop = threading.Event()

        def keep_renewing() -> None:
            while not stop.is_set():
                renewals.append(a.renew())
                stop.wait(ttl / 5)

        renewer = threading.Thread(target=keep_renewing, daemon=True)
        renewer.start()
        try:
            while (second := b.try_acquire()) is None:
                assert time.monotonic() < cut_at + ttl + 1.0, "nobody took the lease of the cut owner over"
                time.sleep(0.02)
            taken = time.monotonic()
        finally:
            stop.set()
            renewer.join(timeout=2.0)

        assert renewals
        assert not any(renewals)
        assert a.valid_until == deadline
        assert taken >= deadline  # the cut owner's time was up before the other got the lease: no overlap
        assert a.remaining() == 0.0
        assert not a.held()
        assert a.token == first  # cut off, it cannot know it lost the lease; its deadline tells it to stop
        assert second > first
        assert b.holder() == "instance-b"

        proxy.restore()
        wait_for(lambda: not a.renew() and a.token is None, timeout=1.0)
        assert b.renew() is True


def test_fencing_tokens_still_grow_after_redis_lost_everything(tmp_path: Path, connect: Connect) -> None:
    server = RedisServer(tmp_path / "redis").start()
    try:
        first = SingletonLease(connect(server.url), "svc:singleton:x", "i1", 1.0)
        second = SingletonLease(connect(server.url), "svc:singleton:x", "i2", 1.0)
        earlier = first.try_acquire()
        first.release()
        later = second.try_acquire()
        assert earlier is not None
        assert later is not None
        assert later > earlier
        second.release()
        server.stop()
        server.start()  # empty: the counter is gone too
        again = first.try_acquire()
        assert again is not None
        assert again > later
    finally:
        server.stop()
