"""What a gevent worker does around gevent's ``monkey.patch_all()`` (``post_fork`` in
:mod:`plugin_health.serving.gunicorn_conf`), apart from that module, which chooses the metrics directory when
imported."""

from __future__ import annotations

import contextlib
import importlib.metadata
from collections.abc import Callable, Iterator
from typing import Any

#: The ``select`` of the installed packages' entry points as the master read them for every worker it forks
#: (``read_for_workers``), or None.
_read_by_master: Callable[..., Any] | None = None


def read_for_workers() -> None:
    """Read the installed packages' entry points in the master, once for every worker forked from it: each worker's
    ``entry_points_read_once`` then answers from this reading instead of reading them itself (10 ms of CPU a worker,
    five workers at once while the core loads its plugins). The master's modules are its workers' already: a package
    installed since takes a new master, as any code upgrade does."""
    global _read_by_master
    _read_by_master = importlib.metadata.entry_points().select


@contextlib.contextmanager
def entry_points_read_once() -> Iterator[None]:
    """While the block runs, ``importlib.metadata.entry_points(...)`` answers from one reading of the installed
    packages' entry points: the master's (``read_for_workers``), else one taken as the block begins. gevent's
    ``patch_all`` looks up the plugins of each event it sends (25 of them), and each look-up read every installed
    package's metadata again: 0.13 of a worker's 0.16 CPU s of patching, five workers at once while the core loads
    its plugins. The packages installed do not change within one call; the function is the standard library's
    again once the block ends, whatever happened in it."""
    original = importlib.metadata.entry_points
    select = _read_by_master if _read_by_master is not None else original().select

    def entry_points(**params: Any) -> Any:
        return select(**params)

    importlib.metadata.entry_points = entry_points
    try:
        yield
    finally:
        importlib.metadata.entry_points = original
