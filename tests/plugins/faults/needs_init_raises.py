from plugin_health import Plugin


class NeedsInitRaises(Plugin):
    requires = ("init_raises",)
