"""Hostile: a tool SIGKILLs its process's parent."""

import os
import signal

from plugin_health import Plugin, tool


class KillParent(Plugin):
    isolation = "__ISOLATION__"
    timeout = 1

    @tool
    def kill(self) -> str:
        os.kill(os.getppid(), signal.SIGKILL)
        return "killed my parent"
