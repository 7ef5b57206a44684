from plugin_health import Plugin


class BadInit(Plugin):
    def __init__(self) -> None:
        raise ValueError("constructor refused")
