"""Structured logs: one JSON object per line, with a transition's fields when the line is about one."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

#: The fields of a transition that a log line carries (its error message is left out: it may hold secrets;
#: the history keeps it for those allowed to read it).
TRANSITION_FIELDS = ("plugin", "from", "to", "trigger", "reason", "error_type")


class JsonFormatter(logging.Formatter):
    """Formats a record as one line of JSON: time, level, logger, process, message, and transition fields."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as compact JSON."""
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "pid": record.process,
            "message": record.getMessage(),
        }
        transition = getattr(record, "transition", None)
        if isinstance(transition, dict):
            line["event"] = "transition"
            line.update({key: transition.get(key) for key in TRANSITION_FIELDS})
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, separators=(",", ":"), default=str)


def configure(level: int = logging.INFO) -> None:
    """Log JSON lines to stderr from every logger (the plugin host process does this)."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("transitions").setLevel(logging.WARNING)  # one line per transition is ours to write
