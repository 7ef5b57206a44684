"""A plugin whose file shadows the standard library's json module by name."""

from plugin_health import Plugin

loads = "not the real json.loads"


class JsonPlugin(Plugin):
    pass
