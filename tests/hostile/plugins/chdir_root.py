"""Hostile: start() changes the working directory of its process to /."""

import os

from plugin_health import Plugin


class ChdirRoot(Plugin):
    isolation = "__ISOLATION__"
    timeout = 1

    def start(self) -> None:
        os.chdir("/")
