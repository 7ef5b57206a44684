"""The WSGI entry point: ``gunicorn wsgi:app``."""

from plugin_health import create_app

app = create_app()
