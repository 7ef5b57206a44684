from plugin_health import Plugin


class NeedsGood(Plugin):
    requires = ("good>=1.0",)

    def initialize(self, context):
        self.good = context.plugins["good"]
