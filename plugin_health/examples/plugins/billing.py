"""Fails in initialize until it is configured: shows a FAILED plugin with its error."""

from __future__ import annotations

from plugin_health import Plugin, PluginContext


class Billing(Plugin):
    version = "0.9.1"

    def initialize(self, context: PluginContext) -> None:
        api_key = context.config.get("api_key")
        if not api_key:
            raise RuntimeError("billing is not configured: set plugins.billing.api_key in the config file")
        self._api_key = api_key
