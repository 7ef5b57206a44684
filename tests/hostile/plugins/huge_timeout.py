"""Hostile: declares a timeout of 30 days."""

from plugin_health import Plugin


class HugeTimeout(Plugin):
    isolation = "__ISOLATION__"
    timeout = 2_592_000
