"""Hostile: a daemon thread started in start() spins in C loops that hold the GIL; the health check loops forever."""

import os
import threading
import time

from plugin_health import Plugin

GO = "__CASE_DIR__/go"


def hog() -> None:
    while True:
        if os.path.exists(GO):
            sum(range(10**7))  # about 0.2 s in C without releasing the GIL
        else:
            time.sleep(0.05)


class GilHogThread(Plugin):
    isolation = "__ISOLATION__"
    timeout = 1

    def start(self) -> None:
        threading.Thread(target=hog, name="gil-hog", daemon=True).start()

    def health_check(self) -> bool:
        if not os.path.exists(GO):
            return True
        while True:
            pass
