"""What a formula reads (one incident and its records) and what it returns."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from registry import model


@dataclass(frozen=True, slots=True)
class IncidentData:
    incident: model.Incident
    alerts: Sequence[model.Alert]
    timeline: Sequence[model.TimelineEvent]
    milestones: Sequence[model.Milestone]
    surveys: Sequence[model.SurveyResponse]


@dataclass(frozen=True, slots=True)
class Result:
    """A finite value, as of the latest timestamp among the data it was computed from."""

    value: float
    as_of: datetime
