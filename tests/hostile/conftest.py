"""Fixtures of the hostile plugin suite: every case's server is stopped and its processes are gone, pass or fail.

To save each case most of the server's start-up, the next case's server is spawned when the current one is being
stopped (its probes already done, so the start-up disturbs no measurement; its hostile health checks and threads
wait for their ``go`` file); a spawned server that no test takes is cleaned up with the session.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from hostile.harness import Hostile

Key = tuple[str, str]


def planned(item: pytest.Item) -> Key | None:
    """The ``(culprit, isolation)`` of a hostile test item (parametrized by ``name`` and ``isolation``)."""
    callspec = getattr(item, "callspec", None)
    params = callspec.params if callspec is not None else {}
    if item.path.parent.name != "hostile" or "name" not in params or "isolation" not in params:
        return None
    return params["name"], params["isolation"]


class Pool:
    """Cases spawned ahead of their test."""

    def __init__(self, factory: pytest.TempPathFactory) -> None:
        self.factory = factory
        self.waiting: dict[Key, Hostile] = {}

    def make(self, key: Key) -> Hostile:
        culprit, isolation = key
        return Hostile(self.factory.mktemp(f"{culprit}-{isolation}-"), culprit, isolation)

    def take(self, key: Key) -> Hostile:
        return self.waiting.pop(key, None) or self.make(key)

    def spawn_ahead(self, key: Key | None) -> None:
        if key is not None and key not in self.waiting:
            self.waiting[key] = case = self.make(key)
            case.spawn()

    def close(self) -> None:
        for case in self.waiting.values():
            case.cleanup()
        self.waiting.clear()


@pytest.fixture(scope="session")
def hostile_pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pool]:
    pool = Pool(tmp_path_factory)
    yield pool
    pool.close()


@pytest.fixture
def hostile(request: pytest.FixtureRequest, hostile_pool: Pool) -> Iterator[Callable[..., Hostile]]:
    """Make the case of one culprit in one isolation mode; cleaned up whatever happens."""
    made: list[Hostile] = []
    items = request.session.items
    index = items.index(request.node) if request.node in items else -1
    following = planned(items[index + 1]) if 0 <= index < len(items) - 1 else None

    def make(culprit: str, isolation: str, *, may_kill_runner: bool = False) -> Hostile:
        case = hostile_pool.take((culprit, isolation))
        case.may_kill_runner = may_kill_runner
        case.on_stopping = lambda: hostile_pool.spawn_ahead(following)
        made.append(case)
        return case

    yield make
    for case in made:
        case.cleanup()
