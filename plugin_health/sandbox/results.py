"""What a sandboxed call returns, the limits it runs under, and how an exception becomes a result."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from plugin_health.errors import PluginRunError, bounded
from plugin_health.sandbox.timeouts import SandboxTimeout

#: ``error_type`` of a call stopped at its timeout.
TIMEOUT = "PluginTimeoutError"
#: ``error_type`` of a call whose allocations passed its memory limit.
MEMORY = "PluginMemoryError"
#: ``error_type`` of a call whose process died under it.
CRASHED = "PluginCrashedError"


class UnpicklableResultError(PluginRunError, TypeError):
    """A process-mode call returned a value that cannot cross the pipe back to the server."""


class UnpicklableArgumentsError(PluginRunError, TypeError):
    """A process-mode call was given arguments that cannot be sent to the plugin's process."""


@dataclass(slots=True)
class PluginSandboxResult:
    """The outcome of one sandboxed call: its value, or what went wrong (never a traceback)."""

    ok: bool
    result: Any = None
    error: str | None = None
    error_type: str | None = None
    duration_ms: float = 0.0
    #: True when the call was refused before it ran, for a mistake of the caller's (arguments that do not bind).
    refused: bool = False

    def to_dict(self) -> dict[str, Any]:
        """The result as a JSON-ready mapping."""
        return {
            "ok": self.ok,
            "result": self.result,
            "error": self.error,
            "error_type": self.error_type,
            "duration_ms": self.duration_ms,
        }


@dataclass(frozen=True, slots=True)
class SandboxLimits:
    """The limits of one call: seconds before it is stopped, MiB it may allocate (None: unlimited)."""

    timeout: float | None = None
    memory_limit_mb: int | None = None

    def __post_init__(self) -> None:
        if self.timeout is not None and not self.timeout > 0:
            raise ValueError(f"timeout must be a positive number of seconds or None, not {self.timeout!r}")
        if self.memory_limit_mb is not None and (
            isinstance(self.memory_limit_mb, bool) or self.memory_limit_mb <= 0
        ):
            raise ValueError(f"memory_limit_mb must be a positive integer or None, not {self.memory_limit_mb!r}")


def describe(exc: BaseException) -> str:
    """The bounded message of an exception, or its class name when the message is empty."""
    try:
        message = str(exc)
    except SandboxTimeout:
        raise  # the guard around the call stops a __str__ that never returns: that is its timeout
    except BaseException:  # noqa: BLE001 - a plugin's __str__ is plugin code (it may even raise SystemExit)
        message = ""
    return bounded(message) if message else type(exc).__name__


def failed(error_type: str, error: str, duration_ms: float) -> PluginSandboxResult:
    """A failed result."""
    return PluginSandboxResult(False, None, bounded(error), error_type, duration_ms)


def timeout_message(timeout: float | None) -> str:
    """The error text of a call stopped at its timeout."""
    return f"call exceeded its timeout of {timeout:g} s"


def memory_message(limit_mb: int | None) -> str:
    """The error text of a call stopped at its memory limit."""
    return f"call exceeded its memory limit of {limit_mb} MiB"
