"""``python -m plugin_health.runtime.core_main``: the core process, with settings from the environment.

The gunicorn configuration (:mod:`plugin_health.serving.gunicorn_conf`) starts it; run it by hand (or under
systemd) beside workers started with ``PLUGIN_HEALTH_HOST_MODE=external``. With ``--prepared`` (a core spawned ahead,
``PreparedCore`` in :mod:`plugin_health.runtime.host_process`), it imports its modules, then reads the environment it
serves with from its standard input, as one JSON object, before anything else: nothing there (its owner closed the
pipe, or exited) and it exits, having hosted nothing.
"""

from __future__ import annotations

import json
import os
import sys

from plugin_health import logs
from plugin_health.config import load_settings
from plugin_health.runtime.host_process import PREPARED_FLAG
from plugin_health.runtime.hosting import serve


def main() -> None:
    """Configure logging, then serve until SIGTERM, SIGINT or the owner's exit."""
    if sys.argv[1:] == [PREPARED_FLAG]:
        environ = _awaited_environment()
        if environ is None:
            sys.exit(0)  # never started: nothing was hosted
        os.environ.clear()
        os.environ.update(environ)
    logs.configure()
    sys.exit(serve(load_settings()))


def _awaited_environment() -> dict[str, str] | None:
    """The environment the owner starts this prepared core with (read whole from standard input, which is then
    ``/dev/null``, as an unprepared core's is: nothing it spawns holds the owner's pipe); None if it sent none."""
    with os.fdopen(0, "rb", closefd=False) as pipe:
        text = pipe.read()
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    if not text:
        return None
    environ = json.loads(text)
    if not isinstance(environ, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                for k, v in environ.items()):
        raise SystemExit("plugin-health: a prepared core was started with something other than an environment")
    return environ


if __name__ == "__main__":
    main()
