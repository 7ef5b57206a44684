"""Hostile: its health check disarms the SIGALRM timer of its own call, then loops forever."""

import os
import signal

from plugin_health import Plugin

GO = "__CASE_DIR__/go"


class SetitimerDisarm(Plugin):
    isolation = "__ISOLATION__"
    timeout = 1

    def health_check(self) -> bool:
        if not os.path.exists(GO):
            return True
        signal.setitimer(signal.ITIMER_REAL, 0)
        while True:
            pass
