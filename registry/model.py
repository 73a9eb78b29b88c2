"""The domain's value types: enums and the records services return."""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple, Protocol

# The largest magnitude a KPI value or target threshold may have. A trillion is far beyond any
# duration, count or score an incident KPI measures, and a sum of such values cannot overflow a
# double (it would take 10^296 of them), so every aggregate of stored values stays finite.
MAX_VALUE = 1e12


class Visibility(enum.Enum):
    INTERNAL = "internal"
    EXEC = "exec"


class Persona(enum.Enum):
    EXEC = "exec"
    STAKEHOLDER = "stakeholder"
    RESPONDER = "responder"
    INGEST = "ingest"
    ADMIN = "admin"


class KpiStatus(enum.Enum):
    """ACTIVE: computed, ingested, listed. RETIRED: kept with its history, answered by slug."""

    ACTIVE = "active"
    RETIRED = "retired"


class Severity(enum.Enum):
    P1 = "P1"
    P2 = "P2"
    P3 = "P3"
    P4 = "P4"


class Comparison(enum.Enum):
    """AT_MOST: lower is better (MTTR <= 120). AT_LEAST: higher is better (adherence >= 90)."""

    AT_MOST = "AT_MOST"
    AT_LEAST = "AT_LEAST"


@dataclass(frozen=True, slots=True)
class Viewer:
    """Who asks: the subject a token names and the personas it proves. Every read takes one."""

    subject: str
    personas: frozenset[Persona]


# Who a request is before a token proves otherwise: denied everything by the policy.
ANONYMOUS = Viewer(subject="", personas=frozenset())


@dataclass(frozen=True, slots=True)
class Target:
    comparison: Comparison
    threshold: float
    severity: Severity | None = None
    persona: Persona | None = None

    def met_by(self, value: float) -> bool:
        """Return whether a value meets this target."""
        if self.comparison is Comparison.AT_MOST:
            return value <= self.threshold
        return value >= self.threshold


class KpiScope(Protocol):
    """What a summary or a series needs of its KPI (a Definition has it, or a row's parts)."""

    @property
    def slug(self) -> str: ...
    @property
    def targets(self) -> Sequence[Target]: ...
    @property
    def created_at(self) -> datetime: ...


class KpiRef(NamedTuple):
    """A KpiScope made of a definition row's parts."""

    slug: str
    targets: Sequence[Target]
    created_at: datetime


@dataclass(frozen=True, slots=True)
class Definition:
    slug: str
    name: str
    description: str
    formula: str
    expression: str | None
    units: str
    targets: tuple[Target, ...]
    data_sources: tuple[str, ...]
    visibility: Visibility
    owner: str
    review_cadence: str
    status: KpiStatus
    last_reviewed_at: datetime | None
    review_due_at: datetime | None
    version: int
    created_at: datetime
    updated_at: datetime
    # The row it was read from, as the driver returned it: GraphQL fields declared on the row
    # (schema/fields.py) read it, so the executor, the compiled plans and REST agree.
    row: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class FieldChange:
    field: str
    before: str | None
    after: str | None


@dataclass(frozen=True, slots=True)
class Revision:
    version: int
    changed_at: datetime
    changed_by: str
    note: str | None
    changes: tuple[FieldChange, ...] = field(default_factory=tuple)


@dataclass(frozen=True, slots=True)
class Incident:
    pk: int
    key: str
    title: str
    severity: Severity
    detected_at: datetime
    resolved_at: datetime | None
    # The row it was read from (see Definition.row).
    row: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class Alert:
    pk: int
    incident_pk: int
    issue_time: datetime
    source: str | None
    row: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class TimelineEvent:
    incident_pk: int
    kind: str
    phase: str | None
    occurred_at: datetime
    note: str | None
    row: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class Milestone:
    incident_pk: int
    name: str
    committed_eta: datetime
    delivered_at: datetime | None
    row: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class SurveyResponse:
    incident_pk: int
    score: int
    submitted_at: datetime
    row: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class Observation:
    kpi_slug: str
    incident_pk: int
    timestamp: datetime
    value: float
    source: str
    confidence: float
    definition_version: int | None
    # The row it was read from (see Definition.row).
    row: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class Summary:
    count: int
    value: float | None
    target: Target | None
    meets_target: bool | None
    as_of: datetime  # when the observations it summarises last changed


class RecomputeState(enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class Recompute:
    """A KPI's recompute job: how far it has got, and how it ended."""

    kpi: str
    version: int
    state: RecomputeState
    done: int
    total: int
    written: int
    skipped: int
    queued_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    error: str | None
