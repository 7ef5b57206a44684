"""The canary: a healthy critical inline plugin whose health check fails while its flag file exists."""

import os

from plugin_health import Plugin, tool

FLAG = "__FLAG__"


class Canary(Plugin):
    critical = True
    isolation = "inline"

    def health_check(self) -> bool:
        return not os.path.exists(FLAG)

    @tool
    def pid(self) -> int:
        return os.getpid()
