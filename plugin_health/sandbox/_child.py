"""The plugin's child process: import the plugin, instantiate it, cap memory, then serve calls until EOF.

Protocol over one duplex pipe, every message pickled: the child first answers ``("ok", metadata)`` or
``("err", error_type, error)``; then, for each request ``(method, args, kwargs)``, one reply of the same
shape. Only plain data crosses: the plugin's class and instance never leave the child.
"""

from __future__ import annotations

import pickle
import resource
import signal
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from plugin_health.loader.importing import load_plugin_class
from plugin_health.loader.sources import PluginSource
from plugin_health.plugin import Plugin, tool_names
from plugin_health.sandbox.memory import cap_process
from plugin_health.sandbox.results import MEMORY, UnpicklableResultError, describe, memory_message


def dumps(message: tuple[Any, ...]) -> bytes:
    """Pickle one protocol message."""
    return pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)


def metadata(cls: type[Plugin], source: PluginSource) -> dict[str, Any]:
    """What the server needs to know about the plugin class, as plain data."""
    return {
        "class_name": cls.__qualname__,
        "name": str(cls.name or source.name),
        "version": str(cls.version),
        "requires": [str(requirement) for requirement in cls.requires],
        "critical": bool(cls.critical),
        "timeout": None if cls.timeout is None else float(cls.timeout),
        "memory_limit_mb": None if cls.memory_limit_mb is None else int(cls.memory_limit_mb),
        "isolation": str(cls.isolation),
        "tools": list(tool_names(cls)),
    }


def attempt(step: Callable[[], Any], memory_limit_mb: int | None) -> bytes:
    """Run one step of plugin code and pickle its outcome; never raises for what the plugin does."""
    pickling = False
    try:
        value = step()
        pickling = True
        return dumps(("ok", value))
    except BaseException as exc:  # noqa: BLE001 - the child's isolation boundary: plugin code and its pickling
        if isinstance(exc, MemoryError) and memory_limit_mb is not None:
            return dumps(("err", MEMORY, memory_message(memory_limit_mb)))
        if pickling:
            problem = f"the result cannot be pickled: {describe(exc)}"
            return dumps(("err", UnpicklableResultError.__name__, problem))
        return dumps(("err", type(exc).__name__, describe(exc)))


def serve(conn: Connection, source: PluginSource, memory_limit_mb: int | None) -> None:
    """The child's main function: load the plugin, answer calls, exit when the server's end closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C in a terminal is the server's to handle, not ours
    _soft, hard = resource.getrlimit(resource.RLIMIT_CORE)
    resource.setrlimit(resource.RLIMIT_CORE, (0, hard))  # a segfaulting plugin must not write a core dump
    instances: list[Plugin] = []

    def load() -> dict[str, Any]:
        cls = load_plugin_class(source)
        instances.append(cls())
        return metadata(cls, source)

    reply = attempt(load, None)
    if instances and memory_limit_mb is not None:
        cap_process(memory_limit_mb)  # the baseline is what the import and the constructor left
    if not _send(conn, reply) or not instances:
        return
    instance = instances[0]
    while True:
        try:
            method, args, kwargs = pickle.loads(conn.recv_bytes())
        except (EOFError, OSError):
            return  # the server closed its end or died

        def call(method: str = method, args: tuple[Any, ...] = args, kwargs: dict[str, Any] = kwargs) -> Any:
            if method.startswith("_"):
                raise AttributeError(f"{method!r} is not a plugin method")
            return getattr(instance, method)(*args, **kwargs)

        if not _send(conn, attempt(call, memory_limit_mb)):
            return


def _send(conn: Connection, reply: bytes) -> bool:
    try:
        conn.send_bytes(reply)
    except OSError:  # the server is gone: nobody to answer
        return False
    return True
