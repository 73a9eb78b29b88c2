"""The seed KPIs' machine formulas, so the service computes them."""

import json
from datetime import UTC, datetime

from piccolo.apps.migrations.auto.migration_manager import MigrationManager
from piccolo.engine.finder import engine_finder
from piccolo.querystring import QueryString

ID = "2026-11-27T07:30:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "Give the four seed KPIs their expressions"

NOTE = "The service computes this KPI from incident data"

# Frozen here on purpose; later changes are made by mutation and recorded as revisions.
EXPRESSIONS = {
    "mttr": "minutes(resolved_at - detected_at)",
    "mtta": 'minutes(phase_entered_at("gather") - first(alerts.issue_time))',
    "cadence-adherence": (
        "100 * count(milestones where delivered_at <= committed_eta) / count(milestones)"
    ),
    "stakeholder-satisfaction": "avg(surveys.score)",
}


async def forwards() -> MigrationManager:
    manager = MigrationManager(migration_id=ID, app_name="mim", description=DESCRIPTION)

    async def add_expressions() -> None:
        db = engine_finder()
        now = datetime.now(UTC)
        for slug, expression in EXPRESSIONS.items():
            rows = await db.run_querystring(
                QueryString(
                    "UPDATE kpi_definition SET expression = {}, version = version + 1, "
                    "updated_at = {} WHERE slug = {} AND expression IS NULL RETURNING version",
                    expression,
                    now,
                    slug,
                )
            )
            if not rows:
                continue
            change = [{"field": "expression", "before": None, "after": json.dumps(expression)}]
            await db.run_querystring(
                QueryString(
                    "INSERT INTO kpi_revision (kpi, version, changed_at, changed_by, note, "
                    "changes) VALUES ({}, {}, {}, {}, {}, {})",
                    slug,
                    rows[0]["version"],
                    now,
                    "migration",
                    NOTE,
                    json.dumps(change),
                )
            )

    manager.add_raw(add_expressions)
    return manager
