"""Liveness and readiness."""

from __future__ import annotations

import importlib.util
import logging
from functools import cache
from pathlib import Path

from aiohttp import web

from registry import db
from registry.piccolo_app import APP_CONFIG

log = logging.getLogger("mim.health")


@cache
def expected_migrations() -> frozenset[str]:
    """Return the IDs of every migration the code ships."""
    ids = set()
    for path in Path(APP_CONFIG.resolved_migrations_folder_path).glob("mim_*.py"):
        spec = importlib.util.spec_from_file_location(f"_mim_migration_{path.stem}", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        ids.add(module.ID)
    return frozenset(ids)


async def pending_migrations() -> set[str]:
    """Return the shipped migrations the database has not run."""
    rows = await db.engine().run_ddl("SELECT name FROM migration WHERE app_name = 'mim'")
    return set(expected_migrations()) - {row["name"] for row in rows}


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    try:
        pending = await pending_migrations()
    except Exception as error:  # any database failure means "not ready", with the reason logged
        log.warning("readiness check failed: %s", type(error).__name__)
        return web.json_response({"status": "unavailable", "database": "unreachable"}, status=503)
    if pending:
        return web.json_response(
            {"status": "unavailable", "database": "migrations pending", "pending": sorted(pending)},
            status=503,
        )
    return web.json_response({"status": "ok", "database": "ready"})
