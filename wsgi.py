"""The WSGI entry point of a clone: ``gunicorn wsgi:app`` (or ``flask --app wsgi ...``).

It lives in the package, :mod:`plugin_health.serving.wsgi`, so that an installed service has it too.
"""

from plugin_health.serving.wsgi import app

__all__ = ["app"]
