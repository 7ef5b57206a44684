"""The restart policy is pure: backoff schedule, intensity limit, and the verdict on each outcome."""

from __future__ import annotations

import pytest

from plugin_health.supervision import Verdict, backoff_delay, judge, may_restart
from plugin_health.supervision.policy import restarts_in_window


@pytest.mark.parametrize(
    ("attempt", "nominal"),
    [(0, 1), (1, 2), (2, 4), (3, 8), (8, 256), (9, 300), (20, 300), (10_000, 300)],
)
def test_backoff_doubles_from_base_to_cap(attempt: int, nominal: float) -> None:
    assert backoff_delay(attempt, 1.0, 300.0, jitter=0.999999) == pytest.approx(nominal, rel=1e-5)
    assert backoff_delay(attempt, 1.0, 300.0, jitter=0.0) == pytest.approx(nominal / 2)


def test_jitter_spreads_over_the_upper_half() -> None:
    delays = [backoff_delay(3, 1.0, 300.0, jitter=j / 10) for j in range(10)]
    assert delays == sorted(delays)
    assert min(delays) == 4.0
    assert max(delays) < 8.0


@pytest.mark.parametrize(("attempt", "jitter"), [(-1, 0.5), (0, -0.1), (0, 1.0)])
def test_backoff_rejects_bad_input(attempt: int, jitter: float) -> None:
    with pytest.raises(ValueError, match="must be"):
        backoff_delay(attempt, 1.0, 300.0, jitter)


def test_restarts_count_only_inside_the_window() -> None:
    times = [0.0, 100.0, 500.0, 599.0]
    assert restarts_in_window(times, now=600.0, window=600.0) == 3
    assert restarts_in_window(times, now=1200.0, window=600.0) == 0


@pytest.mark.parametrize(
    ("times", "now", "allowed"),
    [
        ([], 0.0, True),
        ([1.0, 2.0, 3.0, 4.0], 10.0, True),
        ([1.0, 2.0, 3.0, 4.0, 5.0], 10.0, False),
        ([1.0, 2.0, 3.0, 4.0, 5.0], 601.5, True),  # the oldest has left the window
    ],
)
def test_intensity_limit(times: list[float], now: float, allowed: bool) -> None:
    assert may_restart(times, now, window=600.0, max_restarts=5) is allowed


def test_zero_max_restarts_turns_restarts_off() -> None:
    assert may_restart([], 0.0, window=600.0, max_restarts=0) is False


@pytest.mark.parametrize(
    ("ok", "error_type", "before", "verdict", "after"),
    [
        (True, None, 2, Verdict.HEALTHY, 0),
        (False, "ValueError", 0, Verdict.COUNTED, 1),
        (False, "PluginTimeoutError", 1, Verdict.COUNTED, 2),
        (False, "PluginMemoryError", 2, Verdict.FAIL, 3),
        (False, "PluginCrashedError", 0, Verdict.FAIL, 1),
        (False, "SystemExit", 5, Verdict.FAIL, 6),
    ],
    ids=["success-resets", "first-failure", "second-failure", "third-fails", "crash-fails-at-once", "past-threshold"],
)
def test_judge(ok: bool, error_type: str | None, before: int, verdict: Verdict, after: int) -> None:
    judgement = judge(ok, error_type, before, threshold=3)
    assert (judgement.verdict, judgement.consecutive_failures) == (verdict, after)
