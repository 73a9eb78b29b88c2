"""Rollup sums kept exactly: `kpi_rollup.residue` holds what the double `total` cannot.

A sum kept by adding and subtracting doubles keeps the rounding of every value taken away (after
1e12 and 0.1 lose the 1e12, the mean read 0.0999755859375). The triggers now keep each group's
sum as a double-double (`total` + `residue`) with error-free additions, and the rollups are
rebuilt from the observations. A database made after this migration's statements were written
already has the column (the 11:00 migration creates the table as registry/rollups.py says).
"""

from piccolo.apps.migrations.auto.migration_manager import MigrationManager
from piccolo.engine.finder import engine_finder

from registry import rollups

ID = "2026-12-03T14:30:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "Keep rollup sums exactly (total + residue) and rebuild them"


async def forwards() -> MigrationManager:
    manager = MigrationManager(migration_id=ID, app_name="mim", description=DESCRIPTION)

    async def upgrade() -> None:
        db = engine_finder()
        assert db is not None
        engine = "sqlite" if db.engine_type == "sqlite" else "postgres"
        for statement in rollups.DROP[engine]:
            if not statement.startswith("DROP TABLE"):
                await db.run_ddl(statement)
        if engine == "postgres":
            await db.run_ddl(
                "ALTER TABLE kpi_rollup ADD COLUMN IF NOT EXISTS residue double precision "
                "NOT NULL DEFAULT 0"
            )
        else:
            columns = await db.run_ddl("PRAGMA table_info(kpi_rollup)")
            if not any(column["name"] == "residue" for column in columns):
                await db.run_ddl(
                    "ALTER TABLE kpi_rollup ADD COLUMN residue DOUBLE PRECISION NOT NULL DEFAULT 0"
                )
        for statement in rollups.triggers(engine):
            await db.run_ddl(statement)
        for query in rollups.rebuilding():
            await db.run_querystring(query)

    manager.add_raw(upgrade)
    # Backwards leaves the column and the triggers: the 11:00 migration's backwards drops them.
    return manager
