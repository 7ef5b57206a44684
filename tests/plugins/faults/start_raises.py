from plugin_health import Plugin


class StartRaises(Plugin):
    def start(self):
        raise ConnectionError("cannot reach upstream")
