"""Checks shared by the services; each raises BadInput with a message naming the field."""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime, timedelta
from functools import lru_cache

import isodate

from registry.errors import BadInput
from registry.model import MAX_VALUE

# Incident data from before Unix time or after 2200 is a typo, and would break date arithmetic.
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(2200, 1, 1, tzinfo=UTC)
MAX_CADENCE_YEARS = 10

SLUG_PATTERN = re.compile(r"[a-z][a-z0-9]*(-[a-z0-9]+)*")
SLUG_MAX = 64
INCIDENT_KEY_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/-]*")
# isodate accepts a trailing newline; the contract wants the bare duration.
DURATION_SHAPE = re.compile(r"-?P[0-9TWYMDHS.,]+")
INCIDENT_KEY_MAX = 64


def slug(value: str) -> str:
    """Return a valid KPI slug."""
    if not is_slug(value):
        raise BadInput(
            f"slug must match ^{SLUG_PATTERN.pattern}$ and be at most {SLUG_MAX} characters"
        )
    return value


def is_slug(value: str) -> bool:
    """Return whether a string could be a KPI slug (so it is safe to look up)."""
    return len(value) <= SLUG_MAX and SLUG_PATTERN.fullmatch(value) is not None


def is_incident_key(value: str) -> bool:
    """Return whether a string could be an incident id (so it is safe to look up)."""
    return len(value) <= INCIDENT_KEY_MAX and INCIDENT_KEY_PATTERN.fullmatch(value) is not None


def incident_key(value: str) -> str:
    """Return a valid external incident id such as INC-2041."""
    if not is_incident_key(value):
        raise BadInput(
            "incident id must be 1 to 64 letters, digits or . _ : / - and start with a letter "
            "or digit"
        )
    return value


def text(value: str, field: str, *, max_length: int, required: bool = True) -> str:
    """Return a string that fits its column; required strings may not be blank."""
    if required and not value.strip():
        raise BadInput(f"{field} must not be empty")
    if len(value) > max_length:
        raise BadInput(f"{field} must be at most {max_length} characters")
    if "\x00" in value:
        raise BadInput(f"{field} must not contain NUL characters")
    if not is_encodable(value):
        raise BadInput(f"{field} must be valid Unicode text")
    return value


def is_encodable(value: str) -> bool:
    """Return whether a string can be stored as UTF-8 (lone surrogates cannot)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def optional_text(value: str | None, field: str, *, max_length: int) -> str | None:
    """Return an optional string that fits its column."""
    if value is None:
        return None
    return text(value, field, max_length=max_length, required=False)


def finite(value: float, field: str) -> float:
    """Return a finite float."""
    if not math.isfinite(value):
        raise BadInput(f"{field} must be a finite number")
    return float(value)


def measure(value: float, field: str) -> float:
    """Return a finite float no larger in magnitude than a KPI value may be."""
    finite(value, field)
    if abs(value) > MAX_VALUE:
        raise BadInput(f"{field} must be between -{MAX_VALUE:g} and {MAX_VALUE:g}")
    return float(value)


def in_range(value: float, field: str, low: float, high: float) -> float:
    """Return a finite float within [low, high]."""
    finite(value, field)
    if not low <= value <= high:
        raise BadInput(f"{field} must be between {low:g} and {high:g}")
    return float(value)


def utc(value: datetime, field: str) -> datetime:
    """Return an offset-aware date-time in UTC; naive ones are ambiguous, far ones mistakes."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise BadInput(f"{field} must be an ISO 8601 date-time with a UTC offset")
    try:
        moment = value.astimezone(UTC)
    except OverflowError:
        raise BadInput(f"{field} is out of range") from None
    if not EARLIEST <= moment < LATEST:
        raise BadInput(f"{field} must be between {EARLIEST.year} and {LATEST.year - 1}")
    return moment


def optional_utc(value: datetime | None, field: str) -> datetime | None:
    """Return an optional date-time converted to UTC."""
    return None if value is None else utc(value, field)


def duration(value: str, field: str = "reviewCadence") -> str:
    """Return a positive ISO 8601 duration such as P90D, unchanged."""
    try:
        if not DURATION_SHAPE.fullmatch(value):
            raise ValueError(value)
        parsed = isodate.parse_duration(value)
    except (isodate.ISO8601Error, ValueError, TypeError, OverflowError):
        raise BadInput(f"{field} must be an ISO 8601 duration such as P90D") from None
    anchor = datetime(2000, 1, 1, tzinfo=UTC)
    try:
        end = anchor + parsed
    except (OverflowError, ValueError):
        end = datetime.max.replace(tzinfo=UTC)
    if end <= anchor:
        raise BadInput(f"{field} must be a positive duration")
    if end > anchor.replace(year=anchor.year + MAX_CADENCE_YEARS):
        raise BadInput(f"{field} must be at most {MAX_CADENCE_YEARS} years")
    return value


def add_duration(start: datetime, value: str) -> datetime:
    """Return `start` plus an ISO 8601 duration (months and years by the calendar)."""
    result: datetime = start + _parsed_duration(value)
    return result


@lru_cache(maxsize=256)
def _parsed_duration(value: str) -> timedelta | isodate.Duration:
    # Every read of a definition works out its review date: parse each cadence once.
    return isodate.parse_duration(value)
