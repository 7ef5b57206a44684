"""A small LRU cache in front of the database plugin: shows a dependency with a version specifier."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from plugin_health import HealthResult, Plugin, PluginContext, tool


class Cache(Plugin):
    version = "1.4.0"
    requires = ("database>=2.0",)

    def initialize(self, context: PluginContext) -> None:
        self._size = int(context.config.get("size", 128))
        self._items: OrderedDict[str, Any] = OrderedDict()
        self._database = context.plugins["database"]

    def health_check(self) -> HealthResult:
        """How full it is: a warning past 90% (it still works, but evicts), with the fill as the observed value."""
        fill = len(self._items) / self._size
        return HealthResult(status="warn" if fill > 0.9 else "pass", observed_value=round(fill, 3),
                            observed_unit="ratio", output=f"{len(self._items)} of {self._size} entries")

    @tool
    def put(self, key: str, value: Any) -> int:
        """Remember a value; returns how many entries the cache holds."""
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self._size:
            self._items.popitem(last=False)
        return len(self._items)

    @tool
    def get(self, key: str) -> Any:
        """The remembered value, or None."""
        return self._items.get(key)
