"""A worker that waited its whole deadline for the plugin host says so: 504 (the host is there, it did not answer
in time), not 503 (no host can act). A tool call the core admitted, expecting it to end in time, may still end
after the caller's deadline on a busy machine: that is a gateway timeout, and a load balancer must not take it for
a host that is down."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask

from plugin_health.app import EXTENSION
from plugin_health.coordination.control import HostTimeoutError, HostUnavailableError, RemoteControl
from tests.test_api import PLUGINS, TOKEN, assert_problem, build, write_plugins

AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def silent_host(tmp_path: Path) -> Iterator[Path]:
    """A control socket that takes connections and never answers (a core busy past the caller's deadline)."""
    path = tmp_path / "control.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(str(path))
        listener.listen(8)
        yield path


def test_a_host_that_does_not_answer_in_time_is_a_timeout(silent_host: Path) -> None:
    began = time.monotonic()
    with pytest.raises(HostTimeoutError, match=r"no answer within 0\.3 s"):
        RemoteControl(silent_host, 0.3).run_tool("echo", "ping", [], {})
    assert 0.25 < time.monotonic() - began < 5.0


def test_no_host_listening_is_unavailable_not_a_timeout(tmp_path: Path) -> None:
    with pytest.raises(HostUnavailableError) as raised:
        RemoteControl(tmp_path / "nobody.sock", 0.3).run_tool("echo", "ping", [], {})
    assert not isinstance(raised.value, HostTimeoutError)


class LateControl:
    """A control whose every request passes its deadline."""

    def _late(self, *args: object) -> object:
        raise HostTimeoutError("no answer within 30 s")

    run_tool = restart = disable = enable = _late

    def close(self) -> None:
        """Nothing to release."""


@pytest.fixture
def app(tmp_path: Path) -> Iterator[Flask]:
    write_plugins(tmp_path, PLUGINS)
    app = build(tmp_path)
    service = app.extensions[EXTENSION]
    own, service.control = service.control, LateControl()
    yield app
    service.control = own
    service.shutdown()


@pytest.mark.parametrize("path", ["/v1/plugins/core/tools/ping", "/v1/plugins/core/restart"])
def test_a_request_the_host_did_not_answer_in_time_is_504(app: Flask, path: str) -> None:
    response = app.test_client().post(path, json={"args": [], "kwargs": {}}, headers=AUTH)
    body = assert_problem(response, 504, "no answer within 30 s")
    assert body["type"].endswith("/host-timeout")
