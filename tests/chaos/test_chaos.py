"""The short version of the chaos and load suite (the full one: ``python tests/chaos/chaos.py``)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).with_name("chaos.py")


def test_two_instances_on_redis_lose_nothing_under_fire() -> None:
    run = subprocess.run(
        [sys.executable, str(SCRIPT), "--requests", "2000", "--concurrency", "16"],
        capture_output=True, text=True, timeout=600, check=False, cwd=SCRIPT.parents[2],
    )
    report = run.stdout + run.stderr[-3000:]
    assert run.returncode == 0, report
    found = json.loads(next(line for line in run.stdout.splitlines() if line.startswith("REPORT "))[7:])
    assert found["requests answered"] == found["requests sent"] == 2000, report
    assert (found["unexpected status codes"], found["connection errors"]) == (0, 0), report
    assert (found["server processes lost"], found["transitions lost"]) == (0, 0), report
    assert found["leading host killed"], report
    # Counted first, then read from Redis: plugins go on failing and recovering in between, so Redis may hold a
    # few more, never fewer.
    recorded, counted = found["transitions recorded in Redis"], found["transitions counted by the hosts"]
    assert recorded >= counted > 0, report
    assert "RESULT: pass" in run.stdout, report
