import does_not_exist_anywhere  # noqa: F401

from plugin_health import Plugin


class MissingModule(Plugin):
    pass
