"""Piccolo's configuration: the engine named by DATABASE_URL, and the project's one app."""

import os

from piccolo.conf.apps import AppRegistry

from registry.db import engine_from_url

DB = engine_from_url(os.environ.get("DATABASE_URL", "sqlite:///mim.sqlite3"))

APP_REGISTRY = AppRegistry(apps=["registry.piccolo_app"])
