"""Fixtures shared by the test modules: a real Redis server, and plugin-health's own pytest plugin (``plugin_host``,
``lifecycle_manager``), named here as well as by its entry point so that a checkout whose installed metadata
predates the entry point has it too."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from redis_server import RedisServer

pytest_plugins = ["plugin_health.testing.pytest_plugin"]


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One ``redis-server`` for the session (tests that stop Redis start their own)."""
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The session's Redis, under a key prefix of this test's own."""
    return f"{redis_server.url}?prefix=test-{uuid.uuid4().hex[:12]}"
