"""Hostile: its health check swallows everything, the timeout's exception included, forever."""

import os
import time

from plugin_health import Plugin

GO = "__CASE_DIR__/go"


class BareExceptLoop(Plugin):
    isolation = "__ISOLATION__"
    timeout = 1

    def health_check(self) -> bool:
        if not os.path.exists(GO):
            return True
        while True:
            try:  # noqa: SIM105
                time.sleep(0.01)
            except:  # noqa: E722
                pass
