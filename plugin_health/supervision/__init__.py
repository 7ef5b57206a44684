"""Supervision: the restart policy (pure) and the supervisor that applies it."""

from plugin_health.supervision.policy import RESTART_LIMIT_REACHED, Verdict, backoff_delay, judge, may_restart
from plugin_health.supervision.supervisor import PluginWatch, SupervisionSettings, Supervisor

__all__ = [
    "RESTART_LIMIT_REACHED",
    "PluginWatch",
    "SupervisionSettings",
    "Supervisor",
    "Verdict",
    "backoff_delay",
    "judge",
    "may_restart",
]
