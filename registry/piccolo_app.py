"""The Piccolo app: tables and the top-level migrations folder."""

from pathlib import Path

from piccolo.conf.apps import AppConfig

from registry.tables import TABLES

APP_CONFIG = AppConfig(
    app_name="mim",
    migrations_folder_path=str(Path(__file__).resolve().parent.parent / "migrations"),
    table_classes=TABLES,
    migration_dependencies=[],
    commands=[],
)
