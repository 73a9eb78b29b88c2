"""Recompute jobs: one row per KPI with its state, progress and the lease of its runner."""

from typing import Any

from piccolo.apps.migrations.auto.migration_manager import MigrationManager
from piccolo.columns.column_types import Integer, Text, Timestamptz, Varchar
from piccolo.columns.indexes import IndexMethod

ID = "2026-12-03T08:00:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "Create the kpi_recompute table"

# (column, class, extra params); written out as `piccolo migrations new --auto` would.
COLUMNS: list[tuple[str, Any, dict[str, Any]]] = [
    ("kpi", Varchar, {"length": 64, "default": "", "null": False, "primary_key": True}),
    ("version", Integer, {"default": 0, "null": False}),
    ("state", Varchar, {"length": 16, "default": "", "null": False}),
    ("done", Integer, {"default": 0, "null": False}),
    ("total", Integer, {"default": 0, "null": False}),
    ("written", Integer, {"default": 0, "null": False}),
    ("skipped", Integer, {"default": 0, "null": False}),
    ("after_incident", Integer, {"default": 0, "null": False}),
    ("queued_at", Timestamptz, {"default": None, "null": False}),
    ("started_at", Timestamptz, {"default": None, "null": True}),
    ("finished_at", Timestamptz, {"default": None, "null": True}),
    ("error", Text, {"default": None, "null": True}),
    ("runner", Varchar, {"length": 128, "default": None, "null": True}),
    ("lease_until", Timestamptz, {"default": None, "null": True}),
]


async def forwards() -> MigrationManager:
    manager = MigrationManager(migration_id=ID, app_name="mim", description=DESCRIPTION)
    manager.add_table(
        class_name="KpiRecompute", tablename="kpi_recompute", schema=None, columns=None
    )
    for name, column_class, params in COLUMNS:
        manager.add_column(
            table_class_name="KpiRecompute",
            tablename="kpi_recompute",
            column_name=name,
            db_column_name=name,
            column_class_name=column_class.__name__,
            column_class=column_class,
            params={
                "primary_key": False,
                "unique": False,
                "index": False,
                "index_method": IndexMethod.btree,
                "choices": None,
                "db_column_name": None,
                "secret": False,
                **params,
            },
            schema=None,
        )
    return manager
