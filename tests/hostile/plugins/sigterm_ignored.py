"""Hostile: start() makes its process ignore SIGTERM."""

import signal

from plugin_health import Plugin


class SigtermIgnored(Plugin):
    isolation = "__ISOLATION__"
    timeout = 1

    def start(self) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
