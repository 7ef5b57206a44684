from plugin_health import Plugin


class DupB(Plugin):
    name = "dup"
    version = "2.0"
