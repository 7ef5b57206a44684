from plugin_health import Plugin

class Broken(Plugin)
    pass
