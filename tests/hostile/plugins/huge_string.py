"""Hostile: a tool returns a 200 MB string."""

from plugin_health import Plugin, tool


class HugeString(Plugin):
    isolation = "__ISOLATION__"
    timeout = 1

    @tool
    def huge(self) -> str:
        return "x" * (200 * 2**20)
