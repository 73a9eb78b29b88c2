"""The data generation moves with every committed write, and only then."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest

from registry import db, generation
from registry.tables import Incident, KpiDefinition

NOW = datetime(2026, 3, 2, tzinfo=UTC)


def incident(key: str) -> Incident:
    return Incident(key=key, title=key, severity="P2", detected_at=NOW)


async def test_a_committed_write_to_each_watched_table_moves_it() -> None:
    before = await generation.current()
    await Incident.insert(incident("INC-G1"))
    after_insert = await generation.current()
    assert after_insert > before
    await Incident.update({Incident.title: "renamed"}).where(Incident.key == "INC-G1")
    after_update = await generation.current()
    assert after_update > after_insert
    await KpiDefinition.update({KpiDefinition.owner: "someone"}).where(KpiDefinition.slug == "mttr")
    assert await generation.current() > after_update
    # Every table answers are made of is watched (PostgreSQL's triggers are per statement, so
    # even a statement that changes nothing moves it; SQLite's are per row).
    for table in generation.WATCHED if not db.is_sqlite() else ():
        moved = await generation.current()
        await db.engine().run_ddl(f"DELETE FROM {table} WHERE 1 = 0")
        assert await generation.current() > moved, table


async def test_a_write_moves_it_at_commit_and_a_rolled_back_one_not_at_all() -> None:
    before = await generation.current()
    entered, release = asyncio.Event(), asyncio.Event()

    async def writer(fail: bool) -> None:
        try:
            async with db.transaction():
                await Incident.insert(incident("INC-G2" if not fail else "INC-G3"))
                await Incident.insert(incident("INC-G4" if not fail else "INC-G5"))
                entered.set()
                await release.wait()
                if fail:
                    raise RuntimeError("roll back")
        except RuntimeError:
            pass

    task = asyncio.create_task(writer(fail=True))
    await entered.wait()
    assert await generation.current() == before  # written, not committed
    release.set()
    await task
    assert await generation.current() == before  # rolled back
    entered.clear()
    release.clear()
    task = asyncio.create_task(writer(fail=False))
    await entered.wait()
    assert await generation.current() == before
    release.set()
    await task
    after = await generation.current()
    assert after > before
    if not db.is_sqlite():
        assert after == before + 1  # once per transaction, however many statements


async def test_concurrent_writers_each_move_it_once() -> None:
    if db.is_sqlite():
        pytest.skip("SQLite writers take turns: nothing runs concurrently")
    before = await generation.current()

    async def one(n: int) -> None:
        async with db.transaction():
            await Incident.insert(incident(f"INC-C{n}"))

    await asyncio.gather(*(one(n) for n in range(8)))
    assert await generation.current() == before + 8
