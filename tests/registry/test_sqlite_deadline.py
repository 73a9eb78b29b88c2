"""SQLite statements stop when their request's time is up (registry/db.py guard).

SQLite has no statement timeout, and cancelling the task that awaits a statement leaves the
statement running in its connection's thread. The guard's progress handler interrupts it at the
deadline the server sets for each request, on every way the service opens a connection: the
lean reads (db.fetch), Piccolo's queries, and Piccolo's transactions.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from dataclasses import replace
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from registry import db
from registry.tables import KpiDefinition
from server.app import create_app
from server.config import Settings
from tests.conftest import is_postgres, make_token

pytestmark = pytest.mark.skipif(
    is_postgres(), reason="SQLite only: PostgreSQL has statement_timeout"
)

# Counts for ever: only an interrupt ends it.
ENDLESS = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT max(x) FROM c"
FINITE = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 200000) "
FINITE += "SELECT max(x) AS top FROM c"
# Far longer than any interrupt takes; reaching it means the statement was not stopped.
HANG = 60.0


def connection_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if "_connection_worker_thread" in t.name}


async def within_deadline(seconds: float, work: Any) -> Any:
    token = db.deadline.set(time.monotonic() + seconds)
    try:
        return await asyncio.wait_for(work(), HANG)
    finally:
        db.deadline.reset(token)


async def test_a_lean_read_past_its_deadline_is_interrupted() -> None:
    with pytest.raises(sqlite3.OperationalError) as caught:
        await within_deadline(0.2, lambda: db.fetch(ENDLESS, []))
    assert db.is_timeout(caught.value)


async def test_a_piccolo_query_past_its_deadline_is_interrupted() -> None:
    with pytest.raises(sqlite3.OperationalError) as caught:
        await within_deadline(0.2, lambda: KpiDefinition.raw(ENDLESS).run())
    assert db.is_timeout(caught.value)


async def test_a_statement_in_a_transaction_past_its_deadline_is_interrupted() -> None:
    async def in_transaction() -> None:
        async with db.transaction():
            await KpiDefinition.raw(ENDLESS).run()

    slugs = {row["slug"] for row in await KpiDefinition.select(KpiDefinition.slug)}
    with pytest.raises(sqlite3.OperationalError) as caught:
        await within_deadline(0.2, in_transaction)
    assert db.is_timeout(caught.value)
    # The database is usable at once: the write lock the transaction held is released.
    async with db.transaction():
        await KpiDefinition.update({KpiDefinition.owner: "after"}, force=True)
    assert {row["slug"] for row in await KpiDefinition.select(KpiDefinition.slug)} == slugs


async def test_statements_within_their_deadline_or_without_one_run_to_the_end() -> None:
    assert (await within_deadline(30.0, lambda: db.fetch(FINITE, [])))[0]["top"] == 200_000
    assert (await db.fetch(FINITE, []))[0]["top"] == 200_000
    [row] = await KpiDefinition.raw(FINITE).run()
    assert row["top"] == 200_000


async def test_a_timed_out_request_stops_using_the_database(settings: Settings) -> None:
    """Before the guard, the request never answered: closing the connection waited for its
    endless statement. Now it answers TIMEOUT and the connection's thread ends."""

    async def endless(request: web.Request) -> web.Response:
        await db.fetch(ENDLESS, [])
        return web.Response(text="unreachable")

    app = create_app(replace(settings, request_timeout_seconds=0.5))
    app.router.add_get("/endless", endless)
    before = connection_threads()
    async with TestClient(TestServer(app)) as client:
        response = await asyncio.wait_for(
            client.get("/endless", headers={"Authorization": f"Bearer {make_token('responder')}"}),
            HANG,
        )
        assert response.status == 503
        assert (await response.json())["errors"][0]["extensions"]["code"] == "TIMEOUT"
        for _ in range(int(HANG / 0.05)):
            if not connection_threads() - before:
                break
            await asyncio.sleep(0.05)
        assert not connection_threads() - before, "the statement's thread still runs"
        health = await client.get("/healthz")
        assert health.status == 200


# Kept read connections (registry/db.py Readers): while an application serves, db.fetch reuses
# open SQLite connections instead of opening one per read.


def reader_threads() -> set[threading.Thread]:
    readers = db._readers
    assert readers is not None, "the engine is open: reads use kept connections"
    return {reader.connection._thread for reader in readers.idle}


async def test_kept_readers_are_reused_and_see_every_commit() -> None:
    await db.open_engine()
    try:
        count = "SELECT count(*) AS n FROM kpi_definition"
        before = (await db.fetch(count, []))[0]["n"]
        [kept] = reader_threads()
        await KpiDefinition.delete().where(KpiDefinition.slug == "mttr")  # another connection
        assert (await db.fetch(count, []))[0]["n"] == before - 1, "a kept reader read stale rows"
        assert reader_threads() == {kept}, "the read opened a new connection"
    finally:
        await db.close_engine()
    kept.join(HANG)  # its close was queued behind nothing: it ends at once
    assert not kept.is_alive(), "closing the engine leaves its readers open"


async def test_a_kept_reader_is_interrupted_at_its_deadline_and_then_dropped() -> None:
    await db.open_engine()
    try:
        await within_deadline(0.3, lambda: db.fetch("SELECT 1", []))
        [kept] = reader_threads()
        await asyncio.sleep(0.4)  # that deadline is past: the next read without one still runs
        assert (await db.fetch(FINITE, []))[0]["top"] == 200_000
        assert reader_threads() == {kept}
        with pytest.raises(sqlite3.OperationalError) as caught:
            await within_deadline(0.2, lambda: db.fetch(ENDLESS, []))
        assert db.is_timeout(caught.value)
        assert reader_threads() == set(), "an interrupted reader was kept"
        kept.join(HANG)
        assert not kept.is_alive(), "the interrupted reader's thread still runs"
        assert (await db.fetch("SELECT 2 AS two", []))[0]["two"] == 2
    finally:
        await db.close_engine()


async def test_at_most_readers_kept_stay_open_after_a_burst() -> None:
    await db.open_engine()
    before = connection_threads()
    try:
        burst = 2 * db.READERS_KEPT
        answers = await asyncio.gather(*(db.fetch(FINITE, []) for _ in range(burst)))
        assert [rows[0]["top"] for rows in answers] == [200_000] * burst
        assert len(reader_threads()) == db.READERS_KEPT
        for thread in connection_threads() - before - reader_threads():
            thread.join(HANG)
            assert not thread.is_alive(), "a surplus reader stayed open"
    finally:
        await db.close_engine()
