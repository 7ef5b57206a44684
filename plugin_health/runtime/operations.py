"""Operator actions and tool calls, carried out by the process that hosts the plugins.

Every action is a move the lifecycle table allows, or an :class:`IllegalTransitionError` naming the current
state and the triggers legal from it (and nothing changes):

* restart: stop it if it runs, ``reset``, ``initialize``, ``start``; clears the restart limit, and a disabled
  plugin is enabled again (an operator's restart says what they want);
* disable: ``make_unavailable`` with the reason ``disabled`` (from LOADED, INITIALIZED or RUNNING), stopping it
  first; it stays disabled across restarts of the service (the store keeps the set);
* enable: ``reset`` and start (from FAILED or UNAVAILABLE).
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any

from plugin_health.coordination.control import MAX_REQUEST, error_to_wire
from plugin_health.errors import DependencyNotReadyError, IllegalTransitionError, PluginError
from plugin_health.lifecycle import PluginLifecycleState, UnavailableReason
from plugin_health.lifecycle.machine import allowed_triggers
from plugin_health.runtime.core import DISABLED_KEY, Core
from plugin_health.sandbox import PluginSandboxResult
from plugin_health.store import PluginSnapshot


class Operations:
    """Restart, disable, enable and tool calls over one :class:`Core`."""

    def __init__(self, host: Core) -> None:
        self.host = host
        self._lock = threading.Lock()  # operator actions are rare: one at a time keeps them simple

    def restart(self, name: str) -> PluginSnapshot:
        """Restart ``name`` from any state, clearing its restart limit (and its being disabled)."""
        with self._lock:
            self.host.manager.state_of(name)  # UnknownPluginError for a name nobody knows
            self._set_disabled(name, False)
            self.host.supervisor.restart(name, automatic=False)
            return self._started(name)

    def disable(self, name: str) -> PluginSnapshot:
        """Stop ``name`` and keep it UNAVAILABLE ``disabled``, across restarts of the service too."""
        with self._lock:
            self._require(name, "make_unavailable")
            self._set_disabled(name, True)
            self.host.loader.take_down(name, "make_unavailable", str(UnavailableReason.DISABLED))
            return self.host.snapshot(name)

    def enable(self, name: str) -> PluginSnapshot:
        """``reset`` a FAILED or UNAVAILABLE plugin and start it."""
        with self._lock:
            self._require(name, "reset")
            self._set_disabled(name, False)
            self.host.supervisor.restart(name, automatic=False)
            return self._started(name)

    def run_tool(self, name: str, tool: str, args: list[Any], kwargs: dict[str, Any],
                 give_up_at: float | None = None) -> PluginSandboxResult:
        """Call a tool in its runner.

        ``give_up_at`` (monotonic): when the asking worker stops waiting; a call still queued then never runs.
        """
        # What a runner answered is JSON already (it refuses anything else in the call's sandbox).
        return self.host.tools.run(name, tool, *args, give_up_at=give_up_at, **kwargs)

    def _started(self, name: str) -> PluginSnapshot:
        """The snapshot of a plugin an operator started; :class:`DependencyNotReadyError` if a dependency held it."""
        snapshot = self.host.snapshot(name)
        reason = snapshot.reason or ""
        if snapshot.state is PluginLifecycleState.UNAVAILABLE and reason.startswith("dependency_"):
            raise DependencyNotReadyError(name, _dependency_named(name, reason), reason)
        return snapshot

    def _require(self, name: str, trigger: str) -> None:
        """Refuse, before changing anything, a move the lifecycle table does not allow from the current state."""
        if not self.host.manager.may(name, trigger):
            state = self.host.manager.state_of(name)
            raise IllegalTransitionError(name, state.value, trigger, allowed_triggers(state))

    def _set_disabled(self, name: str, disabled: bool) -> None:
        names = self.host.loader.disabled
        if (name in names) == disabled:
            return
        if disabled:
            names.add(name)
        else:
            names.discard(name)
        self.host.store.set_meta(DISABLED_KEY, json.dumps(sorted(names)))

    def close(self) -> None:
        """Nothing to release: the core is shut down by its owner."""

    def answer(self, line: bytes) -> dict[str, Any]:
        """The answer to one request line of a control transport."""
        return answer(self, line)


def answer(operations: Operations, line: bytes) -> dict[str, Any]:
    """The answer to one request line (either transport's)."""
    if len(line) > MAX_REQUEST:
        return {"ok": False, "error": {"type": "RequestTooLarge", "message": "request too large"}}
    try:
        request = json.loads(line)
        op, name = request["op"], str(request["plugin"])
        if op == "tool":
            deadline = request.get("deadline")  # Unix time when the asking worker stops waiting
            give_up_at = None
            if isinstance(deadline, int | float):
                give_up_at = time.monotonic() + (float(deadline) - time.time())
            result = operations.run_tool(name, str(request["tool"]), list(request.get("args", [])),
                                         dict(request.get("kwargs", {})), give_up_at)
            return {"ok": True, "result": result.to_dict()}
        if op in ("restart", "disable", "enable"):
            snapshot: PluginSnapshot = getattr(operations, op)(name)
            return {"ok": True, "snapshot": snapshot.to_json()}
        return {"ok": False, "error": {"type": "BadRequest", "message": f"unknown op {op!r}"}}
    except PluginError as err:
        return {"ok": False, "error": error_to_wire(err)}
    except (ValueError, KeyError, TypeError) as err:
        return {"ok": False, "error": {"type": "BadRequest", "message": f"malformed request: {err}"}}


def _dependency_named(plugin: str, reason: str) -> str:
    """The dependency an UNAVAILABLE reason names (``dependency_missing: geo is not installed`` -> ``geo``)."""
    detail = reason.partition(": ")[2]
    if reason.startswith(UnavailableReason.DEPENDENCY_CYCLE.value):
        path = [part.strip() for part in detail.split("->")]
        return next((part for part in path if part != plugin), plugin)
    return detail.split(" ", 1)[0]
