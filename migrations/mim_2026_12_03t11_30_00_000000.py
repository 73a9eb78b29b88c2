"""The data generation: a counter moved by every committed write (registry/generation.py).

The statements are registry/generation.py's; a change to them comes with a migration of its own.
"""

from piccolo.apps.migrations.auto.migration_manager import MigrationManager
from piccolo.engine.finder import engine_finder

from registry import generation

ID = "2026-12-03T11:30:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "Create mim_generation and the triggers that move it"


async def forwards() -> MigrationManager:
    manager = MigrationManager(migration_id=ID, app_name="mim", description=DESCRIPTION)

    async def create() -> None:
        db = engine_finder()
        assert db is not None
        sqlite = db.engine_type == "sqlite"
        for statement in generation.sqlite_statements() if sqlite else generation.POSTGRES:
            await db.run_ddl(statement)

    async def drop() -> None:
        db = engine_finder()
        assert db is not None
        sqlite = db.engine_type == "sqlite"
        for statement in generation.sqlite_drops() if sqlite else generation.POSTGRES_DROPS:
            await db.run_ddl(statement)

    manager.add_raw(create)
    manager.add_raw_backwards(drop)
    return manager
