"""The service's own keys (registry/opaque.py seals public ids with one), made on first use."""

from piccolo.apps.migrations.auto.migration_manager import MigrationManager
from piccolo.engine.finder import engine_finder

ID = "2026-12-03T17:00:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "Create the service_key table"

CREATE = (
    "CREATE TABLE IF NOT EXISTS service_key ("
    "name VARCHAR(64) PRIMARY KEY, secret TEXT NOT NULL, created_at TIMESTAMPTZ NOT NULL)"
)


async def forwards() -> MigrationManager:
    manager = MigrationManager(migration_id=ID, app_name="mim", description=DESCRIPTION)

    async def create() -> None:
        db = engine_finder()
        assert db is not None
        await db.run_ddl(CREATE)

    async def drop() -> None:
        db = engine_finder()
        assert db is not None
        await db.run_ddl("DROP TABLE IF EXISTS service_key")

    manager.add_raw(create)
    manager.add_raw_backwards(drop)
    return manager
