"""What a health check may say beyond yes or no: ``HealthResult``, and the plain JSON it crosses to the core as.

A plugin's ``health_check`` returns ``True`` or ``None`` (pass), ``False`` (fail), or a ``HealthResult``: a status
(``pass``, ``warn``, ``fail``) with an observed value, its unit and an output, as the IETF health-check draft
(draft-inadarei-api-health-check) and Spring Boot's ``Health`` carry them. Its fields are checked where it is made,
again by the runner that encodes it (``to_wire``: a frozen dataclass can still be changed with
``object.__setattr__``), and again by the core that decodes it (``from_wire``): the core trusts no runner.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal, TypeAlias

from plugin_health.errors import MAX_ERROR_LENGTH, InvalidHealthResultError, bounded

HealthStatus: TypeAlias = Literal["pass", "warn", "fail"]
ObservedValue: TypeAlias = str | int | float | bool | None

STATUSES: tuple[HealthStatus, ...] = ("pass", "warn", "fail")
#: Longest ``observed_unit``, in characters.
MAX_UNIT_LENGTH = 64
#: Longest ``observed_value`` that is a string, in characters.
MAX_VALUE_LENGTH = 256
#: Longest ``output``, in characters (as long as an error message may be).
MAX_OUTPUT_LENGTH = MAX_ERROR_LENGTH
#: Largest ``observed_value`` integer, either sign: I-JSON's (RFC 7493), which every JSON reader holds exactly.
MAX_SAFE_INTEGER = 2**53 - 1
_FIELDS = ("status", "observed_value", "observed_unit", "output")


@dataclass(frozen=True, slots=True)
class HealthResult:
    """What one health check found: ``HealthResult(status="warn", observed_value=0.93, observed_unit="ratio",
    output="disk 93% full")``.

    ``status``: ``pass`` (healthy), ``warn`` (healthy but degraded: the plugin stays RUNNING and ready, no failure
    is counted, the aggregate health says ``warn``) or ``fail`` (a failed check, as ``False`` is).
    ``observed_value``: a JSON scalar (a string of at most 256 characters, an integer within +-(2**53 - 1), a
    finite float, a boolean or None), shown to anyone. ``observed_unit``: at most 64 characters (``ms``,
    ``ratio``, ``connections``). ``output``: at most 2,000 characters, shown as error messages are (it may carry
    secrets). A field that breaks these rules raises :class:`InvalidHealthResultError` naming it.
    """

    status: HealthStatus
    observed_value: ObservedValue = None
    observed_unit: str | None = None
    output: str | None = None

    def __post_init__(self) -> None:
        checked = _checked(self.status, self.observed_value, self.observed_unit, self.output)
        for name, value in zip(_FIELDS, checked, strict=True):
            object.__setattr__(self, name, value)  # subclasses of str, int and float become the plain types

    def to_wire(self) -> dict[str, Any]:
        """Its fields as plain JSON values, checked again (what a runner sends the core)."""
        checked = _checked(self.status, self.observed_value, self.observed_unit, self.output)
        return dict(zip(_FIELDS, checked, strict=True))

    @classmethod
    def from_wire(cls, data: object) -> HealthResult:
        """The result that ``data`` (decoded JSON from a runner) describes; :class:`InvalidHealthResultError` naming
        what is wrong with it otherwise."""
        if not isinstance(data, dict):
            raise InvalidHealthResultError("result", f"must be a JSON object, not {_kind(data)}")
        unknown = sorted(str(key) for key in data if key not in _FIELDS)
        if unknown:
            raise InvalidHealthResultError(repr(bounded(unknown[0], 100)), f"is not a field ({', '.join(_FIELDS)})")
        if "status" not in data:
            raise InvalidHealthResultError("status", "is missing")
        return cls(**data)


def _checked(status: object, value: object, unit: object, output: object) -> tuple[Any, ...]:
    """The four fields as plain values, or :class:`InvalidHealthResultError` for the first one that is wrong."""
    return (_status(status), _observed(value), _text("observed_unit", unit, MAX_UNIT_LENGTH),
            _text("output", output, MAX_OUTPUT_LENGTH))


def _status(value: object) -> HealthStatus:
    text = str.__str__(value) if isinstance(value, str) else None
    if text in STATUSES:
        return text
    shown = bounded(repr(text), 40) if text is not None else _kind(value)
    raise InvalidHealthResultError("status", f"must be 'pass', 'warn' or 'fail', not {shown}")


def _observed(value: object) -> ObservedValue:
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        number = int.__int__(value)
        if abs(number) > MAX_SAFE_INTEGER:
            raise InvalidHealthResultError(
                "observed_value", "must be an integer within +-(2**53 - 1), which every JSON reader holds exactly "
                                  "(send a larger one as a float)")
        return number
    if isinstance(value, float):
        real = float.__float__(value)
        if not math.isfinite(real):
            raise InvalidHealthResultError("observed_value", f"must be a finite number, not {real!r}")
        return real
    if isinstance(value, str):
        return _text("observed_value", value, MAX_VALUE_LENGTH)
    raise InvalidHealthResultError("observed_value", f"must be a str, int, float, bool or None, not {_kind(value)}")


def _text(field: str, value: object, limit: int) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidHealthResultError(field, f"must be a str or None, not {_kind(value)}")
    text = str.__str__(value)
    if len(text) > limit:
        raise InvalidHealthResultError(field, f"is {len(text):,} characters long, at most {limit:,}")
    return text


def _kind(value: object) -> str:
    """``a list``, ``an int``, ``None``: what a value is, never its text (which can be long, or plugin code to run)."""
    if value is None:
        return "None"
    name = type(value).__name__
    return f"{'an' if name[:1].lower() in 'aeiou' else 'a'} {name}"
