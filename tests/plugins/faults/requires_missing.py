from plugin_health import Plugin


class RequiresMissing(Plugin):
    requires = ("nothere>=1.0",)
