"""How the pages write numbers, units and times: one place, so every page reads the same."""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime

from registry.model import Comparison, Target

# What a page writes for a missing value (an en dash).
NONE = "\u2013"
# Units written after the number without a space, and their short forms.
_SHORT_UNITS = {"%": "%", "percent": "%", "percentage": "%", "minutes": " min", "seconds": " s"}


def number(value: float | None, units: str = "") -> str:
    """Return a value with its units (`42.5 min`, `93.1%`, `4.6 score`); an en dash for none."""
    if value is None or not math.isfinite(value):
        return NONE
    digits = 0 if abs(value) >= 1000 else 1 if abs(value) >= 10 else 2
    text = f"{value:,.{digits}f}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    if text == "-0":
        text = "0"
    return text + unit_suffix(units)


def unit_suffix(units: str) -> str:
    """Return how a unit is written after a number."""
    short = _SHORT_UNITS.get(units.strip().lower())
    if short is not None:
        return short
    return f" {units}" if units else ""


def target(value: Target | None, units: str) -> str:
    """Return a target as a reader says it: `≤ 120 min`, `≥ 90%`."""
    if value is None:
        return "no target"
    sign = "≤" if value.comparison is Comparison.AT_MOST else "≥"
    return f"{sign} {number(value.threshold, units)}"


def target_scope(value: Target) -> str:
    """Return whom and what a target applies to (`P1`, `P2 · exec`, `every severity`)."""
    parts = [value.severity.value if value.severity else "every severity"]
    if value.persona is not None:
        parts.append(value.persona.value)
    return " · ".join(parts)


def moment(value: datetime | None) -> str:
    """Return a time in UTC with its offset shown (`2026-12-03 19:57 UTC+00:00`)."""
    if value is None:
        return NONE
    utc = (value if value.tzinfo else value.replace(tzinfo=UTC)).astimezone(UTC)
    return utc.strftime("%Y-%m-%d %H:%M UTC+00:00")


def day(value: datetime) -> str:
    """Return a date in UTC (`2026-12-03`)."""
    return (
        (value if value.tzinfo else value.replace(tzinfo=UTC)).astimezone(UTC).strftime("%Y-%m-%d")
    )


def iso(value: datetime) -> str:
    """Return a machine-readable time for a `<time datetime>` attribute."""
    utc = (value if value.tzinfo else value.replace(tzinfo=UTC)).astimezone(UTC)
    return utc.isoformat().replace("+00:00", "Z")


_CADENCE = re.compile(r"P(\d+)([DWMY])")
_CADENCE_UNITS = {"D": "day", "W": "week", "M": "month", "Y": "year"}


def cadence(value: str) -> str:
    """Return a review cadence as a reader says it (`every 90 days (P90D)`); others as given."""
    found = _CADENCE.fullmatch(value)
    if found is None:
        return value
    count, unit = int(found[1]), _CADENCE_UNITS[found[2]]
    every = f"every {unit}" if count == 1 else f"every {count} {unit}s"
    return f"{every} ({value})"
