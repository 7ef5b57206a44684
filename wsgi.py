"""The WSGI entry point: ``gunicorn wsgi:app`` (or ``flask --app wsgi ...``)."""

from plugin_health import create_app
from plugin_health.errors import ConfigError

try:
    app = create_app()
except ConfigError as err:  # a bad setting stops the service with one line naming the variable, no traceback
    raise SystemExit(f"plugin-health: {err}") from None
