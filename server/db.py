"""Database engines and transactions for SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote, urlparse

from piccolo.engine.base import Engine
from piccolo.engine.finder import engine_finder
from piccolo.engine.postgres import PostgresEngine
from piccolo.engine.sqlite import SQLiteEngine, TransactionType

# Seconds a SQLite connection waits for a competing writer before giving up.
SQLITE_BUSY_TIMEOUT = 30.0


def sqlite_path(url: str) -> str:
    """Return the file path of a `sqlite:///relative` or `sqlite:////absolute` URL."""
    parsed = urlparse(url)
    path = unquote(parsed.path)
    if path.startswith("/"):
        path = path[1:]
    if not path or path == ":memory:":
        raise ValueError("DATABASE_URL must name a SQLite file, e.g. sqlite:///mim.sqlite3")
    return path


def engine_from_url(url: str) -> Engine:
    """Return the Piccolo engine for a `sqlite://` or `postgresql://` URL."""
    scheme = urlparse(url).scheme
    if scheme == "sqlite":
        return SQLiteEngine(path=sqlite_path(url), timeout=SQLITE_BUSY_TIMEOUT)
    if scheme in ("postgres", "postgresql"):
        return PostgresEngine(config={"dsn": url}, extensions=())
    raise ValueError(f"unsupported DATABASE_URL scheme {scheme!r}: use sqlite:// or postgresql://")


def engine() -> Engine:
    """Return the configured engine."""
    found = engine_finder()
    if found is None:
        raise RuntimeError("piccolo_conf.DB is not configured")
    return found


def is_sqlite() -> bool:
    """Return whether the configured engine is SQLite."""
    return engine().engine_type == "sqlite"


def transaction() -> Any:
    """Return a write transaction: IMMEDIATE on SQLite so writers queue instead of deadlocking."""
    db = engine()
    if isinstance(db, SQLiteEngine):
        return db.transaction(transaction_type=TransactionType.immediate)
    return db.transaction()


async def open_engine() -> None:
    """Prepare the engine for serving: WAL on SQLite, a connection pool on PostgreSQL."""
    db = engine()
    if isinstance(db, SQLiteEngine):
        # WAL lets readers proceed while one writer commits; the mode persists in the file.
        await db.run_ddl("PRAGMA journal_mode=WAL")
    elif isinstance(db, PostgresEngine):
        await db.start_connection_pool(min_size=1, max_size=10)


async def close_engine() -> None:
    """Release what open_engine() took."""
    db = engine()
    if isinstance(db, PostgresEngine):
        await db.close_connection_pool()
