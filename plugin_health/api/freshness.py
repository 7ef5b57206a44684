"""Stale health checks as the answers tell them, and how long an answer built from snapshots stays true.

A RUNNING plugin is stale once its ``stale_after`` has passed (its last health check is older than the health
interval, its timeout and a grace): time alone turns it unhealthy, with no write to the store. So an answer
cached per store version must also expire when the first plugin it shows as fresh turns stale, and when the age
it states for a stale one (``stale: last health check 42 s ago``) moves on to the next second.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

from plugin_health.lifecycle import PluginLifecycleState
from plugin_health.store import PluginSnapshot

RUNNING = PluginLifecycleState.RUNNING
NEVER_CHECKED = "stale: no health check completed since it started"
CHECK_FAILED = "last health check failed"
#: Why a healthy plugin is degraded (its ``/v1/health`` check's output).
CHECK_WARNED = "last health check warned"


class Horizon:
    """One clock reading for a whole answer, and the earliest moment (epoch seconds) that answer stops being true.

    ``until`` depends only on the snapshots judged and on the whole seconds of the stated ages, never on the
    exact time of the build: every worker that builds the same answer finds the same ``until`` (and ETag).
    """

    __slots__ = ("_epoch", "now", "until")

    def __init__(self, now: datetime | None = None) -> None:
        self.now = datetime.now(UTC) if now is None else now
        self._epoch = self.now.timestamp()
        self.until: float | None = None

    def keep(self, at: float) -> None:
        """Note that the answer stops being true at ``at`` (epoch seconds), if that is sooner than known."""
        if self.until is None or at < self.until:
            self.until = at

    def stale(self, snapshot: PluginSnapshot) -> str | None:
        """Why ``snapshot`` is stale now (``stale: last health check N s ago``), or None when it is not."""
        stale_after = snapshot.stale_after
        if stale_after is None or snapshot.state is not RUNNING:
            return None
        if self.now < stale_after:
            self.keep(stale_after.timestamp())  # it turns stale then
            return None
        last = snapshot.last_check
        if last is None or last < snapshot.since:
            return NEVER_CHECKED
        checked = last.timestamp()
        age = math.floor(self._epoch - checked)
        self.keep(checked + age + 1)  # the stated age moves on then
        return f"stale: last health check {age} s ago"


def unhealthy(snapshot: PluginSnapshot, horizon: Horizon) -> str | None:
    """Why ``snapshot`` is not healthy at ``horizon``'s clock reading, or None when it is.

    The one judgement of every answer: a plugin's ``healthy``, its check in ``/v1/health`` and, for a critical
    one, in ``/readyz``. Healthy is RUNNING, its last health check (if any yet) passed, and not stale. The why:
    ``FAILED start failed OSError`` (state, reason, error type), ``stale: ...``, or ``last health check failed``.
    """
    if snapshot.state is not RUNNING:
        return " ".join(part for part in (snapshot.state.value, snapshot.reason, snapshot.error_type) if part)
    stale = horizon.stale(snapshot)
    if stale is not None:
        return stale
    return CHECK_FAILED if snapshot.last_check_ok is False else None


def degraded(snapshot: PluginSnapshot, problem: str | None) -> bool:
    """Healthy (``problem``, from :func:`unhealthy`, is None) but its last health check said ``warn``: it counts as
    healthy for readiness, and makes the aggregate status ``warn``."""
    return problem is None and snapshot.check_status == "warn"


def present(entry: dict[str, Any], snapshot: PluginSnapshot, horizon: Horizon) -> dict[str, Any]:
    """A ``PluginHealthResponse`` entry of ``snapshot`` as true at ``horizon``'s clock reading.

    ``entry`` may have been dumped at another time (entries are reused while their snapshot is unchanged), so
    ``healthy``, ``degraded``, ``stale`` and, for a stale plugin, ``reason`` are set here: the entry is copied only
    when they differ from what it holds.
    """
    why = horizon.stale(snapshot)
    problem = unhealthy(snapshot, horizon)
    healthy, warned = problem is None, degraded(snapshot, problem)
    if why is None:
        if not entry["stale"] and entry["healthy"] is healthy and entry["degraded"] is warned:
            return entry
        return {**entry, "stale": False, "healthy": healthy, "degraded": warned, "reason": snapshot.reason}
    return {**entry, "stale": True, "healthy": False, "degraded": False, "reason": why}
