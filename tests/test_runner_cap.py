"""The runner's memory cap: what it uses plus every loaded plugin's allowance and one more, the largest (``_recap``),
kept as plugins are loaded and dropped, in time that does not grow with the plugins loaded."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from plugin_health.runtime import runner as runner_module
from plugin_health.runtime.runner import Runner

PLUGIN = "from plugin_health import Plugin\nclass P(Plugin):\n    memory_limit_mb = {mb}\n"


@pytest.fixture
def caps(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The allowances the runner asked to cap itself at (never applied to the test's own process)."""
    asked: list[int] = []

    def cap_process(limit_mb: int) -> int | None:
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
