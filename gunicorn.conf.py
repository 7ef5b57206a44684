"""gunicorn settings of a clone (``gunicorn wsgi:app`` reads ``./gunicorn.conf.py`` by itself).

They live in the package, :mod:`plugin_health.serving.gunicorn_conf` (``gunicorn -c
python:plugin_health.serving.gunicorn_conf``, as ``plugin-health serve`` runs gunicorn), so that an installed
service has them too; this file re-exports them all: the settings and the hooks that start and stop the core
process. Command-line flags (``-w``, ``-b``, ...) and ``GUNICORN_CMD_ARGS`` override them.
"""

from plugin_health.serving.gunicorn_conf import *  # noqa: F403  (its __all__: every setting and hook)
