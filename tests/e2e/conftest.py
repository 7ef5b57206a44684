"""Fixtures of the end-to-end tests: gunicorn servers that are always stopped."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest

from e2e.server import Server, start_gunicorn


@pytest.fixture(scope="module")
def tmp_module(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A temporary directory for the whole module."""
    return tmp_path_factory.mktemp("e2e")


@pytest.fixture(scope="module")
def gunicorn_factory(tmp_module: Path) -> Iterator[Callable[..., Server]]:
    """Start servers; every one still running at the end is stopped."""
    servers: list[Server] = []

    def make(plugin_dir: Path, env: Mapping[str, str], workers: int = 3) -> Server:
        directory = tmp_module / f"server{len(servers)}"
        directory.mkdir()
        server = start_gunicorn(directory, plugin_dir, env, workers)
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()
