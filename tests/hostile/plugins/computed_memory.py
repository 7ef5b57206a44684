"""Hostile: its memory_limit_mb is computed at import (32); a tool allocates 128 MiB."""

from plugin_health import Plugin, tool


class ComputedMemory(Plugin):
    isolation = "__ISOLATION__"
    timeout = 1
    memory_limit_mb = int("3" + "2")

    @tool
    def allocate(self) -> int:
        block = b"\x01" * (128 * 2**20)
        return len(block)
