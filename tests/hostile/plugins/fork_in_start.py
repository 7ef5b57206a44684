"""Hostile: start() forks a child that sleeps for 300 s (its pid written under the case's pids/)."""

import os
import time

from plugin_health import Plugin

PIDS = "__CASE_DIR__/pids"


class ForkInStart(Plugin):
    isolation = "__ISOLATION__"
    timeout = 1

    def start(self) -> None:
        child = os.fork()
        if child == 0:
            try:
                open(os.path.join(PIDS, str(os.getpid())), "w").close()
                time.sleep(300)
            finally:
                os._exit(0)
        open(os.path.join(PIDS, str(child)), "w").close()
