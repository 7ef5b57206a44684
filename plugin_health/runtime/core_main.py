"""``python -m plugin_health.runtime.core_main``: the core process, with settings from the environment.

The gunicorn configuration (:mod:`plugin_health.serving.gunicorn_conf`) starts it; run it by hand (or under
systemd) beside workers started with ``PLUGIN_HEALTH_HOST_MODE=external``.
"""

from __future__ import annotations

import sys

from plugin_health import logs
from plugin_health.config import load_settings
from plugin_health.runtime.hosting import serve


def main() -> None:
    """Configure logging, then serve until SIGTERM, SIGINT or the owner's exit."""
    logs.configure()
    sys.exit(serve(load_settings()))


if __name__ == "__main__":
    main()
