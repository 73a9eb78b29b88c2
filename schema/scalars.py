"""The DateTime scalar: ISO 8601 with a UTC offset; naive values are refused."""

from __future__ import annotations

from datetime import UTC, datetime

import strawberry


def _serialize(value: datetime) -> str:
    return value.astimezone(UTC).isoformat()


def _parse(value: object) -> datetime:
    if not isinstance(value, str):
        raise ValueError("DateTime must be an ISO 8601 string")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"{value!r} is not an ISO 8601 date-time") from None
    if parsed.tzinfo is None or parsed.utcoffset() is None:
        raise ValueError(f"{value!r} has no UTC offset; add Z or +HH:MM")
    try:
        return parsed.astimezone(UTC)
    except OverflowError:
        raise ValueError(f"{value!r} is out of range") from None


RFC3339 = "https://datatracker.ietf.org/doc/html/rfc3339"

DateTime = strawberry.scalar(
    name="DateTime",
    description="ISO 8601 date-time with a UTC offset. Answers are in UTC, e.g. "
    "2026-03-01T09:30:00+00:00 (fractional seconds only when there are any). Values sent must "
    "carry an offset (Z or +HH:MM; without one: BAD_USER_INPUT) and fall between 1970 and 2199 "
    "(UTC).",
    specified_by_url=RFC3339,
    serialize=_serialize,
    parse_value=_parse,
)
