"""Hostile: its timeout is computed at import (0.5 s); its health check takes 0.8 s."""

import os
import time

from plugin_health import Plugin

GO = "__CASE_DIR__/go"


class ComputedTimeout(Plugin):
    isolation = "__ISOLATION__"
    timeout = float("0.5")

    def health_check(self) -> bool:
        if os.path.exists(GO):
            time.sleep(0.8)
        return True
