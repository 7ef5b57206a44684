"""The lifecycle as data: the five states, the five triggers and the only legal moves between them."""

from __future__ import annotations

from enum import StrEnum
from typing import Final


class PluginLifecycleState(StrEnum):
    """Where a plugin is in its life."""

    LOADED = "LOADED"
    INITIALIZED = "INITIALIZED"
    RUNNING = "RUNNING"
    FAILED = "FAILED"
    UNAVAILABLE = "UNAVAILABLE"


LOADED: Final = PluginLifecycleState.LOADED
INITIALIZED: Final = PluginLifecycleState.INITIALIZED
RUNNING: Final = PluginLifecycleState.RUNNING
FAILED: Final = PluginLifecycleState.FAILED
UNAVAILABLE: Final = PluginLifecycleState.UNAVAILABLE

#: The transition table of DESIGN.md section 3, in the form ``transitions.Machine`` takes.
TRANSITIONS: Final[tuple[dict[str, object], ...]] = (
    {"trigger": "initialize", "source": LOADED, "dest": INITIALIZED},
    {"trigger": "start", "source": INITIALIZED, "dest": RUNNING},
    {"trigger": "fail", "source": [LOADED, INITIALIZED, RUNNING], "dest": FAILED},
    {"trigger": "make_unavailable", "source": [LOADED, INITIALIZED, RUNNING], "dest": UNAVAILABLE},
    {"trigger": "reset", "source": [FAILED, UNAVAILABLE], "dest": LOADED},
)

TRIGGERS: Final[tuple[str, ...]] = tuple(str(t["trigger"]) for t in TRANSITIONS)

#: States a plugin may enter with when it is first tracked (FAILED: its code could not be loaded).
FIRST_STATES: Final[frozenset[PluginLifecycleState]] = frozenset({LOADED, FAILED})

#: The trigger name recorded for a plugin's first state.
ENTER_TRIGGER: Final = "load"


def _sources(entry: dict[str, object]) -> list[PluginLifecycleState]:
    source = entry["source"]
    return list(source) if isinstance(source, list) else [source]  # type: ignore[list-item]


#: (state, trigger) -> destination, for every legal move.
LEGAL_MOVES: Final[dict[tuple[PluginLifecycleState, str], PluginLifecycleState]] = {
    (source, str(entry["trigger"])): entry["dest"]  # type: ignore[misc]
    for entry in TRANSITIONS
    for source in _sources(entry)
}


class UnavailableReason(StrEnum):
    """Why a plugin is UNAVAILABLE; the recorded reason starts with one of these codes."""

    DEPENDENCY_MISSING = "dependency_missing"
    DEPENDENCY_VERSION = "dependency_version"
    DEPENDENCY_CYCLE = "dependency_cycle"
    DEPENDENCY_UNAVAILABLE = "dependency_unavailable"
    DISABLED = "disabled"
    STOPPED = "stopped"
    #: A singleton whose lease another instance holds (or nobody can hold now): it runs there, not here.
    STANDBY = "standby"

    def with_detail(self, detail: str) -> str:
        """The recorded reason: the code, then what it names (``dependency_missing: geo``)."""
        return f"{self.value}: {detail}"
