from plugin_health import Plugin


class InitRaises(Plugin):
    def initialize(self, context):
        raise ValueError("bad configuration: password=hunter2")
