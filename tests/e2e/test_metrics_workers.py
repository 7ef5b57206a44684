"""Metrics under 2 real gunicorn workers and the plugin host: every process's counts, summed once."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from e2e.server import Server

TOKEN = "metrics-e2e-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def sample(text: str, name: str, **labels: str) -> float:
    for line in text.splitlines():
        match = re.fullmatch(r"([a-z_]+)(?:\{(.*)\})? (\S+)", line)
        if match and match.group(1) == name and dict(re.findall(r'(\w+)="([^"]*)"', match.group(2) or "")) == labels:
            return float(match.group(3))
    return 0.0


def counting(server: Server) -> set[int]:
    """The processes that have counted something (each writes counter files of its own)."""
    return {int(f.stem.split("_")[1]) for f in (server.run_dir / "metrics").glob("counter_*.db")}


def test_counts_of_every_worker_and_the_host_are_summed(
    tmp_module: Path, gunicorn_factory: Callable[..., Server]
) -> None:
    plugins = tmp_module / "metrics-plugins"
    plugins.mkdir()
    (plugins / "solo.py").write_text(
        "from plugin_health import Plugin, tool\n\nclass P(Plugin):\n    @tool\n    def ping(self):\n"
        "        return 'pong'\n"
    )
    (plugins / "sore.py").write_text(
        "from plugin_health import Plugin\n\nclass P(Plugin):\n    def start(self):\n        raise OSError('x')\n"
    )
    server = gunicorn_factory(plugins, {"PLUGIN_HEALTH_ADMIN_TOKEN": TOKEN, "PLUGIN_HEALTH_MAX_RESTARTS": "0",
                                        "PLUGIN_HEALTH_HEALTH_INTERVAL": "3600"}, workers=2)
    # The kernel hands a new connection to whichever idle worker wakes first, which may be the same one every
    # time: requests go eight at a time, 40 and then more (bounded) until both workers have answered some.
    made = 0
    with ThreadPoolExecutor(8) as pool:
        while made < 40 or (len(counting(server) & server.workers()) < 2 and made < 800):
            assert set(pool.map(lambda _: server.get("/v1/plugins/").status, range(8))) == {200}
            made += 8
    for _ in range(3):
        answer = server.get("/v1/plugins/solo/tools/ping", headers=AUTH, method="POST")
        assert (answer.status, json.loads(answer.body)["result"]) == (200, "pong")
    text = server.get("/metrics").text
    assert sample(text, "plugin_health_http_requests_total", method="GET", route="/v1/plugins/", status="200") == made
    assert sample(text, "plugin_health_sandbox_calls_total", call="tool", outcome="ok") == 3
    assert sample(text, "plugin_health_sandbox_calls_total", call="start", outcome="error") == 1  # sore's
    assert sample(text, "plugin_health_plugin_failed_calls_total", plugin="sore") == 1
    assert "plugin_health_plugin_failed_calls_total{plugin=\"solo\"}" not in text  # no failure, no series
    assert sample(text, "plugin_health_plugins", state="RUNNING") == 1
    assert sample(text, "plugin_health_plugins", state="FAILED") == 1
    assert sample(text, "plugin_health_host_up") == 1
    # The requests were answered by both workers, and counted once each: files of several processes.
    pids = counting(server)
    assert len(pids & server.workers()) == 2, (pids, server.workers())
    # The same sums from whichever worker answers the scrape.
    again = [sample(server.get("/metrics").text, "plugin_health_sandbox_calls_total", call="tool", outcome="ok")
             for _ in range(6)]
    assert again == [3.0] * 6
