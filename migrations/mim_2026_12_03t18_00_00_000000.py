"""Automatic persisted queries: documents by their SHA-256, kept for every worker and host."""

from piccolo.apps.migrations.auto.migration_manager import MigrationManager
from piccolo.engine.finder import engine_finder

ID = "2026-12-03T18:00:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "Create the persisted_query table"

CREATE = (
    "CREATE TABLE IF NOT EXISTS persisted_query ("
    "hash VARCHAR(64) PRIMARY KEY, document TEXT NOT NULL, used_at TIMESTAMPTZ NOT NULL)"
)
INDEX = "CREATE INDEX IF NOT EXISTS persisted_query_used_at ON persisted_query (used_at)"


async def forwards() -> MigrationManager:
    manager = MigrationManager(migration_id=ID, app_name="mim", description=DESCRIPTION)

    async def create() -> None:
        db = engine_finder()
        assert db is not None
        await db.run_ddl(CREATE)
        await db.run_ddl(INDEX)

    async def drop() -> None:
        db = engine_finder()
        assert db is not None
        await db.run_ddl("DROP TABLE IF EXISTS persisted_query")

    manager.add_raw(create)
    manager.add_raw_backwards(drop)
    return manager
