"""``tool_names``: the ``@tool`` methods of a plugin class, wherever in its bases they are defined."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from plugin_health.plugin import Plugin, tool, tool_names


class Mixin:
    @tool
    def from_mixin(self) -> None: ...

    @tool
    def replaced(self) -> None: ...


class Middle(Plugin):
    @tool
    def from_middle(self) -> None: ...

    def plain(self) -> None: ...


class Leaf(Mixin, Middle):
    replaced = None  # a name a base marked stays a tool name: every class of the MRO is read, not the attribute

    @tool
    def own(self) -> None: ...

    @staticmethod
    @tool
    def static() -> None: ...  # not listed: the mark is on the function the staticmethod wraps


def test_every_class_of_the_mro_counts_mixins_and_intermediate_bases_included() -> None:
    assert tool_names(Leaf) == ("from_middle", "from_mixin", "own", "replaced")
    assert tool_names(Middle) == ("from_middle",)
    assert tool_names(Plugin) == ()


def test_an_attribute_removed_from_a_class_is_no_longer_a_tool() -> None:
    class P(Plugin):
        @tool
        def gone(self) -> None: ...

    assert tool_names(P) == ("gone",)
    del P.gone
    assert tool_names(P) == ()


@pytest.fixture
def marked_base() -> Iterator[None]:
    Plugin.marked_on_the_base = tool(lambda self: None)  # type: ignore[attr-defined]
    try:
        yield
    finally:
        del Plugin.marked_on_the_base  # type: ignore[attr-defined]


def test_a_tool_set_on_the_base_class_itself_is_seen_by_every_plugin(marked_base: None) -> None:
    class P(Plugin):
        pass

    assert tool_names(P) == ("marked_on_the_base",)


def test_odd_attributes_are_asked_once_each_and_a_custom_dir_is_not_consulted() -> None:
    asked: list[str] = []

    class Odd:
        def __call__(self) -> None: ...

        def __getattr__(self, name: str) -> Any:
            asked.append(name)
            return name == "__plugin_health_tool__"

    class Meta(type):
        def __dir__(cls) -> list[str]:
            raise AssertionError("dir() is never used")

    class P(Plugin, metaclass=Meta):
        odd = Odd()
        not_callable = 5

    assert tool_names(P) == ("odd",)
    assert asked == ["__plugin_health_tool__"]
