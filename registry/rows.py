"""Rows -> records: the column lists and mappers every reader of a table shares, written once.

The services (kpis, incidents, observations) and the computation (compute, setbased) all read
the same rows; keeping their shapes here lets each import this module instead of each other.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from registry import targets, validate
from registry.model import (
    Alert,
    Definition,
    Incident,
    KpiStatus,
    Milestone,
    Severity,
    SurveyResponse,
    Target,
    TimelineEvent,
    Visibility,
)

# The source of the observations the service computes (registry/compute.py); no ingest may use it.
COMPUTED = "computed"
# A formula over recorded facts is exact; confidence is for estimates a worker ingests.
COMPUTED_CONFIDENCE = 1.0

# Every column of a definition, in table order; reads name the ones they need.
DEFINITION_COLUMNS = (
    "slug",
    "name",
    "description",
    "formula",
    "expression",
    "units",
    "targets",
    "data_sources",
    "visibility",
    "owner",
    "review_cadence",
    "status",
    "last_reviewed_at",
    "version",
    "created_at",
    "updated_at",
)


_DEFINITION_COLUMN_SET = frozenset(DEFINITION_COLUMNS)


def checked_columns(columns: Sequence[str]) -> Sequence[str]:
    """Return `columns` once each is known to be a definition column (they become SQL text)."""
    unknown = set(columns) - _DEFINITION_COLUMN_SET
    if unknown:
        raise ValueError(f"not definition columns: {sorted(unknown)}")
    return columns


def definition_from_row(row: Mapping[str, Any]) -> Definition:
    """Return the definition in a row holding every definition column."""
    reviewed = row["last_reviewed_at"]
    return Definition(
        slug=row["slug"],
        name=row["name"],
        description=row["description"],
        formula=row["formula"],
        expression=row["expression"],
        units=row["units"],
        targets=target_list(row["targets"]),
        data_sources=string_tuple(row["data_sources"]),
        visibility=Visibility(row["visibility"]),
        owner=row["owner"],
        review_cadence=row["review_cadence"],
        status=KpiStatus(row["status"]),
        last_reviewed_at=reviewed,
        review_due_at=review_due(reviewed, row["created_at"], row["review_cadence"]),
        version=row["version"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        row=row,
    )


def json_list(stored: str | list[Any] | None) -> list[Any]:
    """Return a JSON list column's value, whether the driver decoded it or not."""
    if stored is None:
        return []
    return json.loads(stored) if isinstance(stored, str) else stored


def target_list(stored: str | list[Any] | None) -> tuple[Target, ...]:
    """Return the targets a definition row stores."""
    if isinstance(stored, str):
        return _targets_of(stored)
    return tuple(targets.from_json(t) for t in json_list(stored))


@lru_cache(maxsize=1024)
def _targets_of(stored: str) -> tuple[Target, ...]:
    # Every read of a definition decodes its targets; a stored text always decodes the same.
    return tuple(targets.from_json(t) for t in json.loads(stored))


@lru_cache(maxsize=1024)
def _strings_of(stored: str) -> tuple[str, ...]:
    return tuple(json.loads(stored))


def string_tuple(stored: str | list[Any] | None) -> tuple[str, ...]:
    """Return a JSON list-of-strings column's value as a tuple."""
    return _strings_of(stored) if isinstance(stored, str) else tuple(json_list(stored))


REVIEW_DUE_COLUMNS = ("last_reviewed_at", "created_at", "review_cadence")


def review_due(last_reviewed_at: datetime | None, created_at: datetime, cadence: str) -> datetime:
    """Return when a definition is next due for review."""
    return validate.add_duration(last_reviewed_at or created_at, cadence)


def review_overdue(last_reviewed_at: datetime | None, created_at: datetime, cadence: str) -> bool:
    """Return whether a definition's review is past due now."""
    return review_due(last_reviewed_at, created_at, cadence) < datetime.now(UTC)


# The incident columns, in table order.
INCIDENT_COLUMN_NAMES = ("id", "key", "title", "severity", "detected_at", "resolved_at")

INCIDENT_COLUMNS = ", ".join(INCIDENT_COLUMN_NAMES)


def incident_from_row(row: Mapping[str, Any]) -> Incident:
    """Return the incident in a row of INCIDENT_COLUMN_NAMES."""
    return Incident(
        pk=row["id"],
        key=row["key"],
        title=row["title"],
        severity=Severity(row["severity"]),
        detected_at=row["detected_at"],
        resolved_at=row["resolved_at"],
        row=row,
    )


def alert_from_row(row: Mapping[str, Any]) -> Alert:
    return Alert(
        pk=row["id"],
        incident_pk=row["incident"],
        issue_time=row["issue_time"],
        source=row["source"],
        row=row,
    )


def event_from_row(row: Mapping[str, Any]) -> TimelineEvent:
    return TimelineEvent(
        incident_pk=row["incident"],
        kind=row["kind"],
        phase=row["phase"],
        occurred_at=row["occurred_at"],
        note=row["note"],
        row=row,
    )


def milestone_from_row(row: Mapping[str, Any]) -> Milestone:
    return Milestone(
        incident_pk=row["incident"],
        name=row["name"],
        committed_eta=row["committed_eta"],
        delivered_at=row["delivered_at"],
        row=row,
    )


def survey_from_row(row: Mapping[str, Any]) -> SurveyResponse:
    return SurveyResponse(
        incident_pk=row["incident"], score=row["score"], submitted_at=row["submitted_at"], row=row
    )


# An incident's collections, as formulas name them, and the record each row becomes.
CHILD_RECORDS: dict[str, Callable[[Mapping[str, Any]], Any]] = {
    "alerts": alert_from_row,
    "timeline": event_from_row,
    "milestones": milestone_from_row,
    "surveys": survey_from_row,
}


def definition_of(row: Mapping[str, Any], prefix: str = "") -> Definition:
    """Return the definition in a row holding every definition column (named with a prefix)."""
    if not prefix:
        return definition_from_row(row)
    return definition_from_row({name: row[prefix + name] for name in DEFINITION_COLUMNS})
