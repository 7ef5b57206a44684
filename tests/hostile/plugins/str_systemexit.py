"""Hostile: its health check raises an exception whose __str__ (and __repr__) raise SystemExit."""

import os

from plugin_health import Plugin

GO = "__CASE_DIR__/go"


class HostileError(Exception):
    def __str__(self) -> str:
        raise SystemExit("from HostileError.__str__")

    def __repr__(self) -> str:
        raise SystemExit("from HostileError.__repr__")


class StrSystemexit(Plugin):
    isolation = "__ISOLATION__"
    timeout = 1

    def health_check(self) -> bool:
        if not os.path.exists(GO):
            return True
        raise HostileError("never shown")
