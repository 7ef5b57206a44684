"""A runner killed for one plugin's sake: the others of that runner come back in a fresh one, initialized and
started again (recorded), never RUNNING with an instance that was not initialized; the culprit is quarantined."""

from __future__ import annotations

import time
from pathlib import Path

from plugin_health import create_app
from plugin_health.app import EXTENSION, Service

TOKEN = "recovery-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def test_the_others_of_a_killed_runner_are_initialized_again_before_they_run(tmp_path: Path) -> None:
    log = tmp_path / "initialized.log"
    (tmp_path / "victim.py").write_text(
        "import os\nfrom plugin_health import Plugin, tool\n\nclass Victim(Plugin):\n"
        "    def initialize(self, context):\n"
        f"        open({str(log)!r}, 'a').write(str(os.getpid()) + '\\n')\n"
        "        self.ready = True\n"
        "    @tool\n    def ready_here(self):\n        return self.ready\n"
    )
    (tmp_path / "culprit.py").write_text(
        "import signal\nfrom plugin_health import Plugin, tool\n\nclass Culprit(Plugin):\n    timeout = 0.3\n"
        "    @tool\n    def hang(self):\n        signal.setitimer(signal.ITIMER_REAL, 0)\n"
        "        while True:\n            pass\n"
    )
    app = create_app({"plugin_path": str(tmp_path), "store_url": "memory://", "admin_token": TOKEN,
                      "health_interval": 3600, "max_restarts": 0})
    service: Service = app.extensions[EXTENSION]
    client = app.test_client()
    try:
        assert client.post("/v1/plugins/culprit/tools/hang", headers=AUTH).status_code == 504
        culprit = client.get("/v1/plugins/culprit/health", headers=AUTH).get_json()
        assert (culprit["state"], culprit["error_type"]) == ("FAILED", "PluginTimeoutError")
        assert culprit["reason"].startswith("quarantined into a runner of its own")
        deadline = time.monotonic() + 5
        while client.get("/v1/plugins/victim/health").get_json()["state"] != "RUNNING" or len(
                log.read_text().split()) < 2:
            assert time.monotonic() < deadline, client.get("/v1/plugins/victim/history").get_json()
            time.sleep(0.05)
        first, second = log.read_text().split()
        assert first != second  # initialized again, in another process
        moves = [(e["to"], e["trigger"], e["reason"]) for e in client.get("/v1/plugins/victim/history").get_json()]
        assert [m[:2] for m in moves[-4:]] == [("UNAVAILABLE", "make_unavailable"), ("LOADED", "reset"),
                                              ("INITIALIZED", "initialize"), ("RUNNING", "start")]
        assert moves[-4][2].startswith("stopped: its runner was lost (plugin 'culprit' hang:")
        answer = client.post("/v1/plugins/victim/tools/ready_here", headers=AUTH)
        assert (answer.status_code, answer.get_json()["result"]) == (200, True)
        # The culprit's next start is in a runner of its own.
        assert client.post("/v1/plugins/culprit/restart", headers=AUTH).get_json()["isolation"] == "process"
    finally:
        service.shutdown()
