"""Sign-in sessions of the pages under /ui/, kept for every worker."""

from piccolo.apps.migrations.auto.migration_manager import MigrationManager
from piccolo.engine.finder import engine_finder

ID = "2026-12-03T19:00:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "Create the page_session table"

CREATE = (
    "CREATE TABLE IF NOT EXISTS page_session ("
    "id_hash VARCHAR(64) PRIMARY KEY, subject VARCHAR(255) NOT NULL,"
    " personas VARCHAR(255) NOT NULL, csrf VARCHAR(64) NOT NULL,"
    " created_at TIMESTAMPTZ NOT NULL, expires_at TIMESTAMPTZ NOT NULL)"
)
INDEX = "CREATE INDEX IF NOT EXISTS page_session_expires_at ON page_session (expires_at)"


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
        await db.run_ddl("DROP TABLE IF EXISTS page_session")

    manager.add_raw(create)
    manager.add_raw_backwards(drop)
    return manager
