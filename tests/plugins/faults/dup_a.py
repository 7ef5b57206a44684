from plugin_health import Plugin


class DupA(Plugin):
    name = "dup"
    version = "1.0"
