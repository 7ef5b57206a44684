"""A runner: the process that imports and runs plugin code (``python -m plugin_health.runtime.runner``).

The core starts it with a clean interpreter, a scrubbed environment and one socket (``--fd``), in a process group
of its own. It forks once before it touches any plugin: the parent stays a tiny *guard* that only waits for its
child and mirrors how it ended, and the child serves. So a plugin that kills "its parent" kills the guard, whose
death takes the child with it (``PR_SET_PDEATHSIG``); the core is never a runner's parent.

The child answers one request at a time, on its main thread, so every call gets the signal-based sandbox
(``SIGALRM`` timeouts, ``RLIMIT_DATA`` caps): ``load`` imports a plugin source, finds and validates its class and
instantiates it; ``call`` runs one method; ``drop`` forgets an instance. Answers are plain JSON
(:mod:`plugin_health.runtime.wire`); a result that JSON cannot carry, or that is larger than a frame may be, is a
failed call. When the core closes its end, the runner exits at once, whatever threads plugins left running.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import signal
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from plugin_health.loader.importing import find_plugin_class, import_source
from plugin_health.loader.registry import PluginSpec
from plugin_health.loader.sources import PluginSource
from plugin_health.plugin import Plugin, PluginContext
from plugin_health.runtime import wire
from plugin_health.sandbox import memory
from plugin_health.sandbox.inline import Sandbox
from plugin_health.sandbox.results import (
    MEMORY,
    TIMEOUT,
    PluginSandboxResult,
    SandboxLimits,
    describe,
    failed,
    timeout_message,
)

#: ``error_type`` of a result that JSON cannot carry (not a JSON value, or nested too deep).
UNENCODABLE = "UnserializableResultError"
#: ``error_type`` of a result larger than a message may be.
TOO_LARGE = "ResultTooLargeError"
_PR_SET_PDEATHSIG = 1
_MIB = 1024 * 1024
#: Seconds after a call's timeout within which its error must be described.
_DESCRIBE_GRACE = 0.05
# Bound before any plugin is imported: a plugin that replaces these names elsewhere cannot reach the runner's.
_exit = os._exit
_encode = wire.encode


@dataclass(slots=True)
class _Loaded:
    """One plugin instance in this runner."""

    instance: Plugin
    name: str
    limits: SandboxLimits
    kept: int = 0  # bytes that its calls grew the process by and did not give back


def _die_with_parent() -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the guard's poll of the socket still ends us
        pass


def _no_core_dumps() -> None:
    try:
        import resource

        resource.setrlimit(resource.RLIMIT_CORE, (0, resource.getrlimit(resource.RLIMIT_CORE)[1]))
    except (ValueError, OSError):
        pass


def _guard(child: int, core: int) -> None:
    """The guard's life: wait for the child, end it if the core goes away, then end the way it ended."""
    while True:
        pid, status = os.waitpid(child, os.WNOHANG)
        if pid:
            break
        if os.getppid() != core:
            os.kill(child, signal.SIGKILL)
            pid, status = os.waitpid(child, 0)
            break
        signal.sigtimedwait([signal.SIGCHLD], 0.25)  # wakes the moment the child ends (SIGCHLD is blocked)
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        if sig not in (signal.SIGKILL, signal.SIGSTOP):  # their handlers cannot be set (OSError), nor need be
            signal.signal(sig, signal.SIG_DFL)
        os.kill(os.getpid(), sig)
    _exit(os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 1)


class Runner:
    """The serving child: instances by slot, and the handlers of the three requests."""

    def __init__(self, sock: socket.socket, max_message: int) -> None:
        self.sock = sock
        self.max_message = max_message
        self.loaded: dict[int, _Loaded] = {}
        self.cap = 0  # the sum of the loaded plugins' memory allowances

    def serve(self) -> None:
        """Answer requests until the core closes its end; then exit without waiting for anything."""
        while True:
            try:
                request = wire.receive(self.sock, self.max_message)
            except (wire.WireError, TimeoutError):
                _exit(0)
            try:
                answer = self.handle(request)
            except BaseException as err:  # noqa: BLE001 - the runner's own boundary: it answers, whatever happened
                answer = {"ok": False, "error_type": "RunnerError", "error": f"the runner failed: {describe(err)}"}
            answer["id"] = request.get("id") if isinstance(request, dict) else None
            try:
                wire.send(self.sock, self._frame(answer))
            except wire.PeerClosedError:
                _exit(0)

    def _frame(self, answer: dict[str, Any]) -> bytes:
        """The answer as one frame; a result that no frame can carry becomes a failed call saying why."""
        try:
            return _encode(answer, self.max_message)
        except wire.MessageTooLargeError as err:
            error_type, error = TOO_LARGE, f"the result is {err.size} bytes, larger than the limit of {err.limit}"
        except (TypeError, MemoryError) as err:
            error_type, error = UNENCODABLE, f"the result cannot be sent as JSON: {describe(err)}"
        refused = {"ok": False, "error_type": error_type, "error": error, "duration_ms": answer.get("duration_ms"),
                   "id": answer.get("id")}
        return _encode(refused, self.max_message)

    def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        """The answer to one request."""
        op = request.get("op")
        if op == "call":
            return self.call(request)
        if op == "load":
            return self.load(request)
        if op == "drop":
            self.loaded.pop(int(request["slot"]), None)
            return {"ok": True}
        return {"ok": False, "error_type": "ProtocolError", "error": f"unknown op {op!r}"}

    def load(self, request: dict[str, Any]) -> dict[str, Any]:
        """Import a source, validate its class and instantiate it: its declaration, or the phase that failed."""
        raw = request["source"]
        path = raw.get("path")
        source = PluginSource(raw["name"], raw["origin"], Path(path) if path else None, raw.get("entry_point"))
        defaults = SandboxLimits(request.get("timeout"), request.get("memory_limit_mb"))
        sandbox = Sandbox(defaults)
        outcome: dict[str, Any] = {}

        def phase(name: str, result: PluginSandboxResult) -> Any:
            if not result.ok:
                outcome.update(ok=False, phase=name, error_type=result.error_type, error=result.error)
                raise _Stop
            return result.result

        try:
            module = phase("import", sandbox.run(import_source, source))
            cls = phase("class lookup", sandbox.run(find_plugin_class, module, source))
            spec: PluginSpec = phase("declaration", sandbox.run(PluginSpec.from_class, cls, source.name))
            limits = SandboxLimits(
                spec.timeout if spec.timeout is not None else defaults.timeout,
                spec.memory_limit_mb if spec.memory_limit_mb is not None else defaults.memory_limit_mb,
            )
            instance = phase("instantiation", Sandbox(limits).run(cls))
        except _Stop:
            return outcome
        slot = int(request["slot"])
        self.loaded[slot] = _Loaded(instance, spec.name, limits)
        self._recap()
        return {"ok": True, "result": spec.to_mapping()}

    def call(self, request: dict[str, Any]) -> dict[str, Any]:
        """Run one method of a loaded instance under its limits; the outcome as plain data."""
        loaded = self.loaded.get(int(request["slot"]))
        if loaded is None:
            return {"ok": False, "error_type": "ProtocolError", "error": "no such plugin in this runner"}
        method = str(request["method"])
        timeout = request.get("timeout") or loaded.limits.timeout
        limits = SandboxLimits(timeout, loaded.limits.memory_limit_mb)
        args = list(request.get("args") or ())
        if method == "initialize":
            args = [self._context(loaded, request.get("context") or {})]
        before = memory.usage()
        result = _guarded(limits, loaded.instance, method, args, request.get("kwargs") or {})
        after = memory.usage()
        answer: dict[str, Any] = {
            "ok": result.ok,
            "error": result.error,
            "error_type": result.error_type,
            "duration_ms": result.duration_ms,
        }
        if before is not None and after is not None and limits.memory_limit_mb is not None:
            loaded.kept = max(0, loaded.kept + after - before)
            if loaded.kept > limits.memory_limit_mb * _MIB:
                kept_mb = loaded.kept // _MIB
                problem = f"its calls kept {kept_mb} MiB, past its memory limit of {limits.memory_limit_mb} MiB"
                return {**failed(MEMORY, problem, result.duration_ms).to_dict(), "kept": True}
        if result.ok:
            answer["result"] = result.result
        return answer

    def _context(self, loaded: _Loaded, raw: dict[str, Any]) -> PluginContext:
        import logging
        from types import MappingProxyType

        plugins = {str(name): self.loaded[int(slot)].instance for name, slot in dict(raw.get("plugins") or {}).items()
                   if int(slot) in self.loaded}
        return PluginContext(
            name=loaded.name,
            config=MappingProxyType(dict(raw.get("config") or {})),
            logger=logging.getLogger(f"plugin_health.plugins.{loaded.name}"),
            plugins=MappingProxyType(plugins),
        )

    def _recap(self) -> None:
        """Cap the whole runner at what it uses now plus every loaded plugin's allowance, and one call's more.

        That one more allowance is what lets a plugin keep past its limit and be seen doing it (its runner is then
        recycled): capped at the allowances alone, a plugin that keeps memory starves at the cap instead, every
        call failing, and the runner is never given back what it kept.
        """
        allowances = [loaded.limits.memory_limit_mb for loaded in self.loaded.values()]
        if allowances and all(mb is not None for mb in allowances):
            known = [mb for mb in allowances if mb is not None]
            memory.cap_process(sum(known) + max(known))


class _Stop(Exception):
    """A load phase failed; its outcome is recorded."""


def _guarded(
    limits: SandboxLimits, instance: Plugin, method: str, args: list[Any], kwargs: dict[str, Any]
) -> PluginSandboxResult:
    """Run the call in its sandbox, inside a second guard a little longer, which stops what the sandbox itself runs
    of the plugin's after the call (the ``__str__`` of the exception it raised)."""
    inner = Sandbox(limits)
    if limits.timeout is None:
        return inner.run(_bound, instance, method, args, kwargs)
    outer = Sandbox(SandboxLimits(limits.timeout + _DESCRIBE_GRACE)).run(
        inner.run, _bound, instance, method, args, kwargs
    )
    if outer.ok:
        result: PluginSandboxResult = outer.result
        return result
    if outer.error_type == TIMEOUT:  # the call's own timeout, not the guard's few more milliseconds
        return failed(TIMEOUT, timeout_message(limits.timeout), outer.duration_ms)
    return outer


def _bound(instance: Plugin, method: str, args: list[Any], kwargs: dict[str, Any]) -> Any:
    if method.startswith("_"):
        raise AttributeError(f"{method!r} is not a plugin method")
    return getattr(instance, method)(*args, **kwargs)


def main(argv: list[str] | None = None) -> None:
    """Fork the guard, then serve on the socket the core passed."""
    parser = argparse.ArgumentParser(prog="plugin_health.runtime.runner")
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--max-message", type=int, default=wire.MAX_MESSAGE)
    parser.add_argument("--label", default="runner")
    options = parser.parse_args(argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C in a terminal is the service's to handle
    _no_core_dumps()  # before the fork: the guard mirrors its child's SIGSEGV onto itself, and must not dump either
    core, guard = os.getppid(), os.getpid()
    signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGCHLD])  # kept pending for the guard's sigtimedwait
    child = os.fork()
    if child:
        os.close(options.fd)
        _guard(child, core)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGCHLD])  # the serving child's plugins get the usual mask
    _die_with_parent()
    if os.getppid() != guard:  # the guard died between the fork and the prctl
        _exit(1)
    sock = socket.socket(fileno=options.fd)
    sock.set_inheritable(False)  # programs a plugin runs do not get the core's line
    Runner(sock, options.max_message).serve()


if __name__ == "__main__":
    main(sys.argv[1:])
