"""Hostile: a tool reads the service's admin token from its environment."""

import os

from plugin_health import Plugin, tool


class EnvToken(Plugin):
    isolation = "__ISOLATION__"
    timeout = 1

    @tool
    def token(self) -> str | None:
        return os.environ.get("PLUGIN_HEALTH_ADMIN_TOKEN")
