"""Hostile: its health check raises an exception whose __str__ (and __repr__) loop forever."""

import os

from plugin_health import Plugin

GO = "__CASE_DIR__/go"


class HostileError(Exception):
    def __str__(self) -> str:
        while True:
            pass

    def __repr__(self) -> str:
        while True:
            pass


class StrLoops(Plugin):
    isolation = "__ISOLATION__"
    timeout = 1

    def health_check(self) -> bool:
        if not os.path.exists(GO):
            return True
        raise HostileError("never shown")
