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
    return token_matches(request.headers.get("Authorization", ""), settings().admin_token)


def token_matches(header: str, token: str | None) -> bool:
    """Whether an ``Authorization`` header's value is ``Bearer <token>`` (compared in constant time)."""
    scheme, _, given = header.partition(" ")
    if token is None or scheme.lower() != "bearer" or not given:
        return False
    return hmac.compare_digest(given.strip().encode(), token.encode())


def details_visible() -> bool:
    """Whether plugin error messages may be shown to this request (PLUGIN_HEALTH_SHOW_DETAILS)."""
    return visible_with(settings(), request.headers.get("Authorization", ""))


def visible_with(current: Settings, authorization: str) -> bool:
    """Whether plugin error messages may be shown to a request with this ``Authorization`` header ("" for none)."""
    mode = current.show_details
    if mode == "always":
        return True
    if mode == "never":
        return False
    return token_matches(authorization, current.admin_token)


def require_token() -> None:
    """Refuse the request unless it carries the admin token: 403 when none is configured, else 401."""
    if settings().admin_token is None:
        raise Problem(403, "operator actions are disabled: no PLUGIN_HEALTH_ADMIN_TOKEN is configured",
                      type_="operator-actions-disabled")
    if not bearer_ok():
        problem = Problem(401, "a valid 'Authorization: Bearer <token>' header is required", type_="unauthorized")
        problem.headers["WWW-Authenticate"] = 'Bearer realm="plugin-health"'
        raise problem
