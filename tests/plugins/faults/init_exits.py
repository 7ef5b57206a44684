import sys

from plugin_health import Plugin


class InitExits(Plugin):
    def initialize(self, context):
        sys.exit(3)
