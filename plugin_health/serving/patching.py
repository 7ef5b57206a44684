"""What a gevent worker does around gevent's ``monkey.patch_all()`` (``post_fork`` in
:mod:`plugin_health.serving.gunicorn_conf`), apart from that module, which chooses the metrics directory when
imported."""

from __future__ import annotations

import contextlib
import importlib.metadata
from collections.abc import Iterator
from typing import Any


@contextlib.contextmanager
def entry_points_read_once() -> Iterator[None]:
    """While the block runs, ``importlib.metadata.entry_points(...)`` answers from one reading of the installed
    packages' entry points, taken as it begins. gevent's ``patch_all`` looks up the plugins of each event it sends
    (25 of them), and each look-up read every installed package's metadata again: 0.13 of a worker's 0.16 CPU s of
    patching, five workers at once while the core loads its plugins. The packages installed do not change within
    one call; the function is the standard library's again once the block ends, whatever happened in it."""
    original = importlib.metadata.entry_points
    everything = original()

    def entry_points(**params: Any) -> Any:
        return everything.select(**params)

    importlib.metadata.entry_points = entry_points
    try:
        yield
    finally:
        importlib.metadata.entry_points = original
