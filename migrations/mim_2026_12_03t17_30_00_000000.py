"""KPI retirement: kpi_definition.status, `active` for every definition there is."""

from piccolo.apps.migrations.auto.migration_manager import MigrationManager
from piccolo.engine.finder import engine_finder

ID = "2026-12-03T17:30:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "Add kpi_definition.status"


async def forwards() -> MigrationManager:
    manager = MigrationManager(migration_id=ID, app_name="mim", description=DESCRIPTION)

    async def add() -> None:
        db = engine_finder()
        assert db is not None
        await db.run_ddl(
            "ALTER TABLE kpi_definition ADD COLUMN status VARCHAR(16) NOT NULL DEFAULT 'active'"
        )

    async def drop() -> None:
        db = engine_finder()
        assert db is not None
        await db.run_ddl("ALTER TABLE kpi_definition DROP COLUMN status")

    manager.add_raw(add)
    manager.add_raw_backwards(drop)
    return manager
