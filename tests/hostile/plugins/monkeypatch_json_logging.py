"""Hostile: at import, replaces json.dumps with one that answers broken JSON and Logger.info with one that raises."""

import json
import logging
from typing import Any

from plugin_health import Plugin


def broken_dumps(*args: Any, **kwargs: Any) -> str:
    return '{"broken": '


def broken_info(self: logging.Logger, *args: Any, **kwargs: Any) -> None:
    raise RuntimeError("logging is broken")


json.dumps = broken_dumps
logging.Logger.info = broken_info  # type: ignore[method-assign]


class MonkeypatchJsonLogging(Plugin):
    isolation = "__ISOLATION__"
    timeout = 1
