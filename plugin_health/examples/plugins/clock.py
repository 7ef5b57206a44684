"""The simplest healthy plugin: one tool, no dependencies."""

from __future__ import annotations

from datetime import UTC, datetime

from plugin_health import Plugin, tool


class Clock(Plugin):
    version = "1.0.0"

    @tool
    def now(self) -> str:
        """The current UTC time, ISO-8601."""
        return datetime.now(UTC).isoformat()
