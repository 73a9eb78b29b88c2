"""`mim migrate`: Piccolo's forward migrations, one process at a time, never on a newer database.

Processes that start together (a deploy's replicas) take turns under a lock: the first migrates,
the others wait, then find nothing to do. A database that records a migration this code does not
ship was migrated by a newer release; it is refused before anything runs.
"""

from __future__ import annotations

import asyncio
import fcntl
import sqlite3
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import asyncpg
from piccolo.apps.migrations.commands.base import BaseMigrationManager
from piccolo.apps.migrations.commands.forwards import run_forwards
from piccolo.engine.postgres import PostgresEngine
from piccolo.engine.sqlite import SQLiteEngine

from registry import db
from registry.errors import AppError
from registry.piccolo_app import APP_CONFIG

APP = "mim"
# The PostgreSQL advisory lock every `mim migrate` takes: "mim:migr" read as a bigint.
LOCK_KEY = int.from_bytes(b"mim:migr", "big")
# What the database raises when it refuses a statement or cannot be reached.
DATABASE_ERRORS = (sqlite3.Error, asyncpg.PostgresError, OSError)
# Seconds between tries of a SQLite migration lock held by another process.
LOCK_POLL = 0.1


class MigrateError(AppError):
    """`mim migrate` cannot go on; the message says why and what to do."""


def shipped() -> frozenset[str]:
    """Return the IDs of the migrations this code ships, found as run_forwards finds them."""
    folder = APP_CONFIG.resolved_migrations_folder_path
    return frozenset(BaseMigrationManager().get_migration_modules(folder))


async def applied() -> set[str]:
    """Return the IDs of the migrations the database records (none before its first)."""
    if db.is_sqlite():
        sql = "SELECT count(*) > 0 AS found FROM sqlite_master WHERE name = 'migration'"
    else:
        sql = "SELECT to_regclass('migration') IS NOT NULL AS found"
    if not (await db.fetch(sql, []))[0]["found"]:
        return set()
    s = db.statement()
    rows = await db.fetch(f"SELECT name FROM migration WHERE app_name = {s.arg(APP)}", s.args)
    return {row["name"] for row in rows}


async def migrate(*, waiting: Callable[[], None] = lambda: None) -> list[str]:
    """Apply the shipped migrations the database lacks, under the migration lock; return their
    IDs. `waiting` is called once if another process holds the lock."""
    ours = shipped()
    async with lock(waiting):
        done = await applied()
        unknown = done - ours
        if unknown:
            names = ", ".join(sorted(unknown))
            raise MigrateError(
                f"the database has migrations this release does not know ({names}): it was "
                "migrated by a newer mim; run that release or newer"
            )
        pending = sorted(ours - done)
        if not pending:
            return []
        try:
            result = await run_forwards(app_name=APP)
        except DATABASE_ERRORS as error:
            # Each migration runs in its own transaction: the one that failed left nothing.
            raise MigrateError(
                f"migration {await _first_missing(pending)} failed ({type(error).__name__}: "
                f"{error}); it and the ones after it are not applied, the ones before it are"
            ) from None
        if not result.success:
            raise MigrateError(f"migrations failed: {result.message}")
        return pending


async def _first_missing(pending: list[str]) -> str:
    """Return the first of `pending` the database still lacks: the one that failed."""
    try:
        done = await applied()
    except DATABASE_ERRORS:
        return "(unknown: the database cannot say)"
    return next((m for m in pending if m not in done), "(unknown: every one is recorded)")


@asynccontextmanager
async def lock(waiting: Callable[[], None]) -> AsyncIterator[None]:
    """Hold the migration lock of the configured database."""
    engine = db.engine()
    if isinstance(engine, PostgresEngine):
        async with _advisory_lock(engine, waiting):
            yield
    else:
        assert isinstance(engine, SQLiteEngine)
        async with _file_lock(lock_file(engine.path), waiting):
            yield


@asynccontextmanager
async def _advisory_lock(
    engine: PostgresEngine, waiting: Callable[[], None]
) -> AsyncIterator[None]:
    # A session-level lock on a connection of its own: Piccolo runs each migration on other
    # connections (one per transaction), which the lock does not block; other `mim migrate`s wait.
    try:
        connection = await engine.get_new_connection()
    except DATABASE_ERRORS as error:
        raise MigrateError(f"cannot connect to the database: {error}") from None
    try:
        if not await connection.fetchval("SELECT pg_try_advisory_lock($1)", LOCK_KEY):
            waiting()
            await connection.execute("SELECT pg_advisory_lock($1)", LOCK_KEY)
        try:
            yield
        finally:
            await connection.execute("SELECT pg_advisory_unlock($1)", LOCK_KEY)
    finally:
        await connection.close()


def lock_file(database_path: str) -> str:
    """Return the path of the file that SQLite's migration lock is taken on."""
    return f"{database_path}.migrate-lock"


@asynccontextmanager
async def _file_lock(path: str, waiting: Callable[[], None]) -> AsyncIterator[None]:
    # Not a lock inside the database: Piccolo's SQLite engine opens a connection per statement
    # and per transaction, so an exclusive transaction held on a connection of ours would make
    # Piccolo's own writes wait for it until their busy timeout. A lock on a file next to the
    # database orders the `mim migrate` processes alone, whatever connections each opens. The
    # file stays: removing it would let a process lock a file another has just unlinked.
    try:
        handle = open(path, "a")  # noqa: SIM115 (closed below, after the lock is let go)
    except OSError as error:
        raise MigrateError(f"cannot open the migration lock {path}: {error}") from None
    try:
        if not _try_lock(handle.fileno()):
            waiting()
            # Polled rather than blocking: a blocked flock would not give way to Ctrl-C.
            while not _try_lock(handle.fileno()):
                await asyncio.sleep(LOCK_POLL)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
    finally:
        handle.close()


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True
