from plugin_health import Plugin


class BadVersion(Plugin):
    version = "not a version!"
