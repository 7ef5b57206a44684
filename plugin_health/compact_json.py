"""Compact JSON text (what ``json.dumps(value, separators=(",", ":"))`` writes) of values that hold no cycle, written
by one C encoder made once: for the texts written thousands of times as plugins load (a runner's answers, the
store's records and snapshots)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any


def compact_encoder(default: Callable[[Any], Any] | None = None, allow_nan: bool = True) -> Callable[[object], str]:
    """``json.JSONEncoder(separators=(",", ":"), default=default, allow_nan=allow_nan).encode`` for values that hold no
    cycle (none is looked for: a value with one raises ``RecursionError``), with one C encoder made once:
    ``JSONEncoder.encode`` makes a new one at each call, with a cycle check (half the time of encoding a small
    value). Where the C encoder is missing or writes otherwise than ``encode`` (its arguments are CPython's own),
    ``encode`` it is."""
    standard = json.JSONEncoder(separators=(",", ":"), default=default, allow_nan=allow_nan)
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:
        return standard.encode
    numbers: list[float] = [0, -1, 2.5, 1e300, 2**62]
    probe = {"text": 'a "quoted"\n\u00e9\U0001f600 text', "numbers": numbers + ([float("inf")] if allow_nan else []),
             "none": None, "flags": (True, False), "nested": {"empty": [], "list": ["x"]}}
    try:
        encoder = make(None, standard.default, json.encoder.encode_basestring_ascii, None, ":", ",", False, False,
                       allow_nan)
        if "".join(encoder(probe, 0)) != standard.encode(probe):
            return standard.encode
    except (TypeError, ValueError):  # another signature in another Python
        return standard.encode

    def encode(value: object) -> str:
        return "".join(encoder(value, 0))

    return encode
