"""One JSON log line per transition, with its fields, and never the error message."""

from __future__ import annotations

import json
import logging

import pytest

from plugin_health import PluginLifecycleManager
from plugin_health.logs import JsonFormatter


def test_each_transition_is_one_json_line(caplog: pytest.LogCaptureFixture) -> None:
    manager = PluginLifecycleManager()
    with caplog.at_level(logging.INFO, logger="plugin_health.lifecycle.manager"):
        manager.set_state("auth", "LOADED")
        manager.trigger("auth", "fail", reason="initialize failed", error_type="OSError", error="password=hunter2")
    lines = [JsonFormatter().format(r) for r in caplog.records]
    assert len(lines) == 2
    first, second = (json.loads(line) for line in lines)
    assert {k: first[k] for k in ("event", "plugin", "from", "to", "trigger")} == {
        "event": "transition", "plugin": "auth", "from": None, "to": "LOADED", "trigger": "load"}
    assert {k: second[k] for k in ("from", "to", "trigger", "reason", "error_type", "level")} == {
        "from": "LOADED", "to": "FAILED", "trigger": "fail", "reason": "initialize failed", "error_type": "OSError",
        "level": "WARNING"}  # a failure is news at the usual level; the entry into LOADED is not
    assert first["level"] == "INFO"
    assert "hunter2" not in lines[1]
    assert "\n" not in lines[1]
    assert second["time"].endswith("+00:00")


def test_other_lines_are_json_too() -> None:
    record = logging.LogRecord("x", logging.WARNING, __file__, 1, "plain %s", ("text",), None)
    line = json.loads(JsonFormatter().format(record))
    assert (line["message"], line["level"], line["logger"]) == ("plain text", "WARNING", "x")
    assert "event" not in line
