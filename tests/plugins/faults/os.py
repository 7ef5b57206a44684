from plugin_health import Plugin

getcwd = None


class OsPlugin(Plugin):
    pass
