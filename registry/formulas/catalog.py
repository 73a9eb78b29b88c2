"""The names a formula may use: value types, incident fields, collections and their fields."""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from registry.formulas.data import IncidentData


class Type(enum.Enum):
    NUMBER = "number"
    STRING = "string"
    BOOL = "bool"
    DATETIME = "datetime"
    DURATION = "duration"
    NULL = "null"


Reader = Callable[[Any], Any]


def as_utc(value: datetime | None) -> datetime | None:
    """Return value, reading a naive datetime as UTC (the service stores UTC everywhere)."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


def _number(value: float | None) -> float | None:
    """Return value as a float; an int too large for one reads as infinite (so gives no value)."""
    if value is None:
        return None
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf


def _reader(name: str, type_: Type) -> Reader:
    """Return a function reading attribute name of a record as a formula value (None = null)."""
    if type_ is Type.DATETIME:
        return lambda record: as_utc(getattr(record, name))
    if type_ is Type.NUMBER:
        return lambda record: _number(getattr(record, name))
    return lambda record: getattr(record, name)


@dataclass(frozen=True, slots=True)
class FieldSpec:
    name: str
    type: Type
    read: Reader


def _fields(**types: Type) -> Mapping[str, FieldSpec]:
    return {name: FieldSpec(name, t, _reader(name, t)) for name, t in types.items()}


@dataclass(frozen=True, slots=True)
class Collection:
    """A list of records per incident; natural is the time field that orders it."""

    name: str
    natural: str
    fields: Mapping[str, FieldSpec]
    items: Callable[[IncidentData], Sequence[Any]]

    def natural_time(self, record: Any) -> datetime:
        """Return the record's natural time."""
        value: datetime = as_utc(getattr(record, self.natural))  # type: ignore[assignment]
        return value


D, S, N = Type.DATETIME, Type.STRING, Type.NUMBER
COLLECTIONS: Mapping[str, Collection] = {
    c.name: c
    for c in (
        Collection("alerts", "issue_time", _fields(issue_time=D, source=S), lambda d: d.alerts),
        Collection(
            "timeline",
            "occurred_at",
            _fields(kind=S, phase=S, occurred_at=D, note=S),
            lambda d: d.timeline,
        ),
        Collection(
            "milestones",
            "committed_eta",
            _fields(name=S, committed_eta=D, delivered_at=D),
            lambda d: d.milestones,
        ),
        Collection(
            "surveys", "submitted_at", _fields(score=N, submitted_at=D), lambda d: d.surveys
        ),
    )
}

INCIDENT_FIELDS: Mapping[str, FieldSpec] = {
    **_fields(detected_at=D, resolved_at=D),
    "severity": FieldSpec("severity", S, lambda incident: incident.severity.value),
}
