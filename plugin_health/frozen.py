"""Frozen dataclasses made fast: the values of their fields put straight into their slots."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import fields
from typing import Any, TypeVar

_T = TypeVar("_T")


def slot_maker(cls: type[_T]) -> Callable[..., _T]:
    """A function that makes a ``cls`` (a frozen dataclass with slots, no ``__post_init__``) from a value for each of
    its fields, in their order, by filling its slots: what ``cls(*values)`` makes, but the frozen ``__init__`` sets
    each field through ``object.__setattr__``, about three times the time, where thousands of records, snapshots and
    specs are made as plugins load.

    Written out field by field, as ``dataclasses`` writes ``__init__`` (from the class's own field names: a loop over
    the setters cost twice as much as the ``__init__`` it replaces)."""
    names = [field.name for field in fields(cls)]  # type: ignore[arg-type]
    if any(name.startswith("_slot_") for name in names):
        raise ValueError(f"{cls.__qualname__} has a field named as slot_maker's own names (_slot_...)")
    setters = {f"_slot_{i}": cls.__dict__[name].__set__ for i, name in enumerate(names)}
    lines = [f"def make({', '.join(names)}):", "    _slot_made = _slot_new(_slot_cls)"]
    lines += [f"    _slot_{i}(_slot_made, {name})" for i, name in enumerate(names)]
    lines.append("    return _slot_made")
    namespace: dict[str, Any] = {"_slot_new": object.__new__, "_slot_cls": cls, **setters}
    exec("\n".join(lines), namespace)
    made: Callable[..., _T] = namespace["make"]
    made.__qualname__ = f"slot_maker({cls.__qualname__})"
    return made
