from plugin_health import Plugin

from .helpers import VERSION


class PackagePlugin(Plugin):
    version = VERSION
