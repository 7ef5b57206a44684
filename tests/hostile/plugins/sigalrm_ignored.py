"""Hostile: its health check ignores SIGALRM, then loops forever."""

import os
import signal

from plugin_health import Plugin

GO = "__CASE_DIR__/go"


class SigalrmIgnored(Plugin):
    isolation = "__ISOLATION__"
    timeout = 1

    def health_check(self) -> bool:
        if not os.path.exists(GO):
            return True
        signal.signal(signal.SIGALRM, signal.SIG_IGN)
        while True:
            pass
