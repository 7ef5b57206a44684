from plugin_health import Plugin


class First(Plugin):
    pass


class Second(Plugin):
    pass
