from plugin_health import Plugin


class StartInterrupt(Plugin):
    def start(self):
        raise KeyboardInterrupt
