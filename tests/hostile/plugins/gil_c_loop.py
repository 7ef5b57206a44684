"""Hostile: its health check runs a C loop that holds the GIL for minutes (no Python signal handler runs)."""

import os

from plugin_health import Plugin

GO = "__CASE_DIR__/go"


class GilCLoop(Plugin):
    isolation = "__ISOLATION__"
    timeout = 1

    def health_check(self) -> bool:
        if not os.path.exists(GO):
            return True
        return sum(range(10**10)) > 0
