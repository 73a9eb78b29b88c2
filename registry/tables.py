"""Piccolo tables. Composite unique constraints live in the migrations."""

from __future__ import annotations

from piccolo.columns import (
    JSON,
    BigInt,
    BigSerial,
    DoublePrecision,
    ForeignKey,
    Integer,
    OnDelete,
    Serial,
    Text,
    Timestamptz,
    Varchar,
)
from piccolo.table import Table


class KpiDefinition(Table, tablename="kpi_definition"):
    slug = Varchar(length=64, primary_key=True)
    name = Varchar(length=200)
    description = Text()
    formula = Text()
    expression = Text(null=True, default=None)
    units = Varchar(length=64)
    targets = JSON(default="[]")
    data_sources = JSON(default="[]")
    visibility = Varchar(length=16, index=True)
    owner = Varchar(length=200)
    review_cadence = Varchar(length=64)
    status = Varchar(length=16, default="active")  # active or retired
    last_reviewed_at = Timestamptz(null=True, default=None)
    version = Integer(default=1)
    created_at = Timestamptz()
    updated_at = Timestamptz()


class KpiRevision(Table, tablename="kpi_revision"):
    id = Serial(primary_key=True)
    kpi = ForeignKey(KpiDefinition, on_delete=OnDelete.cascade, null=False, index=True)
    version = Integer()
    changed_at = Timestamptz()
    changed_by = Varchar(length=200)
    note = Text(null=True, default=None)
    changes = JSON(default="[]")


class Incident(Table, tablename="incident"):
    id = Serial(primary_key=True)
    key = Varchar(length=64, unique=True)
    title = Varchar(length=500)
    severity = Varchar(length=2, index=True)
    detected_at = Timestamptz(index=True)
    resolved_at = Timestamptz(null=True, default=None)


class Alert(Table, tablename="alert"):
    id = Serial(primary_key=True)
    incident = ForeignKey(Incident, on_delete=OnDelete.cascade, null=False, index=True)
    issue_time = Timestamptz()
    source = Varchar(length=200, null=True, default=None)


class TimelineEvent(Table, tablename="timeline_event"):
    id = Serial(primary_key=True)
    incident = ForeignKey(Incident, on_delete=OnDelete.cascade, null=False, index=True)
    kind = Varchar(length=64)
    phase = Varchar(length=64, null=True, default=None)
    occurred_at = Timestamptz()
    note = Text(null=True, default=None)


class Milestone(Table, tablename="milestone"):
    id = Serial(primary_key=True)
    incident = ForeignKey(Incident, on_delete=OnDelete.cascade, null=False, index=True)
    name = Varchar(length=200)
    committed_eta = Timestamptz()
    delivered_at = Timestamptz(null=True, default=None)


class SurveyResponse(Table, tablename="survey_response"):
    id = Serial(primary_key=True)
    incident = ForeignKey(Incident, on_delete=OnDelete.cascade, null=False, index=True)
    score = Integer()
    submitted_at = Timestamptz()


class KpiObservation(Table, tablename="kpi_observation"):
    id = Serial(primary_key=True)
    kpi = ForeignKey(KpiDefinition, on_delete=OnDelete.restrict, null=False, index=True)
    incident = ForeignKey(Incident, on_delete=OnDelete.cascade, null=False, index=True)
    timestamp = Timestamptz()
    value = DoublePrecision()
    source = Varchar(length=64)
    confidence = DoublePrecision(default=1.0)
    definition_version = Integer(null=True, default=None)
    recorded_at = Timestamptz()


class KpiRecompute(Table, tablename="kpi_recompute"):
    """One KPI's recompute job: its state, progress, and the lease of the runner that holds it."""

    kpi = Varchar(length=64, primary_key=True)
    version = Integer()  # the definition version that queued it
    state = Varchar(length=16)
    done = Integer(default=0)  # incidents scanned so far
    total = Integer(default=0)
    written = Integer(default=0)
    skipped = Integer(default=0)
    after_incident = Integer(default=0)  # the last incident id of the last committed batch
    queued_at = Timestamptz()
    started_at = Timestamptz(null=True, default=None)
    finished_at = Timestamptz(null=True, default=None)
    error = Text(null=True, default=None)
    runner = Varchar(length=128, null=True, default=None)
    lease_until = Timestamptz(null=True, default=None)


class KpiRollup(Table, tablename="kpi_rollup"):
    """Observations' count and sum per KPI, severity and day, week or month (registry/rollups.py).

    Created and kept by the database (its triggers); the service only reads it.
    """

    id = BigSerial(primary_key=True)
    kpi = Varchar(length=64)
    grain = Varchar(length=1)  # D, W or M
    severity = Varchar(length=2)
    start = Timestamptz()
    n = BigInt(default=0)  # observations
    total = DoublePrecision(default=0.0)
    stamp = BigInt(default=1)
    changed_at = Timestamptz()


TABLES: list[type[Table]] = [
    KpiDefinition,
    KpiRevision,
    Incident,
    Alert,
    TimelineEvent,
    Milestone,
    SurveyResponse,
    # Before the observations: emptying the tables in reverse order empties it last.
    KpiRollup,
    KpiObservation,
    KpiRecompute,
]


class ServiceKey(Table, tablename="service_key"):
    """Keys the service makes for itself, one per use (registry/opaque.py), shared by every worker.

    Not in TABLES: no domain data, never emptied or exported with it.
    """

    name = Varchar(length=64, primary_key=True)
    secret = Text()
    created_at = Timestamptz()


class PersistedQuery(Table, tablename="persisted_query"):
    """A GraphQL document by its SHA-256 (registry/persisted.py); not domain data, not in TABLES."""

    hash = Varchar(length=64, primary_key=True)
    document = Text()
    used_at = Timestamptz(index=True)


class PageSession(Table, tablename="page_session"):
    """A sign-in to the pages (registry/sessions.py), by the SHA-256 of its random id; not in
    TABLES. It keeps who signed in, never the token."""

    id_hash = Varchar(length=64, primary_key=True)
    subject = Varchar(length=255)
    personas = Varchar(length=255)
    csrf = Varchar(length=64)
    created_at = Timestamptz()
    expires_at = Timestamptz(index=True)
