"""The colours of the lifecycle states, in one place: the diagrams draw with them and the dashboard's style sheet
is written from them (``GET /palette.css``), so a RUNNING plugin is the same green in the table and the diagram.

RUNNING green, FAILED red, UNAVAILABLE amber, LOADED and INITIALIZED blue (a plugin on its way up). Each state
has a strong colour (borders, badges, the highlighted state's fill; white text reads on it) and a light one
(backgrounds; ink reads on it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from plugin_health.lifecycle.states import PluginLifecycleState


@dataclass(frozen=True, slots=True)
class StateColours:
    """A state's two colours, as ``#rrggbb``."""

    strong: str
    light: str


GREEN: Final = StateColours("#1a7f37", "#dafbe1")
RED: Final = StateColours("#cf222e", "#ffebe9")
AMBER: Final = StateColours("#9a6700", "#fff8c5")
BLUE: Final = StateColours("#0969da", "#ddf4ff")

STATE_COLOURS: Final[dict[PluginLifecycleState, StateColours]] = {
    PluginLifecycleState.LOADED: BLUE,
    PluginLifecycleState.INITIALIZED: BLUE,
    PluginLifecycleState.RUNNING: GREEN,
    PluginLifecycleState.FAILED: RED,
    PluginLifecycleState.UNAVAILABLE: AMBER,
}

#: Text and lines: ink on paper, muted for what matters less, line for rules; page behind the cards.
INK: Final = "#1f2328"
MUTED: Final = "#59636e"
LINE: Final = "#d1d9e0"
PAPER: Final = "#ffffff"
PAGE: Final = "#f6f8fa"

#: Names of the style sheet's custom properties that are not a state's (``--running``, ``--running-bg``, ...).
NEUTRALS: Final[dict[str, str]] = {"ink": INK, "muted": MUTED, "line": LINE, "paper": PAPER, "page": PAGE}


def css_variables() -> dict[str, str]:
    """Every colour as a CSS custom property: ``--ink``, ..., and per state ``--running`` and ``--running-bg``."""
    variables = {f"--{name}": value for name, value in NEUTRALS.items()}
    for state, colours in STATE_COLOURS.items():
        variables[f"--{state.value.lower()}"] = colours.strong
        variables[f"--{state.value.lower()}-bg"] = colours.light
    return variables


def style_sheet() -> str:
    """The palette as a style sheet of custom properties on ``:root``."""
    lines = [f"  {name}: {value};" for name, value in css_variables().items()]
    return "/* Generated from plugin_health/palette.py: the diagrams draw with the same colours. */\n:root {\n" + (
        "\n".join(lines) + "\n}\n"
    )
