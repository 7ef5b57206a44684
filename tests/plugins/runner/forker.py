"""A plugin whose ``start`` forks a child that sleeps 300 s (and never exits on its own)."""

import os
import time

from plugin_health import Plugin, tool


class Forker(Plugin):
    name = "forker"

    def __init__(self) -> None:
        self.child = 0

    def start(self) -> None:
        self.child = os.fork()
        if self.child == 0:
            try:
                time.sleep(300)
            finally:
                os._exit(0)

    @tool
    def child_pid(self) -> int:
        return self.child
