"""Hostile: a tool returns a list nested 100,000 deep."""

from plugin_health import Plugin, tool


class DeepNesting(Plugin):
    isolation = "__ISOLATION__"
    timeout = 1

    @tool
    def deep(self) -> list[object]:
        nested: list[object] = []
        for _ in range(100_000):
            nested = [nested]
        return nested
