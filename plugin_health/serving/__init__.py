"""Running the service: gunicorn's configuration, the WSGI entry point and the ``plugin-health`` command.

Imports nothing itself: ``gunicorn_conf`` must choose the metrics directory before prometheus_client is imported.
"""
