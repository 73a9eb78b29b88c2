"""Database engines and transactions for SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable, Mapping, Sequence
from contextvars import ContextVar
from functools import cache
from typing import Any
from urllib.parse import unquote, urlparse

import aiosqlite
import asyncpg
from piccolo.engine.base import Engine
from piccolo.engine.finder import engine_finder
from piccolo.engine.postgres import PostgresEngine
from piccolo.engine.sqlite import SQLiteEngine, TransactionType, dict_factory

# Seconds a SQLite connection waits for a competing writer before giving up.
SQLITE_BUSY_TIMEOUT = 30.0
# Seconds to wait for a new PostgreSQL connection before calling the database unavailable.
CONNECT_TIMEOUT = 5.0


def sqlite_path(url: str) -> str:
    """Return the file path of a `sqlite:///relative` or `sqlite:////absolute` URL."""
    parsed = urlparse(url)
    path = unquote(parsed.path)
    if path.startswith("/"):
        path = path[1:]
    if not path or path == ":memory:":
        raise ValueError("DATABASE_URL must name a SQLite file, e.g. sqlite:///mim.sqlite3")
    return path


# The monotonic time by which the current request's statements must be done (None: no limit).
# Set by the server for each request; PostgreSQL has its own statement_timeout besides.
deadline: ContextVar[float | None] = ContextVar("mim_statement_deadline", default=None)
# SQLite calls the progress handler every this many virtual machine steps (a few microseconds).
PROGRESS_STEPS = 10_000


async def guard(connection: aiosqlite.Connection) -> None:
    """Make a SQLite connection give up (`interrupted`) once the current request's time is up.

    SQLite has no statement timeout, and a cancelled request does not stop the statement its
    thread runs: the progress handler, checked as the statement runs, ends it at the deadline
    the request set, so a timed-out request stops using the database.
    """
    until = deadline.get()
    if until is None:
        return
    clock = time.monotonic
    await connection.set_progress_handler(lambda: clock() > until, PROGRESS_STEPS)


class GuardedSQLiteEngine(SQLiteEngine):
    """Piccolo's SQLite engine whose connections are guarded by the request's deadline."""

    async def get_connection(self) -> aiosqlite.Connection:
        connection = await super().get_connection()
        await guard(connection)
        return connection

    async def _run_in_new_connection(
        self,
        query: str,
        args: list[Any] | None = None,
        query_type: str = "generic",
        table: Any = None,
    ) -> Any:
        # Piccolo's own, with the guard (SQLite 3.35+ returns inserted keys with RETURNING).
        async with aiosqlite.connect(**self.connection_kwargs) as connection:
            await guard(connection)
            await connection.execute("PRAGMA foreign_keys = 1")
            connection.row_factory = dict_factory  # type: ignore[assignment]
            async with connection.execute(query, args or []) as cursor:
                await connection.commit()
                return await cursor.fetchall()


def engine_from_url(url: str) -> Engine:
    """Return the Piccolo engine for a `sqlite://` or `postgresql://` URL."""
    scheme = urlparse(url).scheme
    if scheme == "sqlite":
        return GuardedSQLiteEngine(path=sqlite_path(url), timeout=SQLITE_BUSY_TIMEOUT)
    if scheme in ("postgres", "postgresql"):
        return PostgresEngine(config={"dsn": url}, extensions=())
    raise ValueError(f"unsupported DATABASE_URL scheme {scheme!r}: use sqlite:// or postgresql://")


@cache
def engine() -> Engine:
    """Return the configured engine (piccolo_conf is read once per process, as Piccolo does)."""
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


class Statement:
    """SQL text and its arguments, built with the configured engine's placeholders."""

    __slots__ = ("args", "postgres")

    def __init__(self, *, postgres: bool) -> None:
        self.postgres = postgres
        self.args: list[Any] = []

    def arg(self, value: Any) -> str:
        """Return the placeholder for one argument."""
        self.args.append(value)
        return f"${len(self.args)}" if self.postgres else "?"

    def one_of(self, values: Sequence[Any]) -> str:
        """Return `IN (...)` for a list of values (one array argument on PostgreSQL)."""
        if self.postgres:
            return f"= ANY({self.arg(list(values))})"
        return "IN (" + ", ".join(self.arg(v) for v in values) + ")"


class Marks:
    """Arguments for a Piccolo QueryString (`{}` marks), in the order the text uses them."""

    __slots__ = ("args",)

    def __init__(self, args: list[Any]) -> None:
        self.args = args

    def arg(self, value: Any) -> str:
        """Return the mark for one argument."""
        self.args.append(value)
        return "{}"

    def one_of(self, values: Sequence[Any]) -> str:
        """Return `IN (...)` for a list of values."""
        return "IN (" + ", ".join(self.arg(v) for v in values) + ")"


def statement() -> Statement:
    """Return an empty statement for the configured engine."""
    return Statement(postgres=not is_sqlite())


async def fetch(sql: str, args: Sequence[Any]) -> Sequence[Mapping[str, Any]]:
    """Run one read-only statement outside any transaction and return its rows by column name.

    The lean path for hot reads: no query builder, rows as the driver returns them.
    """
    db = engine()
    if isinstance(db, PostgresEngine):
        if db.pool is not None:
            async with db.pool.acquire() as connection:
                return await connection.fetch(sql, *args)  # type: ignore[no-any-return]
        connection = await db.get_new_connection()
        try:
            return await connection.fetch(sql, *args)  # type: ignore[no-any-return]
        finally:
            await connection.close()
    assert isinstance(db, SQLiteEngine)
    if _readers is not None:
        return await _readers.fetch(sql, args)
    async with aiosqlite.connect(**db.connection_kwargs) as connection:
        await guard(connection)
        connection.row_factory = sqlite3.Row
        async with connection.execute(sql, list(args)) as cursor:
            return await cursor.fetchall()  # type: ignore[return-value]


class Reader:
    """One kept SQLite connection for `fetch`, whose progress handler reads a settable deadline."""

    __slots__ = ("connection", "until")

    def __init__(self, connection: aiosqlite.Connection) -> None:
        self.connection = connection
        self.until = float("inf")


class Readers:
    """SQLite connections kept open between reads, as PostgreSQL's pool keeps its own.

    Opening one costs a thread, a file open and a schema read: more than the read itself on
    the hot paths. A kept connection outside a transaction sees every commit (WAL), and its
    progress handler, installed once, ends a statement at the deadline of the request using it.
    A connection whose read failed or was cancelled is closed rather than kept.
    """

    def __init__(self, connection_kwargs: Mapping[str, Any], keep: int) -> None:
        self.connection_kwargs = dict(connection_kwargs)
        self.keep = keep
        self.idle: list[Reader] = []

    async def _open(self) -> Reader:
        connection = await aiosqlite.connect(**self.connection_kwargs)
        connection.row_factory = sqlite3.Row
        reader = Reader(connection)
        clock = time.monotonic
        await connection.set_progress_handler(lambda: clock() > reader.until, PROGRESS_STEPS)
        return reader

    async def fetch(self, sql: str, args: Sequence[Any]) -> Sequence[Mapping[str, Any]]:
        reader = self.idle.pop() if self.idle else await self._open()
        until = deadline.get()
        reader.until = float("inf") if until is None else until
        try:
            rows = await reader.connection.execute_fetchall(sql, list(args))
        except BaseException:
            await reader.connection.close()  # its statement was interrupted, or the read failed
            raise
        if len(self.idle) < self.keep:
            self.idle.append(reader)
        else:
            await reader.connection.close()
        return rows  # type: ignore[return-value]

    async def close(self) -> None:
        idle, self.idle = self.idle, []
        for reader in idle:
            await reader.connection.close()


# The kept SQLite read connections while an application serves (None: each read opens its own).
_readers: Readers | None = None
# At most this many are kept idle; more may be open at once, and close after their read.
READERS_KEPT = 16


# Applications sharing the process's one engine (tests run several): the pool closes with the last.
_open_apps = 0


async def open_engine(*, statement_timeout_seconds: float = 10.0) -> None:
    """Prepare the engine for serving: WAL on SQLite, a connection pool on PostgreSQL."""
    global _open_apps
    _open_apps += 1
    if _open_apps > 1:
        return
    try:
        await _open(statement_timeout_seconds)
    except BaseException:
        _open_apps -= 1
        raise


async def _open(statement_timeout_seconds: float) -> None:
    db = engine()
    if isinstance(db, SQLiteEngine):
        # WAL lets readers proceed while one writer commits; the mode persists in the file.
        await db.run_ddl("PRAGMA journal_mode=WAL")
        global _readers
        _readers = Readers(db.connection_kwargs, READERS_KEPT)
    elif isinstance(db, PostgresEngine):
        # A slow statement is cancelled by the server, freeing its connection for others.
        await db.start_connection_pool(
            min_size=1,
            max_size=10,
            timeout=CONNECT_TIMEOUT,
            server_settings={"statement_timeout": str(int(statement_timeout_seconds * 1000))},
            reset=keep_session,
        )
        if db.pool is not None:
            _time_waits(db.pool)


# Told how long each wait for a pool connection lasted (one that found none free); see watch_pool.
_pool_waits: list[Callable[[float], None]] = []


def watch_pool(callback: Callable[[float], None]) -> Callable[[], None]:
    """Call `callback(seconds)` after every wait for a pool connection; return how to stop."""
    _pool_waits.append(callback)
    return lambda: _pool_waits.remove(callback)


def pool_usage() -> tuple[int, int, int]:
    """Return the pool's open connections, its maximum and those lent out (SQLite: no pool)."""
    db = engine()
    pool = db.pool if isinstance(db, PostgresEngine) else None
    if pool is None:
        return 0, 0, 0
    size = pool.get_size()
    return size, pool.get_max_size(), size - pool.get_idle_size()


def _time_waits(pool: asyncpg.Pool) -> None:
    """Time the acquisitions that wait: the pool's queue of connection holders gets a `get` that
    notices an empty queue (every connection lent out); Piccolo's acquisitions and ours alike."""
    queue = pool._queue
    base = type(queue)

    class TimedQueue(base):  # type: ignore[valid-type, misc]
        async def get(self) -> Any:
            if not self.empty() or not _pool_waits:
                return await super().get()
            started = time.perf_counter()
            try:
                return await super().get()
            finally:
                waited = time.perf_counter() - started
                for callback in _pool_waits:
                    callback(waited)

    queue.__class__ = TimedQueue


async def keep_session(connection: asyncpg.Connection) -> None:
    """Release a pooled connection without asyncpg's reset query (one round trip per statement).

    The service keeps no session state: no session-level SET (the statement timeout is a
    connection setting), no advisory lock, no LISTEN, no cursor held past its transaction.
    asyncpg still rolls back a transaction left open before it calls this.
    """


async def close_engine() -> None:
    """Release what open_engine() took, once the last application using it closes."""
    global _open_apps
    _open_apps -= 1
    if _open_apps > 0:
        return
    db = engine()
    if isinstance(db, PostgresEngine):
        await db.close_connection_pool()
    global _readers
    if _readers is not None:
        readers, _readers = _readers, None
        await readers.close()


def is_transient(error: BaseException | None) -> bool:
    """Return whether an error means the database is briefly unavailable (worth a retry)."""
    if error is None:
        return False
    if isinstance(error, sqlite3.OperationalError):
        return "locked" in str(error) or "busy" in str(error)
    if isinstance(error, OSError | asyncio.TimeoutError):
        return True
    return isinstance(
        error,
        asyncpg.exceptions.ConnectionDoesNotExistError
        | asyncpg.exceptions.CannotConnectNowError
        | asyncpg.exceptions.TooManyConnectionsError
        | asyncpg.exceptions.AdminShutdownError
        | asyncpg.exceptions.InterfaceError
        | asyncpg.exceptions.ConnectionFailureError,
    )


def is_timeout(error: BaseException | None) -> bool:
    """Return whether the database cancelled a statement that ran past its time limit."""
    if isinstance(error, sqlite3.OperationalError):
        return str(error) == "interrupted"  # see guard()
    return isinstance(error, asyncpg.exceptions.QueryCanceledError)
