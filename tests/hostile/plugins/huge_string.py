"""Hostile: a tool returns a 200 MB string.

Its timeout is 5 s, not 1: making and measuring 200 MB takes about a second on a busy machine, and the case is
about the size of the result (refused: 502), not the time it takes to make it.
"""

from plugin_health import Plugin, tool


class HugeString(Plugin):
    isolation = "__ISOLATION__"
    timeout = 5

    @tool
    def huge(self) -> str:
        return "x" * (200 * 2**20)
