"""Hostile by numbers: a tool that takes 1 s, called 200 times at once."""

import time

from plugin_health import Plugin, tool


class ParallelStorm(Plugin):
    isolation = "__ISOLATION__"
    timeout = 3

    @tool
    def slow(self) -> str:
        time.sleep(1)
        return "done"
