"""Dependency resolution is a pure function: order, missing, version, cycles, and what hangs off them."""

from __future__ import annotations

from collections.abc import Collection, Mapping

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from packaging.requirements import Requirement
from packaging.version import Version

from plugin_health.lifecycle.states import UnavailableReason
from plugin_health.loader import dependencies
from plugin_health.loader.dependencies import Declared, Resolution, resolve


def plugins(**spec: tuple[str, ...] | str) -> dict[str, Declared]:
    """``name=("dep>=1", ...)`` or ``name="version dep ..."``-free: every plugin at version 1.0 unless given."""
    out: dict[str, Declared] = {}
    for name, value in spec.items():
        version, requires = ("1.0", value) if isinstance(value, tuple) else (value, ())
        out[name] = Declared(Version(version), tuple(Requirement(r) for r in requires))
    return out


def test_no_dependencies_sorted_by_name() -> None:
    result = resolve(plugins(c=(), a=(), b=()))
    assert result.order == ("a", "b", "c")
    assert result.unavailable == {}


def test_dependencies_first_ties_by_name() -> None:
    result = resolve(plugins(app=("db", "cache"), db=(), cache=("db",), zeta=()))
    assert result.order == ("db", "cache", "app", "zeta")


def test_diamond() -> None:
    result = resolve(plugins(top=("left", "right"), left=("base",), right=("base",), base=()))
    assert result.order == ("base", "left", "right", "top")
    assert result.unavailable == {}


def test_missing_dependency_names_it() -> None:
    result = resolve(plugins(app=("geo>=2.0",), other=()))
    assert result.order == ("other",)
    assert result.unavailable == {"app": "dependency_missing: geo is not installed"}


def test_version_mismatch_names_dependency_and_specifier() -> None:
    declared = plugins(app=("geo>=2.0",))
    declared["geo"] = Declared(Version("1.5"))
    result = resolve(declared)
    assert result.order == ("geo",)
    assert result.unavailable == {"app": "dependency_version: geo 1.5 does not satisfy geo>=2.0"}


def test_version_satisfied_including_prereleases() -> None:
    declared = plugins(app=("geo>=2.0",))
    declared["geo"] = Declared(Version("2.1rc1"))
    assert resolve(declared).order == ("geo", "app")


def test_two_cycle_marks_both_with_the_whole_cycle() -> None:
    result = resolve(plugins(a=("b",), b=("a",), c=()))
    assert result.order == ("c",)
    assert result.unavailable == {"a": "dependency_cycle: a -> b -> a", "b": "dependency_cycle: a -> b -> a"}


def test_three_cycle_and_a_dependent_of_it() -> None:
    result = resolve(plugins(a=("b",), b=("c",), c=("a",), d=("c",)))
    cycle = "dependency_cycle: a -> b -> c -> a"
    assert result.order == ()
    assert result.unavailable == {"a": cycle, "b": cycle, "c": cycle, "d": "dependency_unavailable: c"}


def test_self_cycle() -> None:
    result = resolve(plugins(a=("a",)))
    assert result.unavailable == {"a": "dependency_cycle: a -> a"}


def test_unavailability_propagates_transitively() -> None:
    result = resolve(plugins(a=("missing",), b=("a",), c=("b",), d=()))
    assert result.order == ("d",)
    assert result.unavailable == {
        "a": "dependency_missing: missing is not installed",
        "b": "dependency_unavailable: a",
        "c": "dependency_unavailable: b",
    }


def test_dependency_that_failed_to_load_is_unavailable_not_missing() -> None:
    result = resolve(plugins(app=("broken",)), failed=["broken"])
    assert result.unavailable == {"app": "dependency_unavailable: broken failed to load"}


@pytest.mark.parametrize("size", [10, 2000])
def test_long_chain_resolves_without_recursion(size: int) -> None:
    declared = {f"p{i:05d}": Declared(Version("1"), (Requirement(f"p{i + 1:05d}"),)) for i in range(size - 1)}
    declared[f"p{size - 1:05d}"] = Declared(Version("1"))
    result = resolve(declared)
    assert result.order == tuple(sorted(declared, reverse=True))


def test_long_cycle_is_found() -> None:
    size = 3000
    declared = {f"p{i:05d}": Declared(Version("1"), (Requirement(f"p{(i + 1) % size:05d}"),)) for i in range(size)}
    result = resolve(declared)
    assert result.order == ()
    assert len(result.unavailable) == size
    assert all(reason.startswith("dependency_cycle: p00000 -> p00001") for reason in result.unavailable.values())


# -- the fast path for plugins that need none and are needed by none -----------------------------------------------


def _resolved_plainly(plugins: Mapping[str, Declared], failed: Collection[str] = ()) -> Resolution:
    """What ``resolve`` must answer, worked out the plain way, every plugin looked at: its own problems in name
    order; a cycle found by asking, for each plugin, which plugins it reaches and which reach it back (its strongly
    connected set), named from the set's first name along the path ``resolve`` gives; then the plugins taken one at a
    time, the smallest name whose dependencies have all been taken, a left-out one leaving its dependents out."""
    needs = {name: [r.name for r in d.requires if r.name in plugins] for name, d in plugins.items()}

    def reached(start: str) -> set[str]:
        seen: set[str] = set()
        todo = list(needs[start])
        while todo:
            name = todo.pop()
            if name not in seen:
                seen.add(name)
                todo.extend(needs[name])
        return seen

    reach = {name: reached(name) for name in plugins}
    unavailable: dict[str, str] = {}
    for name in sorted(plugins):
        problem = dependencies.own_problem(plugins[name], plugins, failed)
        if problem is not None:
            unavailable[name] = problem
    for name in sorted(plugins):
        if name in reach[name]:  # on a cycle
            members = {other for other in reach[name] if name in reach[other]}
            path = " -> ".join(dependencies._cycle_path(min(members), members, needs))
            unavailable.setdefault(name, UnavailableReason.DEPENDENCY_CYCLE.with_detail(path))
    taken: list[str] = []
    left = set(plugins)
    while ready := sorted(name for name in left if all(dependency in taken for dependency in needs[name])):
        name = ready[0]
        left.discard(name)
        taken.append(name)
        for dependent in sorted(other for other in plugins if name in needs[other]):
            if name in unavailable:
                unavailable.setdefault(dependent, UnavailableReason.DEPENDENCY_UNAVAILABLE.with_detail(name))
    order = [name for name in taken if name not in unavailable]
    for name in sorted(left):
        if name not in unavailable:
            blocker = next(r for r in needs[name] if r not in order)
            unavailable[name] = UnavailableReason.DEPENDENCY_UNAVAILABLE.with_detail(blocker)
    return Resolution(tuple(order), unavailable)


_NAMES = st.sampled_from([f"p{i}" for i in range(12)])


@st.composite
def _declared(draw: st.DrawFn) -> tuple[dict[str, Declared], list[str]]:
    names = draw(st.lists(_NAMES, unique=True, max_size=12))
    found: dict[str, Declared] = {}
    for name in names:
        needs = draw(st.lists(st.tuples(_NAMES, st.sampled_from(["", ">=1", "<1", ">=2"])), max_size=3))
        version = draw(st.sampled_from(["1.0", "2.0", "0.5"]))
        found[name] = Declared(Version(version), tuple(Requirement(f"{dep}{spec}") for dep, spec in needs))
    failed = draw(st.lists(_NAMES.filter(lambda name: name not in found), unique=True, max_size=3))
    return found, failed


@settings(max_examples=400, deadline=None)
@given(_declared())
def test_resolve_orders_and_explains_as_the_plain_way_does(case: tuple[dict[str, Declared], list[str]]) -> None:
    declared, failed = case
    assert resolve(declared, failed) == _resolved_plainly(declared, failed)


@settings(max_examples=100, deadline=None)
@given(_declared())
def test_a_plugins_spec_resolves_as_its_declaration_does(case: tuple[dict[str, Declared], list[str]]) -> None:
    """The registry hands ``resolve`` each plugin's spec as it is (no ``Declared`` made of each): the same order and
    the same reasons."""
    from plugin_health.loader.registry import PluginSpec

    declared, failed = case
    specs = {name: PluginSpec(name, one.version, one.requires) for name, one in declared.items()}
    assert resolve(specs, failed) == resolve(declared, failed)


def test_plugins_that_need_none_come_in_name_order_and_none_is_left_out() -> None:
    names = [f"p{i:05d}" for i in range(2_000)]
    found = {name: Declared(Version("1.0")) for name in reversed(names)}
    assert resolve(found, failed=["gone"]) == Resolution(tuple(names))
