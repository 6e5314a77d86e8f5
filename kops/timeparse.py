"""Durations and timestamps as operators type them, parsed in one place.

Used by the CLI, the worker's recipe files and the recipes; imports no click.
"""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime

_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")


def parse_duration(text: str) -> float:
    """Seconds in a duration: ``30s``, ``5m``, ``1h``, ``2d``, ``1w``, ``500ms``, ``1h30m``.

    A bare number is seconds.
    """
    s = text.strip().lower().replace(" ", "")
    if not s:
        raise ValueError("empty duration")
    try:
        value = float(s)
    except ValueError:
        pass
    else:
        if value < 0:
            raise ValueError(f"duration must not be negative, got {text!r}")
        return value
    pos = 0
    total = 0.0
    for m in _DURATION_RE.finditer(s):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _DURATION_UNITS[m.group(2)]
        pos = m.end()
    if pos != len(s) or pos == 0:
        raise ValueError(
            f"invalid duration {text!r}: use a number with a unit, e.g. 500ms, 30s, 5m, 1h, 2d"
        )
    return total


class DurationNotInstant(ValueError):
    """A duration was given where a point in time is needed."""


def parse_instant(text: str) -> int:
    """Epoch milliseconds of an absolute point in time, and nothing relative:

    - epoch milliseconds: ``1714564800000``
    - ISO-8601: ``2024-05-01T12:00:00Z``, ``2024-05-01 12:00:00+02:00``, ``2024-05-01``
      (no offset means UTC)

    A duration (``1h``) is refused (:class:`DurationNotInstant`, a ValueError): for a due
    time it is ambiguous (ago? from now?).
    """
    s = text.strip()
    if not s:
        raise ValueError("empty time")
    absolute = _absolute_ms(s)
    if absolute is not None:
        return absolute
    try:
        parse_duration(s)
    except ValueError:
        raise ValueError(
            f"invalid time {text!r}: use ISO-8601 (2030-01-01T09:00:00Z) or epoch milliseconds"
        ) from None
    raise DurationNotInstant(
        f"{text!r} is a duration, not a point in time: give ISO-8601 "
        "(2030-01-01T09:00:00Z) or epoch milliseconds"
    )


def parse_timestamp(text: str, *, now_ms: int | None = None) -> int:
    """Epoch milliseconds from one of:

    - epoch milliseconds: ``1714564800000``
    - ISO-8601: ``2024-05-01T12:00:00Z``, ``2024-05-01 12:00:00+02:00``, ``2024-05-01``
      (no offset means UTC)
    - ``now``, or a duration meaning that long ago: ``15m``, ``2h``, ``1d``
    """
    s = text.strip()
    if now_ms is None:
        now_ms = int(time.time() * 1000)
    if not s:
        raise ValueError("empty timestamp")
    if s.lower() == "now":
        return now_ms
    absolute = _absolute_ms(s)
    if absolute is not None:
        return absolute
    try:
        ago = parse_duration(s)
    except ValueError:
        raise ValueError(
            f"invalid timestamp {text!r}: use ISO-8601 (2024-05-01T12:00:00Z), epoch "
            "milliseconds, 'now', or a duration ago (15m, 2h, 1d)"
        ) from None
    return now_ms - int(ago * 1000)


def _absolute_ms(s: str) -> int | None:
    """Epoch ms from epoch milliseconds or ISO-8601 (UTC when no offset); None otherwise."""
    if re.fullmatch(r"\d+", s):
        return int(s)
    try:
        dt = datetime.fromisoformat(s)
    except ValueError:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp() * 1000)
