"""The plugin lifecycle: states as data, the machine wrapper, the manager and transition records.

The manager (and with it ``transitions``) loads on first use, so that importing the states costs a runner
nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from plugin_health.lifecycle.records import TransitionRecord
from plugin_health.lifecycle.states import (
    LEGAL_MOVES,
    TRANSITIONS,
    TRIGGERS,
    PluginLifecycleState,
    UnavailableReason,
)

if TYPE_CHECKING:
    from plugin_health.lifecycle.manager import PluginLifecycleManager


def __getattr__(name: str) -> Any:
    if name == "PluginLifecycleManager":
        from plugin_health.lifecycle.manager import PluginLifecycleManager

        return PluginLifecycleManager
    raise AttributeError(f"module 'plugin_health.lifecycle' has no attribute {name!r}")


__all__ = [
    "LEGAL_MOVES",
    "TRANSITIONS",
    "TRIGGERS",
    "PluginLifecycleManager",
    "PluginLifecycleState",
    "TransitionRecord",
    "UnavailableReason",
]
