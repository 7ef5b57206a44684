"""Fixtures of the hostile plugin suite: every case's server is stopped and its processes are gone, pass or fail."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from hostile.harness import Hostile


@pytest.fixture
def hostile(tmp_path: Path) -> Iterator[Callable[..., Hostile]]:
    """Make the case of one culprit in one isolation mode (in this test's own directory); cleaned up whatever
    happens."""
    made: list[Hostile] = []

    def make(culprit: str, isolation: str, *, may_kill_runner: bool = False) -> Hostile:
        case = Hostile(tmp_path / f"case{len(made)}", culprit, isolation, may_kill_runner=may_kill_runner)
        made.append(case)
        return case

    yield make
    for case in made:
        case.cleanup()
