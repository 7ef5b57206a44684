"""``python -m plugin_health``: the ``plugin-health`` command, where its script is not on ``PATH``."""

from plugin_health.serving.command import main

main(prog_name="plugin-health")
