"""Requires a plugin that is not installed: shows UNAVAILABLE with reason dependency_missing."""

from __future__ import annotations

from plugin_health import Plugin, tool


class Weather(Plugin):
    version = "1.2.0"
    requires = ("geo>=2.0",)

    @tool
    def forecast(self, city: str) -> dict[str, str]:
        """A forecast for a city."""
        return {"city": city, "sky": "clear"}
