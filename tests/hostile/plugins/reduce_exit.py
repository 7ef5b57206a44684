"""Hostile: a tool returns an object that, unpickled anywhere, calls os._exit(9)."""

import os

from plugin_health import Plugin, tool


class Bomb:
    def __reduce__(self) -> tuple[object, tuple[int]]:
        return (os._exit, (9,))


class ReduceExit(Plugin):
    isolation = "__ISOLATION__"
    timeout = 1

    @tool
    def bomb(self) -> object:
        return {"bomb": Bomb()}
