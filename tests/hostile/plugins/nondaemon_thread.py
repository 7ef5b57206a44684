"""Hostile: start() starts a non-daemon thread that never ends."""

import threading
import time

from plugin_health import Plugin


def forever() -> None:
    while True:
        time.sleep(0.1)


class NondaemonThread(Plugin):
    isolation = "__ISOLATION__"
    timeout = 1

    def start(self) -> None:
        threading.Thread(target=forever, name="forever", daemon=False).start()
