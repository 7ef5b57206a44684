"""The bearer token of operator routes, and who may see plugin error messages."""

from __future__ import annotations

import hmac

from flask import current_app, request

from plugin_health.api.problems import Problem
from plugin_health.config import Settings


def settings() -> Settings:
    """The running service's settings."""
    value: Settings = current_app.extensions["plugin_health"].settings
    return value


def bearer_ok() -> bool:
    """Whether the request carries the configured admin token (compared in constant time)."""
    token = settings().admin_token
    header = request.headers.get("Authorization", "")
    scheme, _, given = header.partition(" ")
    if token is None or scheme.lower() != "bearer" or not given:
        return False
    return hmac.compare_digest(given.strip().encode(), token.encode())


def details_visible() -> bool:
    """Whether plugin error messages may be shown to this request (PLUGIN_HEALTH_SHOW_DETAILS)."""
    mode = settings().show_details
    if mode == "always":
        return True
    if mode == "never":
        return False
    return bearer_ok()


def require_token() -> None:
    """Refuse the request unless it carries the admin token: 403 when none is configured, else 401."""
    if settings().admin_token is None:
        raise Problem(403, "operator actions are disabled: no PLUGIN_HEALTH_ADMIN_TOKEN is configured",
                      type_="operator-actions-disabled")
    if not bearer_ok():
        problem = Problem(401, "a valid 'Authorization: Bearer <token>' header is required", type_="unauthorized")
        problem.headers["WWW-Authenticate"] = 'Bearer realm="plugin-health"'
        raise problem
