"""Hostile: a tool that blocks reading a pipe nobody writes to."""

import os

from plugin_health import Plugin, tool


class PipeReadTool(Plugin):
    isolation = "__ISOLATION__"
    timeout = 1

    @tool
    def read(self) -> str:
        self.pipe = os.pipe()  # both ends kept open: the read never sees an end of file
        return os.read(self.pipe[0], 1).decode()
