"""The restart policy as pure functions: backoff schedule, intensity limit, and what an outcome does."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import Enum

from plugin_health.errors import InvalidHealthResultError, bounded
from plugin_health.health import HealthResult
from plugin_health.sandbox.results import CRASHED, PluginSandboxResult, failed

RESTART_LIMIT_REACHED = "restart limit reached"
#: ``error_type`` of a health check that said it fails: it returned False, a ``HealthResult`` whose status is
#: ``fail``, or a value that means nothing (neither True, False, None nor a ``HealthResult``).
HEALTH_CHECK_FAILED = "HealthCheckFailed"
#: What a health check that returned True or None amounts to.
PASSED = HealthResult("pass")
#: Seconds a RUNNING plugin's last health check may be late, beyond its interval and timeout, before it is stale
#: (the host publishes the time of a passing check within about a second).
STALE_GRACE = 1.0


def backoff_delay(attempt: int, base: float, cap: float, jitter: float) -> float:
    """Seconds to wait before restart number ``attempt`` (0-based) of a plugin.

    Exponential: ``base * 2**attempt`` capped at ``cap``; ``jitter`` in [0, 1) spreads it over the upper
    half of that (``delay * (0.5 + jitter / 2)``), so that plugins failing together do not restart in step,
    while every delay stays at least half the nominal one.
    """
    if attempt < 0:
        raise ValueError(f"attempt must be >= 0, not {attempt}")
    if not 0.0 <= jitter < 1.0:
        raise ValueError(f"jitter must be in [0, 1), not {jitter}")
    nominal = cap if attempt >= 64 else min(cap, base * 2.0**attempt)
    return nominal * (0.5 + jitter / 2)


def restarts_in_window(restart_times: Iterable[float], now: float, window: float) -> int:
    """How many of the restarts at ``restart_times`` fall within the last ``window`` seconds."""
    return sum(1 for t in restart_times if now - t < window)


def may_restart(restart_times: Iterable[float], now: float, window: float, max_restarts: int) -> bool:
    """Whether one more automatic restart fits the intensity limit (``max_restarts`` 0: never)."""
    return max_restarts > 0 and restarts_in_window(restart_times, now, window) < max_restarts


class Verdict(Enum):
    """What one call's outcome does to a plugin."""

    HEALTHY = "healthy"  # success: the failure count goes back to 0
    COUNTED = "counted"  # a failure, still under the threshold
    FAIL = "fail"  # the plugin must be moved to FAILED now


@dataclass(frozen=True, slots=True)
class Judgement:
    """The verdict on an outcome, and the consecutive-failure count after it."""

    verdict: Verdict
    consecutive_failures: int


_HEALTHY = Judgement(Verdict.HEALTHY, 0)


def judge(ok: bool, error_type: str | None, consecutive_failures: int, threshold: int) -> Judgement:
    """Apply DESIGN.md section 5: a crash fails at once, ``threshold`` failures in a row fail, success resets."""
    if ok:
        return _HEALTHY  # (frozen: one serves every success)
    count = consecutive_failures + 1
    if error_type == CRASHED or count >= threshold:
        return Judgement(Verdict.FAIL, count)
    return Judgement(Verdict.COUNTED, count)


def stale_deadline(
    last_check: datetime | None, since: datetime, interval: float, timeout: float, grace: float = STALE_GRACE
) -> datetime:
    """When a RUNNING plugin turns stale unless another health check completes first.

    ``(last_check or since) + interval + timeout + grace``: the next check is due ``interval`` after the last one
    and may take ``timeout``. ``since`` is when it entered RUNNING; a check completed before that (in an earlier
    run) does not count, so the later of the two is the start of the count.
    """
    start = since if last_check is None or last_check < since else last_check
    return start + timedelta(seconds=interval + timeout + grace)


def check_outcome(result: PluginSandboxResult) -> tuple[HealthResult, PluginSandboxResult]:
    """What one health check's call says: the ``HealthResult`` it amounts to, and the outcome that counts (``judge``).

    True, None and a ``pass`` or ``warn`` result are a success (``warn``: healthy but degraded, no failure counted);
    False, a ``fail`` result, any other value (named by its type), a ``HealthResult`` whose fields are wrong, an
    exception, a timeout or a crash are a failure, whose ``HealthResult`` is ``fail`` with the error as its output.
    """
    if not result.ok:
        return HealthResult("fail", output=bounded(result.error or result.error_type or "the check failed")), result
    value = result.result
    if value is True or value is None:
        return PASSED, result
    if isinstance(value, HealthResult):
        try:  # checked again: an instance can be changed after it was made (an inline plugin hands over its own)
            value = HealthResult(**value.to_wire())
        except InvalidHealthResultError as err:
            refused = failed(type(err).__name__, str(err), result.duration_ms)
            return HealthResult("fail", output=refused.error), refused
        if value.status != "fail":
            return value, PluginSandboxResult(True, value, duration_ms=result.duration_ms)
        problem = value.output or "health check returned status 'fail'"
    elif value is False:
        problem = "health check returned False"
    else:
        problem = f"health_check returned a {type(value).__name__}, not True, False, None or a HealthResult"
    outcome = PluginSandboxResult(False, value, bounded(problem), HEALTH_CHECK_FAILED, result.duration_ms)
    return (value if isinstance(value, HealthResult) else HealthResult("fail", output=outcome.error)), outcome
