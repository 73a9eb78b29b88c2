"""What compiled formulas run on: values paired with their as-of time, and one incident's data.

A value is (python value, as_of) or None for null. as_of is the latest timestamp among the data
the value came from, or None for a value that came from no data (a literal).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from registry.formulas.catalog import as_utc
from registry.formulas.data import IncidentData

Val = tuple[Any, datetime | None]
Evaluator = Callable[["Env", Any], Val | None]
"""Evaluators take the environment and the current collection item (None outside 'where')."""


def later(a: datetime | None, b: datetime | None) -> datetime | None:
    """Return the later of two as-of times, either of which may be absent."""
    if a is None:
        return b
    if b is None or a >= b:
        return a
    return b


class Env:
    """One evaluation: the incident's data and what is worth computing only once."""

    __slots__ = ("_phases", "data", "detected_at")

    def __init__(self, data: IncidentData) -> None:
        self.data = data
        self.detected_at = as_utc(data.incident.detected_at)
        self._phases: dict[str | None, datetime] | None = None

    def phase_entered_at(self, phase: str) -> datetime | None:
        """Return when the timeline first entered phase, or None if it never did."""
        if self._phases is None:
            self._phases = _first_by_phase(self.data)
        return self._phases.get(phase)


def _first_by_phase(data: IncidentData) -> dict[str | None, datetime]:
    """Return the earliest occurred_at for every phase in the timeline."""
    first: dict[str | None, datetime] = {}
    for event in data.timeline:
        at = as_utc(event.occurred_at)
        if at is not None and (event.phase not in first or at < first[event.phase]):
            first[event.phase] = at
    return first
