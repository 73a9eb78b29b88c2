"""Constraints and indexes that Piccolo table classes cannot declare."""

from piccolo.apps.migrations.auto.migration_manager import MigrationManager
from piccolo.engine.finder import engine_finder

ID = "2026-11-27T06:40:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "Unique keys for observations, revisions and milestones; paging indexes"

STATEMENTS = [
    # The seed page's determinism rule: one observation per (kpi, incident, timestamp).
    "CREATE UNIQUE INDEX kpi_observation_key ON kpi_observation (kpi, incident, timestamp)",
    "CREATE INDEX kpi_observation_kpi_timestamp ON kpi_observation (kpi, timestamp)",
    "CREATE UNIQUE INDEX kpi_revision_kpi_version ON kpi_revision (kpi, version)",
    "CREATE UNIQUE INDEX milestone_incident_name ON milestone (incident, name)",
    # Incidents page newest first, with the row id as tie-breaker.
    "CREATE INDEX incident_page ON incident (detected_at DESC, id DESC)",
    "CREATE INDEX incident_severity_page ON incident (severity, detected_at DESC, id DESC)",
    "CREATE INDEX alert_incident_issue_time ON alert (incident, issue_time)",
    "CREATE INDEX timeline_event_incident_occurred_at ON timeline_event (incident, occurred_at)",
]

DROP = [
    "DROP INDEX IF EXISTS kpi_observation_key",
    "DROP INDEX IF EXISTS kpi_observation_kpi_timestamp",
    "DROP INDEX IF EXISTS kpi_revision_kpi_version",
    "DROP INDEX IF EXISTS milestone_incident_name",
    "DROP INDEX IF EXISTS incident_page",
    "DROP INDEX IF EXISTS incident_severity_page",
    "DROP INDEX IF EXISTS alert_incident_issue_time",
    "DROP INDEX IF EXISTS timeline_event_incident_occurred_at",
]


async def forwards() -> MigrationManager:
    manager = MigrationManager(migration_id=ID, app_name="mim", description=DESCRIPTION)

    async def create() -> None:
        db = engine_finder()
        for statement in STATEMENTS:
            await db.run_ddl(statement)

    async def drop() -> None:
        db = engine_finder()
        for statement in DROP:
            await db.run_ddl(statement)

    manager.add_raw(create)
    manager.add_raw_backwards(drop)
    return manager
