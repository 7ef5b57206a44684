"""Hostile: each call of its tool keeps 20 MiB more (memory_limit_mb = 64)."""

from plugin_health import Plugin, tool

LEAK: list[bytes] = []


class MemoryLeak(Plugin):
    isolation = "__ISOLATION__"
    timeout = 1
    memory_limit_mb = 64

    @tool
    def leak(self) -> int:
        LEAK.append(b"\x01" * (20 * 2**20))
        return len(LEAK)
