"""The short version of the chaos and load suite (the full one: ``python tests/chaos/chaos.py``)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).with_name("chaos.py")
REQUESTS = 1500
#: Seconds the run may take (about 60 on 2 cores); past it, it gets SIGTERM, on which it stops its servers.
LIMIT = 150


def test_three_instances_on_redis_lose_nothing_under_fire() -> None:
    process = subprocess.Popen(
        [sys.executable, str(SCRIPT), "--requests", str(REQUESTS), "--concurrency", "12"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=SCRIPT.parents[2],
    )
    try:
        out, err = process.communicate(timeout=LIMIT)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGTERM)
        try:
            out, err = process.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            out, err = process.communicate()
        raise AssertionError(f"the chaos run took more than {LIMIT} s:\n{out}{err[-3000:]}") from None
    report = out + err[-3000:]
    assert process.returncode == 0, report
    found = json.loads(next(line for line in out.splitlines() if line.startswith("REPORT "))[7:])
    assert found["requests answered"] == found["requests sent"] == REQUESTS, report
    assert (found["unexpected status codes"], found["connection errors"]) == (0, 0), report
    assert found["transitions recorded locally"] == found["transitions in Redis"] > 0, report
    assert (found["transitions lost"], found["transitions duplicated"], found["histories out of order"]) == (0, 0, 0), \
        report
    assert (found["singleton overlaps"], found["singleton fencing token regressions"]) == (0, 0), report
    assert found["singleton moves"] >= 1, report
    assert len(found["singleton owners at the end"]) == 1, report
    assert (found["server processes lost"], found["killed instance's processes left behind"]) == (0, 0), report
    assert found["instance killed"] in {"i1", "i2", "i3"}, report
    assert "RESULT: pass" in out, report
