"""Not hostile: the harness's own check (everything about it must pass, with the code of any day)."""

from plugin_health import Plugin


class Quiet(Plugin):
    isolation = "__ISOLATION__"
    timeout = 1
