"""The test proxy that plays a network partition: it forwards, it cuts without closing, it heals."""

from __future__ import annotations

import socket
import threading
import time

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from redis_server import RedisServer
from tcp_proxy import TcpProxy


def _client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=0.2, socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0))


def test_forwards_cuts_and_restores(redis_server: RedisServer) -> None:
    with TcpProxy(redis_server.port) as proxy:
        before = _client(proxy.redis_url)
        assert before.ping() is True

        proxy.cut()
        during = _client(proxy.redis_url)
        started = time.monotonic()
        with pytest.raises(redis.TimeoutError):
            before.ping()
        with pytest.raises(redis.TimeoutError):
            during.ping()  # a new connection is accepted, and never answered
        assert time.monotonic() - started < 1.0

        proxy.restore()
        after = _client(proxy.redis_url)
        assert after.ping() is True
        for client in (before, during, after):
            client.close()


def test_a_cut_closes_nothing_until_restore(redis_server: RedisServer) -> None:
    with TcpProxy(redis_server.port) as proxy, socket.create_connection(("127.0.0.1", proxy.port)) as conn:
        conn.settimeout(0.3)
        conn.sendall(b"PING\r\n")
        assert conn.recv(16) == b"+PONG\r\n"

        proxy.cut()
        conn.sendall(b"PING\r\n")
        with pytest.raises(TimeoutError):
            conn.recv(16)  # neither an answer nor an end of stream

        proxy.restore()
        conn.settimeout(1.0)
        assert conn.recv(16) == b""  # the session that lived through the cut is ended


def test_close_stops_every_thread(redis_server: RedisServer) -> None:
    proxy = TcpProxy(redis_server.port).start()
    clients = [_client(proxy.redis_url) for _ in range(3)]
    for client in clients:
        client.ping()
    proxy.cut()
    started = time.monotonic()
    proxy.close()
    assert time.monotonic() - started < 2.0
    assert not [t for t in threading.enumerate() if t.name == f"tcp-proxy-{proxy.port}"]
    for client in clients:
        client.close()


def test_forwards_to_loopback_only() -> None:
    with pytest.raises(ValueError, match="loopback only"):
        TcpProxy(6379, "192.0.2.1")
