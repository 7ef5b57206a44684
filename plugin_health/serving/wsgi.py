"""The WSGI entry point: ``gunicorn plugin_health.serving.wsgi:app``, as ``plugin-health serve`` runs it.

The one module that builds the service's app when it is imported (``./wsgi.py`` of a clone re-exports it, for
``gunicorn wsgi:app`` and ``flask --app wsgi``); the ``plugin-health`` read commands load it as ``flask --app wsgi``
does.
"""

from __future__ import annotations

from plugin_health import create_app
from plugin_health.errors import ConfigError

try:
    app = create_app()
except ConfigError as err:  # a bad setting stops the service with one line naming the variable, no traceback
    raise SystemExit(f"plugin-health: {err}") from None

__all__ = ["app"]
