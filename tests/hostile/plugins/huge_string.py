"""Hostile: a tool returns a 48 MiB string, three times the largest message a runner may send (16 MiB).

Its timeout is 5 s, not 1, and the string is not larger: making and encoding 200 MB took more than 5 s on a machine
busy with other work (a 504, not the 502 this case is about), and the case is about the size of the result
(refused: 502), not the time it takes to make it.
"""

from plugin_health import Plugin, tool


class HugeString(Plugin):
    isolation = "__ISOLATION__"
    timeout = 5

    @tool
    def huge(self) -> str:
        return "x" * (48 * 2**20)
