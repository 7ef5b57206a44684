"""The plugin lifecycle: states as data, the machine wrapper, the manager and transition records."""

from plugin_health.lifecycle.manager import PluginLifecycleManager
from plugin_health.lifecycle.records import TransitionRecord
from plugin_health.lifecycle.states import (
    LEGAL_MOVES,
    TRANSITIONS,
    TRIGGERS,
    PluginLifecycleState,
    UnavailableReason,
)

__all__ = [
    "LEGAL_MOVES",
    "TRANSITIONS",
    "TRIGGERS",
    "PluginLifecycleManager",
    "PluginLifecycleState",
    "TransitionRecord",
    "UnavailableReason",
]
