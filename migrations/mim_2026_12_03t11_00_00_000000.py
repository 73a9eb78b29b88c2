"""Rollups of observations per KPI, severity and day, week or month, kept by triggers.

The statements are registry/rollups.py's; a change to them comes with a migration of its own
that replaces the table's triggers.
"""

from piccolo.apps.migrations.auto.migration_manager import MigrationManager
from piccolo.engine.finder import engine_finder

from registry import rollups

ID = "2026-12-03T11:00:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "Create kpi_rollup, its triggers, and build it from the observations there are"


async def forwards() -> MigrationManager:
    manager = MigrationManager(migration_id=ID, app_name="mim", description=DESCRIPTION)

    async def create() -> None:
        db = engine_finder()
        assert db is not None
        engine = "sqlite" if db.engine_type == "sqlite" else "postgres"
        for statement in [rollups.TABLE[engine], rollups.INDEX, *rollups.triggers(engine)]:
            await db.run_ddl(statement)
        for query in rollups.rebuilding():
            await db.run_querystring(query)

    async def drop() -> None:
        db = engine_finder()
        assert db is not None
        engine = "sqlite" if db.engine_type == "sqlite" else "postgres"
        for statement in rollups.DROP[engine]:
            await db.run_ddl(statement)

    manager.add_raw(create)
    manager.add_raw_backwards(drop)
    return manager
