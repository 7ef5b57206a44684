"""A runner: the process that imports and runs plugin code (``python -m plugin_health.runtime.runner``).

The core starts it with a clean interpreter, a scrubbed environment and one socket (``--fd``), in a process group
of its own. It forks once before it touches any plugin: the parent stays a tiny *guard* that only waits for its
child and mirrors how it ended, and the child serves. So a plugin that kills "its parent" kills the guard, whose
death takes the child with it (``PR_SET_PDEATHSIG``); the core is never a runner's parent.

The child answers one request at a time, on its main thread, so every call gets the signal-based sandbox
(``SIGALRM`` timeouts, ``RLIMIT_DATA`` caps): ``load`` imports a plugin source, finds and validates its class and
instantiates it; ``call`` runs one method; ``drop`` forgets an instance. Answers are plain JSON
(:mod:`plugin_health.runtime.wire`); a result that JSON cannot carry, or that is larger than a frame may be, is a
failed call. Answers are written when plugin code is about to run next (and once a request is answered), several
in one write; ``Plugin``'s own no-op hooks, where a plugin inherits them, are answered without a call. When the core
closes its end, the runner exits at once, whatever threads plugins left running.
"""

from __future__ import annotations

import contextlib
import ctypes
import inspect
import json
import os
import re
import resource
import select
import signal
import socket
import sys
import time
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from plugin_health.compact_json import compact_encoder
from plugin_health.errors import InvalidHealthResultError
from plugin_health.health import HealthResult
from plugin_health.loader.importing import find_plugin_class, import_source
from plugin_health.loader.sources import PluginSource
from plugin_health.plugin import LIFECYCLE_METHODS, NAME_PATTERN, Plugin, PluginContext, raw_declaration
from plugin_health.runtime import wire
from plugin_health.sandbox import memory
from plugin_health.sandbox.inline import Sandbox
from plugin_health.sandbox.results import (
    MEMORY,
    PluginSandboxResult,
    SandboxLimits,
    describe,
    failed,
    memory_message,
)
from plugin_health.sandbox.timeouts import SandboxTimeout

#: ``error_type`` of a result that JSON cannot carry (not a JSON value, or nested too deep).
UNENCODABLE = "UnserializableResultError"
#: ``error_type`` of a tool call whose arguments do not bind to the tool's signature.
ARGUMENTS = "ToolArgumentsError"
#: ``error_type`` of a result larger than a message may be.
TOO_LARGE = "ResultTooLargeError"
HEALTH_RESULT = wire.HEALTH_RESULT
#: Member of an answer, until it is framed, holding the answers (already encoded) that ride in its frame: a bring-up's
#: phases that ran no plugin code since it (their list is the frame's ``then``).
RIDING = "riding_json"
#: Seconds a group of loads may spend compiling ahead (``Runner.compile_ahead``), checked after each compile: the
#: first load's time, which the core holds to that load's deadline. Sixty-four small plugins take about 2 ms.
AHEAD_SECONDS = 0.02
#: Key of a load request, once read, under which its code compiled ahead waits (no key the core's ``marshal`` frames
#: can carry: only ``compile_ahead`` puts one there).
_COMPILED = object()
_PR_SET_PDEATHSIG = 1
_MIB = 1024 * 1024
#: What the loader's declaration checks allow (``plugin_health.loader.registry``), mirrored to stay light here.
_MAX_TIMEOUT = 86_400
_MAX_MEMORY_MB = 1024 * 1024
# Bound before any plugin is imported: a plugin that replaces these names elsewhere cannot reach the runner's.
_exit = os._exit
_select = select.select
_compile = compile
_clock = time.perf_counter
_dumps = json.JSONEncoder(allow_nan=False, separators=(",", ":"), default=lambda value: _refuse(value)).encode


#: ``_dumps`` for the runner's own answers (plain values it built, results spliced in already encoded): one C encoder
#: made once, with no check for cycles, which an answer cannot have (``JSONEncoder.encode`` makes a new encoder at each
#: call: a thirteenth of a runner's load of a small plugin). A plugin's results are encoded by ``_dumps`` (they may
#: hold cycles).
_encode_answer = compact_encoder(default=lambda value: _refuse(value), allow_nan=False)
_loads = wire.decode_request
_frame_text = wire.frame_text
#: ``Plugin``'s own lifecycle methods (taken before any plugin is imported), no-ops whose outcome is known: a
#: plugin that inherits one is answered this result (as JSON) without a call, as no plugin code would run in it.
_INHERITED = {"initialize": ("null", 1), "start": ("null", 0), "stop": ("null", 0), "health_check": ("true", 0)}
_BASE_METHODS = {method: Plugin.__dict__[method] for method in _INHERITED}
# The lookups Python itself makes, read off ``type`` and ``Plugin`` so that a plugin's class cannot answer them.
_mro_of = type.__dict__["__mro__"].__get__
_namespace_of = type.__dict__["__dict__"].__get__
_instance_dict = Plugin.__dict__["__dict__"].__get__


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
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_CORE, (0, resource.getrlimit(resource.RLIMIT_CORE)[1]))


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
        #: Answers not written yet: they go in one write before any plugin code runs next (``flush``).
        self._outbox: list[bytes] = []
        self.loaded: dict[int, _Loaded] = {}
        # The allowances of the loaded plugins, kept as they come and go: the runner's cap is worked out after every
        # load from their sum and their largest, in time that does not grow with the plugins loaded (a walk of every
        # plugin at each load made loading 10,000 of them quadratic: half of the runner's time).
        self._allowances: Counter[int] = Counter()
        self._allowance_total = 0
        self._unbounded = 0  # loaded plugins with no allowance (then the runner is not capped)
        self._sandboxes: dict[float | None, Sandbox] = {}
        #: The memory reading the last load ended with, for the next request if it is a load (``handle``).
        self._reading: int | None = None
        #: The runner's own soft and hard caps of ``RLIMIT_DATA`` (a call's guard lowers the soft one, then restores).
        self.cap, self.hard = resource.getrlimit(memory.LIMIT)

    def serve(self) -> None:
        """Answer requests until the core closes its end; then exit without waiting for anything. The core sends
        loads many at a time: they are read as they arrived, many in one ``recv``, and those that arrived together are
        taken as a group, whose loads are compiled ahead (:meth:`compile_ahead`) before the first one's runs."""
        reader = wire.FrameReader(self.sock, self.max_message, loads=_loads)
        group: deque[Any] = deque()
        ended = False  # the core's end closed, or a frame unreadable, after the group taken
        while True:
            if not group:
                if ended:
                    _exit(0)
                try:
                    group.append(reader.read(self._wait, more=True))
                    while reader.waiting():
                        group.append(reader.read(self._wait, more=True))
                except (wire.WireError, TimeoutError):
                    if not group:
                        _exit(0)
                    ended = True  # the requests before it are answered first, as they would have been one by one
                self.compile_ahead(group)
            request = group.popleft()
            try:
                answer = self.handle(request)
            except BaseException as err:  # noqa: BLE001 - the runner's own boundary: it answers, whatever happened
                answer = {"ok": False, "error_type": "RunnerError", "error": f"the runner failed: {describe(err)}"}
            self._send(answer, request.get("id") if isinstance(request, dict) else None)
            self.flush()

    def compile_ahead(self, group: Sequence[Any]) -> None:
        """Compile the sources of a group of loads one after another, before any of them is imported: a compiler
        that runs once per load, between the plugins' code and the runner's own, ran cold, at twice the time it takes
        warm (about 40 us against 20 for a trivial plugin), and so did the code around it; compiled together, a load
        of 10,000 trivial plugins takes a fifth less of the runner's time. Each load then imports its code as
        compiled (``_COMPILED``); a source that does not compile is left to its import, which fails it as always.

        Only a group whose first request is a load the core marked ``ahead`` (it reads the markers only there), with
        more after it; only loads so marked, each with its text of at most ``wire.AHEAD_TEXT`` bytes, and for at most
        ``AHEAD_SECONDS``. Compiling runs no plugin code (``compile`` is bound before any plugin is imported), but a
        runner lost meanwhile cannot be blamed on the first load: the core is told when compiling starts and when it
        ends (``{"compiling": id}``, ``{"compiled": id}``, the first load's id), each written before what follows it."""
        if len(group) < 2 or not _compiles_ahead(group[0]):
            return
        ident = group[0]["id"]
        self._outbox.append(_frame_text(f'{{"compiling":{ident}}}'))
        self.flush()
        began = _clock()
        # Whatever stops it (a plugin's signal handler, say) leaves the rest to compile as they are imported.
        with contextlib.suppress(BaseException):
            for request in group:
                if not _compiles_ahead(request):
                    continue
                source = request["source"]
                # What does not compile is compiled again by its import, which fails the way it always did.
                with contextlib.suppress(Exception):
                    request[_COMPILED] = _compile(source["text"], source["path"], "exec", dont_inherit=True)
                if _clock() - began >= AHEAD_SECONDS:
                    break
        self._outbox.append(_frame_text(f'{{"compiled":{ident}}}'))
        self.flush()

    def _wait(self) -> None:
        """Sleep until the core's next request arrives (``FrameReader`` asks only when nothing has): ``recv`` blocks
        on the runner's socket, unless a plugin made it non-blocking, which must not turn the wait into a busy loop."""
        try:
            _select([self.sock], [], [])
        except (OSError, ValueError) as err:  # closed or replaced under us: as if the core had gone
            raise wire.PeerClosedError(f"cannot wait for a request: {err}") from None

    def _send(self, answer: dict[str, Any], ident: object) -> None:
        """Queue one answer to the request ``ident`` (a request brought up with its load has several) for the next
        ``flush``: it must be written before any plugin code runs again, so that a runner lost in that code blames
        the call that ran it, never one answered before."""
        answer["id"] = ident
        self._outbox.append(self._frame(answer))

    def flush(self) -> None:
        """Write every answer queued, in one write (the core reads them as separate frames)."""
        if not self._outbox:
            return
        frames, self._outbox = self._outbox, []
        try:
            wire.send(self.sock, frames[0] if len(frames) == 1 else b"".join(frames))
        except wire.PeerClosedError:
            _exit(0)

    def _frame(self, answer: dict[str, Any]) -> bytes:
        """The answer as one frame; a result that no frame can carry becomes a failed call saying why.

        A call's result comes already encoded (``result_json``, encoded in the call's sandbox) and is spliced in, and so
        are the answers riding with it (:data:`RIDING`, already encoded: ``then``).
        """
        encoded = answer.pop("result_json", None)
        riding = answer.pop(RIDING, None)
        try:
            text = _encode_answer(answer)
            if encoded is not None:
                text = f'{text[:-1]},"result":{encoded}}}'
            if riding:
                text = f'{text[:-1]},"then":[{",".join(riding)}]}}'
            return _frame_text(text, self.max_message)
        except wire.MessageTooLargeError as err:
            error_type, error = TOO_LARGE, f"the result is {err.size} bytes, larger than the limit of {err.limit}"
        except (TypeError, ValueError, RecursionError, MemoryError) as err:
            error_type, error = UNENCODABLE, f"the answer cannot be sent as JSON: {describe(err)}"
        refused = {"ok": False, "error_type": error_type, "error": error, "duration_ms": answer.get("duration_ms"),
                   "id": answer.get("id")}
        if "method" in answer:  # a bring-up's phase: the core awaits that phase's answer
            refused["method"] = answer["method"]
        return _frame_text(_dumps(refused), self.max_message)

    def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        """The answer to one request."""
        op = request.get("op")
        # The memory reading taken as the last load ended, which the next load's guard may start from if this is
        # that load (only the runner's own sending and reading ran since); any other request comes between.
        reading, self._reading = self._reading, None
        if op == "call":
            return self.call(request)
        if op == "load":
            return self.load(request, reading)
        if op == "drop":
            self._forget(int(request["slot"]))
            return {"ok": True}
        return {"ok": False, "error_type": "ProtocolError", "error": f"unknown op {op!r}"}

    def load(self, request: dict[str, Any], before: int | None = None) -> dict[str, Any]:
        """Import a source, validate its class and instantiate it: its declaration, or the phase that failed.

        Import, class lookup and declaration run in one sandbox under the request's limits (:func:`_declare` notes
        the phase it reached, so a failure, the sandbox's timeout and memory guard included, is blamed on the
        phase that was running); instantiation runs in another, under the plugin's declared limits (none is armed
        for a class whose making runs no plugin code: :func:`_made_as_object_makes_it`). One sandbox
        rather than three saved 2 x 10 us of arming and disarming a load (of ~230 us for a trivial plugin). So the
        three share the request's timeout and memory allowance, as the core already holds the whole load to that
        timeout (plus its grace) before it kills the runner. Its memory guard is the runner's own (``_guarded``), from
        ``before``, the reading the last load ended with if given; the reading it ends with is the one the runner's
        cap is worked out from (``_recap``) when nothing ran after it, and the one the next load may start from.
        """
        raw = request["source"]
        path = raw.get("path")
        # Its path stays the core's text (``_declare``'s location): no ``Path`` is made of it.
        source = PluginSource(raw["name"], raw["origin"], None, raw.get("entry_point"))
        defaults = SandboxLimits(request.get("timeout"), request.get("memory_limit_mb"))
        text = raw.get("text")
        reached = ["import"]
        result, _, after = self._guarded(_declare, (source, reached, text if isinstance(text, bytes) else None,
                                                    path if isinstance(path, str) else None, _compiled(request)),
                                         defaults.timeout, defaults.memory_limit_mb, before)
        if not result.ok:
            return {"ok": False, "phase": reached[0], "error_type": result.error_type, "error": result.error}
        cls, declared = result.result
        # The core validates the declaration (a bad one never runs); until then, only sane limits are taken.
        limits = SandboxLimits(
            _positive(declared["timeout"], float, _MAX_TIMEOUT) or defaults.timeout,
            _positive(declared["memory_limit_mb"], int, _MAX_MEMORY_MB) or defaults.memory_limit_mb,
        )
        if _made_as_object_makes_it(cls):
            result = PluginSandboxResult(True, cls(), None, None, 0.0)  # only ``object``'s own C code runs
        else:
            result, after = Sandbox(limits).run(cls), None  # its code ran since that reading
        if not result.ok:
            return {"ok": False, "phase": "instantiation", "error_type": result.error_type, "error": result.error}
        slot = int(request["slot"])
        self._forget(slot)
        loaded = self.loaded[slot] = _Loaded(result.result, str(declared["name"]), limits)
        self._count(limits.memory_limit_mb, 1)
        self._recap(after)
        self._reading = after
        up = request.get("up")
        if not isinstance(up, dict) or not _may_come_up(declared, source.name, up.get("timeout")):
            return {"ok": True, "result": declared}
        return self._bring_up(loaded, up, request.get("id"), {"ok": True, "result": declared, "up": True}, after)

    def _bring_up(self, loaded: _Loaded, up: dict[str, Any], ident: object, answer: dict[str, Any],
                  before: int | None = None) -> dict[str, Any]:
        """``initialize``, then ``start`` if it passed, then (``up["check"]``) its first ``health_check``, of a plugin
        just loaded, as the core's ``call`` requests would run them; each answer before the last written before the
        next phase runs plugin code (``answer``, the load's, first), so that the core always knows the phase in
        flight and holds each to its own deadline. The last answer is returned (``serve`` sends it): the last
        phase's, or the initialize's or start's that failed or returned False.

        A phase ``Plugin`` itself answers (:data:`_INHERITED`) runs no plugin code: its answer rides in the frame of
        the answer before it (its ``then``, in order), so that a plugin that overrides none of them comes up in one
        frame, and the core reads one answer of it, not four. ``before``: the memory reading the load ended with (the
        first phase's guard starts from it); the last reading taken is the one the next load may start from."""
        phases = ["initialize", "start", "health_check"] if up.get("check") is True else ["initialize", "start"]
        riding: list[str] = []
        inherited: set[str] | None = None  # asked once for all phases, and again after plugin code ran
        for method in phases:
            if inherited is None:
                inherited = _inherited_of(loaded.instance, phases)
            if method in inherited:
                riding.append(_KNOWN[method])
                continue
            inherited = None
            self._send(_with_riding(answer, riding), ident)
            riding = []
            self.flush()
            args = [self._context(loaded, {"config": up.get("config") or {}})] if method == "initialize" else []
            # Each phase's reading after it is the next one's before it: only this sending ran in between.
            answer, before = self._measured(loaded, method, args, {}, None, before)
            answer["method"] = method
            if not answer["ok"] or answer.get("result_json") == "false":  # as the core judges a setup: not passed
                break
        self._reading = before
        return _with_riding(answer, riding)

    def call(self, request: dict[str, Any]) -> dict[str, Any]:
        """Run one method of a loaded instance under its limits; the outcome as plain data."""
        loaded = self.loaded.get(int(request["slot"]))
        if loaded is None:
            return {"ok": False, "error_type": "ProtocolError", "error": "no such plugin in this runner"}
        method = str(request["method"])
        args = list(request.get("args") or ())
        if method == "initialize":
            args = [self._context(loaded, request.get("context") or {})]
        return self.run(loaded, method, args, request.get("kwargs") or {}, request.get("timeout"))

    def run(self, loaded: _Loaded, method: str, args: list[Any], kwargs: dict[str, Any],
            timeout: float | None) -> dict[str, Any]:
        """Run ``method`` of ``loaded`` under its limits (``timeout``: a shorter one the core asked for); the
        outcome as plain data, its result already encoded (``result_json``). ``Plugin``'s own no-op hooks are
        answered without a call (:func:`_inherited`)."""
        if not kwargs and _inherited(loaded.instance, method, len(args)):
            return _known(method)
        return self._measured(loaded, method, args, kwargs, timeout, None)[0]

    def _measured(self, loaded: _Loaded, method: str, args: list[Any], kwargs: dict[str, Any],
                  timeout: float | None, before: int | None) -> tuple[dict[str, Any], int | None]:
        """``run``, given the memory reading just before it if one was taken (None: read it here), and giving the
        reading just after it too (a /proc read each, 5-9 us)."""
        allowance = loaded.limits.memory_limit_mb
        result, before, after = self._guarded(_bound, (loaded.instance, method, args, kwargs),
                                              timeout or loaded.limits.timeout, allowance, before)
        if result.ok and not result.result[0]:  # the plugin raised, its result is no JSON, or its arguments misfit
            _, error_type, error, *refused = result.result
            result = PluginSandboxResult(False, None, error, error_type, result.duration_ms, bool(refused))
        answer: dict[str, Any] = {
            "ok": result.ok,
            "error": result.error,
            "error_type": result.error_type,
            "duration_ms": result.duration_ms,
        }
        if result.refused:
            answer["refused"] = True
        if before is not None and after is not None and allowance is not None:
            loaded.kept = max(0, loaded.kept + after - before)
            if loaded.kept > allowance * _MIB:
                kept_mb = loaded.kept // _MIB
                problem = f"its calls kept {kept_mb} MiB, past its memory limit of {allowance} MiB"
                return {**failed(MEMORY, problem, result.duration_ms).to_dict(), "kept": True}, after
        if result.ok:
            answer["result_json"] = result.result[1]
            if len(result.result) > 2:
                answer[HEALTH_RESULT] = True
        return answer, after

    def _guarded(self, fn: Any, args: tuple[Any, ...], timeout: float | None, allowance: int | None,
                 before: int | None) -> tuple[PluginSandboxResult, int | None, int | None]:
        """``fn(*args)`` in a sandbox of ``timeout``, with the runner's soft memory limit lowered to ``before`` (the
        reading just before it; taken here if None) plus ``allowance`` MiB for its duration; the outcome (a
        ``MemoryError`` then is ``PluginMemoryError``), and the readings just before and just after it (None and
        None without an allowance: nothing is lowered, and nothing read).

        The memory guard is done here rather than by the sandbox: the runner knows its own cap (no ``getrlimit``), and
        the readings it needs also tell what a call kept and what the runner's cap is worked out from (a /proc read
        each, 5-9 us, and two ``setrlimit`` calls a guarded run)."""
        sandbox = self._sandboxes.get(timeout)
        if sandbox is None:
            sandbox = self._sandboxes[timeout] = Sandbox(SandboxLimits(timeout))
        if allowance is None:  # nothing to lower, nor to count: no reading
            return sandbox.run(fn, *args), None, None
        if before is None:
            before = memory.usage()
        if before is not None:
            target = before + allowance * _MIB
            if self.cap != resource.RLIM_INFINITY:
                target = min(target, self.cap)  # never above the runner's own cap
            resource.setrlimit(memory.LIMIT, (target, self.hard))
        try:
            result = sandbox.run(fn, *args)
        finally:
            if before is not None:  # lowered above
                resource.setrlimit(memory.LIMIT, (self.cap, self.hard))
        after = memory.usage()
        if result.error_type == "MemoryError":
            result = failed(MEMORY, memory_message(allowance), result.duration_ms)
        return result, before, after

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
            fencing_token=token if isinstance(token := raw.get("fencing_token"), int) else None,
        )

    def _recap(self, usage: int | None = None) -> None:
        """Cap the whole runner at what it uses now (``usage``: a reading taken since the last plugin code ran, if
        given) plus every loaded plugin's allowance, and one call's more.

        That one more allowance is what lets a plugin keep past its limit and be seen doing it (its runner is then
        recycled): capped at the allowances alone, a plugin that keeps memory starves at the cap instead, every
        call failing, and the runner is never given back what it kept.
        """
        if self.loaded and not self._unbounded:
            self.cap = memory.cap_process(self._allowance_total + max(self._allowances), usage, self.hard) or self.cap

    def _forget(self, slot: int) -> None:
        """Drop the instance in ``slot``, if any, and its allowance."""
        gone = self.loaded.pop(slot, None)
        if gone is not None:
            self._count(gone.limits.memory_limit_mb, -1)

    def _count(self, allowance: int | None, step: int) -> None:
        """Count one allowance in (``step`` 1) or out (-1)."""
        if allowance is None:
            self._unbounded += step
            return
        self._allowances[allowance] += step
        if not self._allowances[allowance]:
            del self._allowances[allowance]
        self._allowance_total += step * allowance


#: What a version must look like for its plugin to come up with its load (a strict subset of PEP 440's: the core,
#: which checks every version with ``packaging``, accepts all of these; any other goes the core's own way up).
_PLAIN_VERSION = re.compile(r"[0-9]{1,9}(\.[0-9]{1,9}){0,5}")


def _may_come_up(declared: dict[str, Any], source_name: str, longest: object) -> bool:
    """Whether a plugin just loaded may be initialized and started at once, in the same request: the core would
    surely accept its declaration (``PluginSpec.from_mapping``: checked here on a strict subset of what it accepts,
    without its libraries) and bring it up next, as it needs no other plugin, runs in this shared runner, is known
    by its source's name, and takes no longer than ``longest`` seconds a phase. Any other comes up the core's way."""
    timeout, memory = declared["timeout"], declared["memory_limit_mb"]
    return (
        declared["name"] == source_name and NAME_PATTERN.fullmatch(source_name) is not None
        and declared["requires"] == [] and declared["isolation"] == "inline" and declared["singleton"] in (None, False)
        and type(declared["critical"]) is bool
        and isinstance(declared["version"], str) and _PLAIN_VERSION.fullmatch(declared["version"]) is not None
        and (memory is None or (type(memory) is int and _positive(memory, int, _MAX_MEMORY_MB) is not None))
        and isinstance(longest, _NUMBERS) and not isinstance(longest, bool) and 0 < longest <= _MAX_TIMEOUT
        and (timeout is None or (_positive(timeout, float, longest) is not None))
        and not LIFECYCLE_METHODS.intersection(declared["tools"])
    )


def _namespaces(cls: type) -> list[tuple[type, Any]] | None:
    """Each class Python looks an attribute of ``cls``'s instances up in, in order, with its namespace (``object``
    left out: it cannot change); None for a class with a metaclass (its ``__call__`` and lookups can be plugin code).
    Read through ``type``'s own descriptors, so that no class can answer for itself."""
    if type(cls) is not type:
        return None
    return [(klass, _namespace_of(klass)) for klass in _mro_of(cls) if klass is not object]


def _inherited(instance: Plugin, method: str, arguments: int) -> bool:
    """Whether calling ``method`` of ``instance`` with ``arguments`` positional arguments would run ``Plugin``'s own
    no-op and nothing else: it is one of :data:`_INHERITED`, taking that many arguments, and ``_inherited_of`` says
    so. Any doubt: False, and the method is called as any other."""
    known = _INHERITED.get(method)
    return known is not None and known[1] == arguments and method in _inherited_of(instance, (method,))


def _inherited_of(instance: Plugin, methods: Sequence[str]) -> set[str]:
    """Those of ``methods`` (of :data:`_INHERITED`, called with their usual arguments) that ``instance`` would answer
    with ``Plugin``'s own no-op and nothing else: found on ``Plugin`` (as ``Plugin`` had it before any plugin was
    imported) the plain way: no class before ``Plugin`` defines it, no class defines ``__getattribute__``, the
    instance has no attribute of that name, and no metaclass is involved. Asked of several methods in one walk of the
    classes (a bring-up's three: a tenth of a runner's load of a small plugin, asked one at a time)."""
    classes = _namespaces(type(instance))
    if classes is None:
        return set()
    for _, namespace in classes:  # a loop: ``any`` over a generator cost more than its lookups
        if "__getattribute__" in namespace:
            return set()
    own = _instance_dict(instance)
    found = set()
    for method in methods:
        for klass, namespace in classes:
            if klass is Plugin or method in namespace:  # the first that has it, or Plugin
                if klass is Plugin and namespace.get(method) is _BASE_METHODS[method] and method not in own:
                    found.add(method)
                break
    return found


def _made_as_object_makes_it(cls: type) -> bool:
    """Whether ``cls()`` runs no plugin code: no metaclass, and no class it derives from but ``object`` defines
    ``__new__`` or ``__init__`` (``Plugin`` defines neither, unless a plugin gave it one)."""
    classes = _namespaces(cls)
    if classes is None:
        return False
    for _, namespace in classes:  # noqa: SIM110 - a loop: ``all`` over a generator cost more than its lookups
        if "__new__" in namespace or "__init__" in namespace:
            return False
    return True


def _known(method: str) -> dict[str, Any]:
    """The answer to a call of ``Plugin``'s own ``method`` (:func:`_inherited`): passed, in no time."""
    return {"ok": True, "error": None, "error_type": None, "duration_ms": 0.0, "result_json": _INHERITED[method][0]}


#: The answers of ``Plugin``'s own lifecycle methods as they ride in a bring-up's frame (``then``): the method's name
#: alone, which the core reads as that method's known outcome (passed, in no time, ``_INHERITED``'s result): three
#: small answers a plugin were a fifth of the core's reading of a bring-up.
_KNOWN = {method: _dumps(method) for method in _INHERITED}


def _with_riding(answer: dict[str, Any], riding: list[str]) -> dict[str, Any]:
    """``answer`` with the answers after it that ride in its frame (encoded, in order; ``then`` on the wire)."""
    if riding:
        answer[RIDING] = riding
    return answer


#: What ``_may_come_up`` and ``_positive`` take for a number (``int | float`` written in a call made the union anew).
_NUMBERS = (int, float)


def _positive(value: object, kind: type, most: float) -> Any:
    """``value`` when it is a number of ``kind`` in (0, most], else None."""
    if isinstance(value, bool) or not isinstance(value, _NUMBERS) or not 0 < value <= most:
        return None
    return kind(value)


def _compiled(request: dict[Any, Any]) -> Any:
    """The code ``compile_ahead`` compiled for the load ``request``, if any."""
    return request.get(_COMPILED)


def _compiles_ahead(request: Any) -> bool:
    """Whether ``request`` is a load the core marked to be compiled ahead, with a short text (``compile_ahead``)."""
    if type(request) is not dict or request.get("op") != "load" or request.get("ahead") is not True:
        return False
    source = request.get("source")
    return (type(request.get("id")) is int and type(source) is dict and type(source.get("path")) is str
            and type(text := source.get("text")) is bytes and len(text) <= wire.AHEAD_TEXT)


def _declare(source: PluginSource, reached: list[str], text: bytes | None,
             location: str | None = None, code: Any = None) -> tuple[type[Plugin], dict[str, Any]]:
    """Import ``source`` (from ``text``, its bytes as the core read them, if given, or ``code``, that text compiled
    ahead; ``location``: its path as the core sent it, absolute and normalised), find its class and read its
    declaration, in the caller's sandbox: ``reached[0]`` names the phase running, set before each starts, so whatever
    stops it is blamed on that phase."""
    module = import_source(source, text, location, code)
    reached[0] = "class lookup"
    cls = find_plugin_class(module, source, location)
    reached[0] = "declaration"
    return cls, raw_declaration(cls, source.name)


def _bound(instance: Plugin, method: str, args: list[Any], kwargs: dict[str, Any]) -> tuple[Any, ...]:
    """Run the method and encode its result, all inside the call's sandbox: ``(True, json)`` or ``(False, type, text)``;
    ``(True, json, HEALTH_RESULT)`` for a health check that returned a ``HealthResult`` (its wire form).

    The plugin's exception is described here, under the call's timer, so an ``__str__`` that never returns is stopped
    like the call itself; a timeout and a ``MemoryError`` go on to the sandbox, which reports them as its own. So is a
    ``HealthResult``'s encoding: a subclass's fields can be plugin code.
    """
    try:
        if method.startswith("_"):
            raise AttributeError(f"{method!r} is not a plugin method")
        fn = getattr(instance, method)
        if method not in LIFECYCLE_METHODS:  # a tool: the caller's arguments must fit it, or it is not called
            try:
                _signature(type(instance), method, fn).bind(*args, **kwargs)
            except TypeError as exc:
                return (False, ARGUMENTS, describe(exc), True)
        value = fn(*args, **kwargs)
    except (SandboxTimeout, MemoryError):
        raise
    except BaseException as exc:  # noqa: BLE001 - reported as the call's outcome, like the sandbox does
        return (False, type(exc).__name__, describe(exc))
    try:
        if method == "health_check" and isinstance(value, HealthResult):
            return (True, _dumps(value.to_wire()), HEALTH_RESULT)
        return (True, _dumps(value))
    except InvalidHealthResultError as exc:  # changed after it was made: its fields are checked again here
        return (False, type(exc).__name__, describe(exc))
    except (TypeError, ValueError, RecursionError) as exc:
        return (False, UNENCODABLE, f"the result of {method!r} cannot be sent as JSON: {describe(exc)}")


_signatures: dict[tuple[type, str], inspect.Signature] = {}


def _signature(cls: type, method: str, fn: Any) -> inspect.Signature:
    key = (cls, method)
    found = _signatures.get(key)
    if found is None:
        found = _signatures[key] = inspect.signature(fn)
    return found


def _refuse(value: object) -> Any:
    raise TypeError(f"a {type(value).__name__} is not a JSON value")


def _options(argv: list[str]) -> dict[str, int]:
    """``--fd N [--max-message N] [--label TEXT]``, as the core passes them (no argparse: a runner stays light)."""
    options = {"fd": -1, "max_message": wire.MAX_MESSAGE}
    pairs = dict(zip(argv[::2], argv[1::2], strict=False))
    for flag, key in (("--fd", "fd"), ("--max-message", "max_message")):
        if flag in pairs:
            options[key] = int(pairs[flag])
    if options["fd"] < 0:
        raise SystemExit("usage: python -m plugin_health.runtime.runner --fd N [--max-message BYTES]")
    return options


def main(argv: list[str] | None = None) -> None:
    """Fork the guard, then serve on the socket the core passed."""
    options = _options(sys.argv[1:] if argv is None else argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C in a terminal is the service's to handle
    _no_core_dumps()  # before the fork: the guard mirrors its child's SIGSEGV onto itself, and must not dump either
    core, guard = os.getppid(), os.getpid()
    signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGCHLD])  # kept pending for the guard's sigtimedwait
    child = os.fork()
    if child:
        os.close(options["fd"])
        _guard(child, core)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGCHLD])  # the serving child's plugins get the usual mask
    _die_with_parent()
    if os.getppid() != guard:  # the guard died between the fork and the prctl
        _exit(1)
    sock = socket.socket(fileno=options["fd"])
    sock.set_inheritable(False)  # programs a plugin runs do not get the core's line
    wire.send(sock, _frame_text('{"ready":true}'))  # booted: the core's deadlines start from here
    Runner(sock, options["max_message"]).serve()


if __name__ == "__main__":
    main(sys.argv[1:])
