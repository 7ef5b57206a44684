"""How a worker asks the core to act: operator actions and tool calls over a Unix socket.

The workers never run plugin code, nor does the core (its runners do). :class:`ControlServer` runs in the core
process on a Unix socket beside the store (mode 0600), one thread per connection; :class:`RemoteControl` is its
client in each worker; an app that runs its core itself uses the core's ``Operations`` directly. All speak
:class:`Control`. A request and its answer are one line of JSON each; typed errors cross as their class name
and attributes and are raised again on the worker's side, so the API maps them to statuses in one place.

The token is checked by the worker before it asks; the socket itself is guarded by file permissions. Actions on
other instances (a Redis store) travel over :mod:`plugin_health.coordination.control_redis` instead.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import socketserver
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from plugin_health.config import Settings
from plugin_health.errors import (
    IllegalTransitionError,
    PluginBusyError,
    PluginError,
    PluginNotRunningError,
    ToolArgumentsError,
    UnknownPluginError,
    UnknownToolError,
)
from plugin_health.sandbox import PluginSandboxResult
from plugin_health.store import PluginSnapshot, instance_store_file

#: The longest request line the host reads (a tool call's arguments included).
MAX_REQUEST = 1024 * 1024


class HostUnavailableError(PluginError):
    """No plugin host answered (none runs, or it did not answer in time)."""

    def __init__(self, detail: str) -> None:
        super().__init__(f"the plugin host cannot act now: {detail}")
        self.detail = detail


class HostTimeoutError(HostUnavailableError):
    """A plugin host took the request but did not answer before the asker's deadline (a tool call the core admitted
    that ended late on a busy machine, or a core too busy to answer): a gateway timeout, not a missing host."""


class Control(Protocol):
    """What the API asks of whoever hosts the plugins."""

    def restart(self, name: str) -> PluginSnapshot:
        """Restart a plugin (see :mod:`plugin_health.runtime.operations`)."""
        ...

    def disable(self, name: str) -> PluginSnapshot:
        """Disable a plugin."""
        ...

    def enable(self, name: str) -> PluginSnapshot:
        """Enable a plugin."""
        ...

    def run_tool(self, name: str, tool: str, args: list[Any], kwargs: dict[str, Any]) -> PluginSandboxResult:
        """Call a plugin's tool."""
        ...

    def close(self) -> None:
        """Release what it holds (connections)."""
        ...


def socket_path(settings: Settings) -> Path | None:
    """Where the host listens; None for a store no other process sees. Long paths move to the temp dir."""
    store = instance_store_file(settings)
    if store is None:
        return None
    path = store.resolve().with_name(store.name + ".sock")
    if len(os.fsencode(path)) > 100:  # AF_UNIX paths are limited to 107 bytes
        digest = hashlib.sha256(os.fsencode(path)).hexdigest()[:20]
        path = Path(tempfile.gettempdir()) / f"plugin-health-{digest}.sock"
    return path


# -- the wire --------------------------------------------------------------------------------------------


def error_to_wire(error: PluginError) -> dict[str, Any]:
    wire: dict[str, Any] = {"type": type(error).__name__, "message": str(error)}
    for attribute in ("plugin", "state", "attempted", "allowed", "tool", "queue_limit", "problem"):
        if hasattr(error, attribute):
            value = getattr(error, attribute)
            wire[attribute] = list(value) if isinstance(value, tuple) else value
    return wire


def _error_from_wire(wire: dict[str, Any]) -> PluginError:
    kind, plugin = wire.get("type"), str(wire.get("plugin", ""))
    if kind == "UnknownPluginError":
        return UnknownPluginError(plugin)
    if kind == "UnknownToolError":
        return UnknownToolError(plugin, str(wire.get("tool", "")))
    if kind == "PluginNotRunningError":
        return PluginNotRunningError(plugin, str(wire.get("state", "")))
    if kind == "ToolArgumentsError":
        return ToolArgumentsError(plugin, str(wire.get("tool", "")), str(wire.get("problem", "")))
    if kind == "PluginBusyError":
        return PluginBusyError(plugin, int(wire.get("queue_limit", 0)))
    if kind == "IllegalTransitionError":
        return IllegalTransitionError(plugin, wire.get("state"), str(wire.get("attempted", "")),
                                      tuple(wire.get("allowed", ())))
    return HostUnavailableError(f"the host failed: {wire.get('message', 'no detail')}")


def unwrap(answer: dict[str, Any]) -> dict[str, Any]:
    """The answer, or its error raised again as the typed exception it was."""
    if not answer.get("ok"):
        raise _error_from_wire(answer.get("error", {}))
    return answer


class _Handler(socketserver.StreamRequestHandler):
    server: ControlServer

    def handle(self) -> None:
        line = self.rfile.readline(MAX_REQUEST + 1)
        if not line:
            return
        answer = self.server.answer(line)
        self.wfile.write(json.dumps(answer, separators=(",", ":")).encode() + b"\n")


class ControlServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    """The host's end: answers each connection's one request on a thread of its own."""

    daemon_threads = True

    def __init__(self, path: Path, answer: Callable[[bytes], dict[str, Any]]) -> None:
        self.path = path
        self._answer = answer
        path.parent.mkdir(parents=True, exist_ok=True)
        path.unlink(missing_ok=True)  # a dead host's socket; the caller holds the host lock
        old_mask = os.umask(0o177)
        try:
            super().__init__(str(path), _Handler)
        finally:
            os.umask(old_mask)
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Serve on a daemon thread."""
        self._thread = threading.Thread(target=self.serve_forever, name="plugin-health-control", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop serving and remove the socket."""
        self.shutdown()
        self.server_close()
        self.path.unlink(missing_ok=True)

    def answer(self, line: bytes) -> dict[str, Any]:
        """The answer to one request line."""
        return self._answer(line)


class Asking:
    """The typed requests of a worker's end; ``_ask`` carries one to the host and back."""

    #: Seconds the worker waits for an answer.
    timeout: float = 30.0

    def restart(self, name: str) -> PluginSnapshot:
        """Restart a plugin."""
        return PluginSnapshot.from_json(self._ask({"op": "restart", "plugin": name})["snapshot"])

    def disable(self, name: str) -> PluginSnapshot:
        """Disable a plugin."""
        return PluginSnapshot.from_json(self._ask({"op": "disable", "plugin": name})["snapshot"])

    def enable(self, name: str) -> PluginSnapshot:
        """Enable a plugin."""
        return PluginSnapshot.from_json(self._ask({"op": "enable", "plugin": name})["snapshot"])

    def run_tool(self, name: str, tool: str, args: list[Any], kwargs: dict[str, Any]) -> PluginSandboxResult:
        """Call a plugin's tool."""
        request = {"op": "tool", "plugin": name, "tool": tool, "args": args, "kwargs": kwargs,
                   "deadline": time.time() + self.timeout}
        data = self._ask(request)["result"]
        return PluginSandboxResult(data["ok"], data["result"], data["error"], data["error_type"], data["duration_ms"])

    def close(self) -> None:
        """Nothing to release by default (one connection per request)."""

    def _ask(self, request: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError


class RemoteControl(Asking):
    """A worker's end over the host's Unix socket: one connection per request."""

    def __init__(self, path: Path, timeout: float) -> None:
        self.path = path
        self.timeout = timeout

    def _ask(self, request: dict[str, Any]) -> dict[str, Any]:
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
                conn.settimeout(self.timeout)
                conn.connect(str(self.path))
                conn.sendall(json.dumps(request, separators=(",", ":")).encode() + b"\n")
                with conn.makefile("rb") as reader:
                    line = reader.readline()
        except TimeoutError:
            raise HostTimeoutError(f"no answer within {self.timeout:g} s") from None
        except OSError as err:
            raise HostUnavailableError(f"no plugin host is listening ({err.strerror or err})") from None
        if not line:
            raise HostUnavailableError("the host closed the connection without an answer")
        return unwrap(json.loads(line))
