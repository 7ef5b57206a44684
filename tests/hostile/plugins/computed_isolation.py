"""Hostile: its isolation is computed at import (to the case's isolation), not a literal."""

import os

from plugin_health import Plugin, tool


class ComputedIsolation(Plugin):
    isolation = "__ISOLATION__"[:3] + "__ISOLATION__"[3:]  # type: ignore[assignment]
    timeout = 1

    @tool
    def pid(self) -> int:
        return os.getpid()
