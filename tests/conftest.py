"""Fixtures shared by the test modules: a real Redis server, and plugin-health's own pytest plugin (``plugin_host``,
``lifecycle_manager``), named here as well as by its entry point so that a checkout whose installed metadata
predates the entry point has it too."""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Iterator

import pytest
from redis_server import RedisServer

pytest_plugins = ["plugin_health.testing.pytest_plugin"]

#: Whether the test process itself runs prometheus_client in multiprocess mode (set before pytest started).
_MULTIPROCESS_BEFORE = "PROMETHEUS_MULTIPROC_DIR" in os.environ


def pytest_collection_finish(session: pytest.Session) -> None:
    """Importing the gunicorn configuration chooses (and empties) a metrics directory for the process that imports
    it: a test module that imported it would put the whole test process, and every server it starts, in one
    multiprocess directory, their counts summed (the metrics tests then fail far from the cause). Say so here."""
    if "plugin_health.serving.gunicorn_conf" in sys.modules and not _MULTIPROCESS_BEFORE:
        raise pytest.UsageError("a test module imports plugin_health.serving.gunicorn_conf in the test process: "
                                "import what it needs from elsewhere, or import it in a child process")


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
