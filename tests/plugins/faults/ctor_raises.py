from plugin_health import Plugin


class CtorRaises(Plugin):
    def __init__(self):
        raise RuntimeError("constructor exploded")
