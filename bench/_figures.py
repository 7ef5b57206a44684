"""How a benchmark hands its figures to ``python -m bench`` without a parser of its own.

``python -m bench`` sets ``BENCH_FIGURES`` to a file for each benchmark it runs; :func:`report` appends one figure
to it as a JSON line (and does nothing when the benchmark runs alone). A benchmark still prints its own table for
people; this is only the combined table's copy::

    from _figures import report   # bench/ is on sys.path for a script run from the repository root
    report("GET /readyz", "5,120 req/s", "4,800 req/s (bare Flask route)", 5120 / 4800)
"""

from __future__ import annotations

import json
import os

ENV = "BENCH_FIGURES"


def report(figure: str, value: str, baseline: str, ratio: float | None, goal: str = "") -> None:
    """One row of the combined table: what was measured, its value, the baseline it is compared to (with the
    baseline's own value) and the ratio of the two; ``goal``, if any, is shown after the figure."""
    path = os.environ.get(ENV)
    if not path:
        return
    row = {"figure": f"{figure} [{goal}]" if goal else figure, "value": value, "baseline": baseline, "ratio": ratio}
    with open(path, "a", encoding="utf-8") as out:
        out.write(json.dumps(row) + "\n")
