"""The runner's memory cap: what it uses plus every loaded plugin's allowance and one more, the largest (``_recap``),
kept as plugins are loaded and dropped, in time that does not grow with the plugins loaded."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from plugin_health.runtime import runner as runner_module
from plugin_health.runtime.runner import Runner

PLUGIN = "from plugin_health import Plugin\nclass P(Plugin):\n    memory_limit_mb = {mb}\n"


@pytest.fixture
def caps(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The allowances the runner asked to cap itself at (never applied to the test's own process)."""
    asked: list[int] = []

    def cap_process(limit_mb: int, current: int | None = None, hard: int | None = None) -> int | None:
        asked.append(limit_mb)
        return None

    monkeypatch.setattr(runner_module.memory, "cap_process", cap_process)
    return asked


@pytest.fixture
def runner() -> Iterator[Runner]:
    ours, theirs = socket.socketpair()
    with ours, theirs:
        yield Runner(theirs, 1 << 20)


def load(runner: Runner, tmp_path: Path, slot: int, mb: int | None) -> None:
    path = tmp_path / f"p{slot}.py"
    path.write_text(PLUGIN.format(mb=mb) if mb is not None else "from plugin_health import Plugin\nclass P(Plugin):\n"
                    "    pass\n")
    answer = runner.load({"op": "load", "slot": slot, "timeout": 5.0, "memory_limit_mb": None,
                          "source": {"name": f"p{slot}", "origin": str(path), "path": str(path), "entry_point": None}})
    assert answer["ok"], answer


def test_the_cap_is_the_sum_of_the_allowances_plus_the_largest_as_plugins_come_and_go(
    runner: Runner, caps: list[int], tmp_path: Path
) -> None:
    load(runner, tmp_path, 1, 100)
    load(runner, tmp_path, 2, 300)
    load(runner, tmp_path, 3, 50)
    assert caps == [100 + 100, 400 + 300, 450 + 300]
    runner.handle({"op": "drop", "slot": 2})
    load(runner, tmp_path, 4, 10)
    assert caps[-1] == 160 + 100  # the largest left is 100 now


def test_a_plugin_without_an_allowance_leaves_the_runner_uncapped_until_it_is_dropped(
    runner: Runner, caps: list[int], tmp_path: Path
) -> None:
    load(runner, tmp_path, 1, 100)
    load(runner, tmp_path, 2, None)  # no default allowance in this request: unbounded
    load(runner, tmp_path, 3, 20)
    assert caps == [200]
    runner.handle({"op": "drop", "slot": 2})
    load(runner, tmp_path, 4, 30)
    assert caps == [200, 150 + 100]


class Readings:
    """The memory readings the runner took (each 1 MiB above the last) and the soft limits it set, none applied."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.taken: list[int] = []
        self.lowered: list[int] = []
        values = iter(range(1 << 30, 1 << 40, 1 << 20))

        def usage() -> int:
            self.taken.append(next(values))
            return self.taken[-1]

        monkeypatch.setattr(runner_module.memory, "usage", usage)
        monkeypatch.setattr(runner_module.resource, "setrlimit", lambda limit, pair: self.lowered.append(pair[0]))


TRIVIAL = b"from plugin_health import Plugin\nclass P(Plugin):\n    pass\n"
OWN_START = b"from plugin_health import Plugin\nclass P(Plugin):\n    def start(self):\n        pass\n"
MIB_64 = 64 * 1024 * 1024


def load_text(runner: Runner, tmp_path: Path, slot: int, text: bytes, up: bool = False) -> None:
    """A load request of ``text`` with an allowance of 64 MiB (and, with ``up``, its bring-up)."""
    path = str(tmp_path / f"p{slot}.py")
    request: dict[str, Any] = {"op": "load", "slot": slot, "timeout": 5.0, "memory_limit_mb": 64, "id": slot,
                               "source": {"name": f"p{slot}", "origin": path, "path": path, "entry_point": None,
                                          "text": text}}
    if up:
        request["up"] = {"config": {}, "timeout": 5.0, "check": False}
    runner.handle(request)
    runner._outbox.clear()


def test_a_load_starts_from_the_reading_the_last_load_ended_with(
    runner: Runner, caps: list[int], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A load's memory guard needs a reading just before it, and the runner's cap one just after it: a load that
    follows a load takes the reading that one ended with (only the runner's own sending and reading ran since),
    one /proc read a load instead of two. A request in between takes its own."""
    readings = Readings(monkeypatch)
    for slot in (1, 2, 3):
        load_text(runner, tmp_path, slot, TRIVIAL)
    assert len(readings.taken) == 4  # before the first, then one after each
    assert readings.lowered[::2] == [reading + MIB_64 for reading in readings.taken[:3]]  # each from the last one
    runner.handle({"op": "drop", "slot": 1})
    load_text(runner, tmp_path, 4, TRIVIAL)
    assert len(readings.taken) == 6  # a request came between: a reading of its own before the load
    assert readings.lowered[-2] == readings.taken[4] + MIB_64


def test_a_load_after_one_whose_plugin_came_up_with_its_own_code_starts_from_the_reading_after_that_code(
    runner: Runner, caps: list[int], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A plugin brought up with its load may run its own ``start``, which may keep memory: the next load's guard
    starts from the reading taken after that, never from the one taken as the load ended (which would hold the next
    plugin to less than its allowance)."""
    readings = Readings(monkeypatch)
    load_text(runner, tmp_path, 1, OWN_START, up=True)
    load_text(runner, tmp_path, 2, OWN_START, up=True)
    # load 1: before, after (its start's before); its start: after (load 2's before); load 2: after; its start: after
    assert len(readings.taken) == 5
    assert readings.lowered[4] == readings.taken[2] + MIB_64  # the second load's guard, from after the start


def test_a_load_without_an_allowance_reads_no_memory(
    runner: Runner, caps: list[int], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With no memory allowance (the service's default turned off), a load lowers no limit: it takes no reading
    either, before or after (a /proc read each, for nothing)."""
    readings = Readings(monkeypatch)
    path = str(tmp_path / "p1.py")
    runner.handle({"op": "load", "slot": 1, "timeout": 5.0, "memory_limit_mb": None, "id": 1,
                   "source": {"name": "p1", "origin": path, "path": path, "entry_point": None, "text": TRIVIAL}})
    assert readings.taken == []
    assert readings.lowered == []
    assert caps == []  # a plugin without an allowance leaves the runner uncapped
