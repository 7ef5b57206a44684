from plugin_health import Plugin  # imported, not defined: does not count


def helper():
    return 1
