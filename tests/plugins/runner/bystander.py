"""A well-behaved plugin that shares a runner with a faulty one."""

import os

from plugin_health import Plugin, tool


class Bystander(Plugin):
    name = "bystander"

    def __init__(self) -> None:
        self.calls = 0

    @tool
    def count(self) -> int:
        self.calls += 1
        return self.calls

    @tool
    def pid(self) -> int:
        return os.getpid()
