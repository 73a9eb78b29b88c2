"""The seed page's four KPIs, each with its first revision."""

import json
from datetime import UTC, datetime

from piccolo.apps.migrations.auto.migration_manager import MigrationManager
from piccolo.engine.finder import engine_finder

ID = "2026-11-27T06:45:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "Seed the four KPIs of the KPI source-of-truth page"

SEEDED_BY = "migration"
NOTE = "Seeded from the KPI source-of-truth page"


def _target(comparison: str, threshold: float, severity: str | None = None) -> dict:
    return {"severity": severity, "persona": None, "comparison": comparison, "threshold": threshold}


# Frozen here on purpose: later changes to a KPI are made by mutation and recorded as revisions.
SEED = [
    {
        "slug": "mttr",
        "name": "Mean Time to Resolve",
        "description": "Average time from incident.detected_at to resolved_at.",
        "formula": "avg(resolved_at - detected_at)",
        "units": "minutes",
        "targets": [_target("AT_MOST", 120.0, "P1"), _target("AT_MOST", 240.0, "P2")],
        "data_sources": ["incident.detected_at", "incident.resolved_at"],
        "visibility": "exec",
        "owner": "Ops Leader",
        "review_cadence": "P90D",
    },
    {
        "slug": "mtta",
        "name": "Mean Time to Acknowledge",
        "description": "Average time from alert issue to first MIM action (phase 1 → 2).",
        "formula": "avg(phase_entered_at(gather) - alert.issueTime)",
        "units": "minutes",
        "targets": [_target("AT_MOST", 10.0, "P1"), _target("AT_MOST", 20.0, "P2")],
        "data_sources": ["alert.issue_time", "timeline.phase_entered(gather)"],
        "visibility": "internal",
        "owner": "MIM Lead",
        "review_cadence": "P90D",
    },
    {
        "slug": "cadence-adherence",
        "name": "Update Cadence Adherence",
        "description": "Percent of milestones delivered on/before committed ETA.",
        "formula": "on_time_milestones / total_milestones",
        "units": "%",
        "targets": [_target("AT_LEAST", 90.0)],
        "data_sources": ["milestone.committed_eta", "milestone.delivered_at"],
        "visibility": "exec",
        "owner": "Comms Lead",
        "review_cadence": "P90D",
    },
    {
        "slug": "stakeholder-satisfaction",
        "name": "Stakeholder Signal Score",
        "description": "Rolling survey score post-incident (1–5).",  # noqa: RUF001
        "formula": "avg(survey_score)",
        "units": "score",
        "targets": [_target("AT_LEAST", 4.5)],
        "data_sources": ["survey_response.score"],
        "visibility": "exec",
        "owner": "Customer Ops",
        "review_cadence": "P180D",
    },
]

GRAPHQL_NAMES = {
    "data_sources": "dataSources",
    "review_cadence": "reviewCadence",
}


def _changes(row: dict) -> list[dict]:
    return [
        {"field": GRAPHQL_NAMES.get(name, name), "before": None, "after": json.dumps(value)}
        for name, value in row.items()
    ]


async def forwards() -> MigrationManager:
    manager = MigrationManager(migration_id=ID, app_name="mim", description=DESCRIPTION)

    async def seed() -> None:
        db = engine_finder()
        now = datetime.now(UTC)
        for row in SEED:
            await db.run_querystring(_insert_definition(row, now))
            await db.run_querystring(_insert_revision(row["slug"], now, _changes(row)))

    async def unseed() -> None:
        db = engine_finder()
        for row in SEED:
            await db.run_ddl(f"DELETE FROM kpi_definition WHERE slug = '{row['slug']}'")

    manager.add_raw(seed)
    manager.add_raw_backwards(unseed)
    return manager


def _insert_definition(row: dict, now: datetime):
    from piccolo.querystring import QueryString

    return QueryString(
        "INSERT INTO kpi_definition (slug, name, description, formula, expression, units, "
        "targets, data_sources, visibility, owner, review_cadence, last_reviewed_at, version, "
        "created_at, updated_at) VALUES ({}, {}, {}, {}, NULL, {}, {}, {}, {}, {}, {}, NULL, 1, "
        "{}, {})",
        row["slug"],
        row["name"],
        row["description"],
        row["formula"],
        row["units"],
        json.dumps(row["targets"]),
        json.dumps(row["data_sources"]),
        row["visibility"],
        row["owner"],
        row["review_cadence"],
        now,
        now,
    )


def _insert_revision(slug: str, now: datetime, changes: list[dict]):
    from piccolo.querystring import QueryString

    return QueryString(
        "INSERT INTO kpi_revision (kpi, version, changed_at, changed_by, note, changes) "
        "VALUES ({}, 1, {}, {}, {}, {})",
        slug,
        now,
        SEEDED_BY,
        NOTE,
        json.dumps(changes),
    )
