"""Hostile: a tool that sleeps for a minute."""

import time

from plugin_health import Plugin, tool


class SleepTool(Plugin):
    isolation = "__ISOLATION__"
    timeout = 1

    @tool
    def sleep(self) -> str:
        time.sleep(60)
        return "rested"
