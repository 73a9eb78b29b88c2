"""Upgrades keep every row: a database built at an earlier migration and filled with SQL written
for that schema is migrated forwards, compared row by row with what it held, and asked over the
API; `mim migrate` takes turns under a lock and refuses a database newer than itself.

Every test makes its own database: a temporary SQLite file, or on PostgreSQL a database created
next to TEST_DATABASE_URL's and dropped after; never the one the session fixtures migrate.
`mim migrate` runs as the installed command with DATABASE_URL naming it; the steps run in this
process point its engine there for the test (`pointed_at`), and back.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import math
import os
import random
import subprocess
import sys
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import aiosqlite
import asyncpg
import pytest
from aiohttp.test_utils import TestClient, TestServer
from piccolo.apps.migrations.commands.forwards import run_forwards
from piccolo.querystring import QueryString
from piccolo.table import Table

import piccolo_conf
from registry import db, migrate, opaque, rollups
from server.app import create_app
from server.config import Settings
from tests.conftest import DATABASE_URL, ENV, gql, is_postgres, run_seed

pytestmark = [
    pytest.mark.security,
    pytest.mark.skipif(
        not (Path(sys.executable).parent / "mim").exists(), reason="mim is not installed"
    ),
]

MIM = str(Path(sys.executable).parent / "mim")
ROOT = Path(__file__).resolve().parents[2]
SHIPPED = sorted(migrate.shipped())
FIRST = "2026-11-27T06:37:55:798861"  # the first released migration
SEED = "2026-11-27T06:45:00:000000"  # adds the four seed KPIs
EXPRESSIONS = "2026-11-27T07:30:00:000000"  # gives the seed KPIs their expressions
RECOMPUTE = "2026-12-03T08:00:00:000000"  # creates kpi_recompute
ROLLUPS = "2026-12-03T11:00:00:000000"  # builds kpi_rollup from the observations
EXACT_SUMS = "2026-12-03T14:30:00:000000"  # adds kpi_rollup.residue and rebuilds the rollups
SEED_SLUGS = ("mttr", "mtta", "cadence-adherence", "stakeholder-satisfaction")
FUTURE = "2099-12-31T23:59:59:999999"
NEWER = (
    f"Error: the database has migrations this release does not know ({FUTURE}): it was migrated "
    "by a newer mim; run that release or newer\n"
)


def test_the_first_released_migration_is_the_oldest_shipped() -> None:
    assert SHIPPED[0] == FIRST
    assert {SEED, EXPRESSIONS, RECOMPUTE, ROLLUPS, EXACT_SUMS} <= set(SHIPPED)


# --- a database of the test's own ------------------------------------------------------------


@dataclass
class Database:
    url: str
    path: Path | None  # SQLite's file

    def env(self) -> dict[str, str]:
        return {**os.environ, **ENV, "DATABASE_URL": self.url}


@pytest.fixture
async def database(tmp_path: Path) -> AsyncIterator[Database]:
    """A database nobody else uses: a SQLite file, or a PostgreSQL database made and dropped."""
    if not is_postgres():
        path = tmp_path / "upgrade.sqlite3"
        yield Database(f"sqlite:///{path}", path)
        return
    base = urlparse(DATABASE_URL)
    name = f"{base.path.lstrip('/')}_upgrade_{uuid.uuid4().hex[:8]}"
    await _on_server(f'CREATE DATABASE "{name}" TEMPLATE template0')
    try:
        yield Database(base._replace(path=f"/{name}").geturl(), None)
    finally:
        await _on_server(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def _on_server(sql: str) -> None:
    connection = await asyncpg.connect(DATABASE_URL)
    try:
        await connection.execute(sql)
    finally:
        await connection.close()


@asynccontextmanager
async def pointed_at(database: Database) -> AsyncIterator[None]:
    """Point this process's engine at `database` (piccolo_conf.DB, every table's engine,
    registry.db's cached one), and back after; what the process keeps of a database (the
    opaque ids' key, group summaries) is set aside meanwhile."""
    engine = db.engine_from_url(database.url)
    saved = {table: table._meta._db for table in _tables()}
    shared, sealer = piccolo_conf.DB, opaque._sealer
    piccolo_conf.DB, opaque._sealer = engine, None
    for table in saved:
        table._meta.db = engine
    db.engine.cache_clear()
    _forget_summaries()
    try:
        yield
    finally:
        piccolo_conf.DB, opaque._sealer = shared, sealer
        for table in _tables():
            table._meta._db = saved.get(table)  # a table made meanwhile finds its engine anew
        db.engine.cache_clear()
        _forget_summaries()


def _tables() -> list[type[Table]]:
    found, pending = [], list(Table.__subclasses__())
    while pending:
        table = pending.pop()
        found.append(table)
        pending.extend(table.__subclasses__())
    return found


def _forget_summaries() -> None:
    # Group summaries are kept per process by group key and stamp: another database's must go.
    rollups.cache.clear()
    rollups.merged.clear()


async def migrate_to(migration_id: str) -> None:
    """Run the shipped migrations up to and including `migration_id` (the engine pointed)."""
    result = await run_forwards(app_name="mim", migration_id=migration_id)
    assert result.success, result.message


def mim_migrate(database: Database) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [MIM, "migrate"],
        cwd=ROOT,
        env=database.env(),
        capture_output=True,
        text=True,
        timeout=300,
    )


# --- rows as the database holds them ---------------------------------------------------------


@dataclass
class TableRows:
    columns: list[str]
    rows: dict[tuple[Any, ...], dict[str, Any]]  # by primary key


Snapshot = dict[str, TableRows]


async def snapshot(database: Database) -> Snapshot:
    """Every row of every table, as the driver returns it (SQLite: the stored text, unparsed)."""
    if database.path is not None:
        return await _sqlite_snapshot(database.path)
    connection = await asyncpg.connect(database.url)
    try:
        found: Snapshot = {}
        names = await connection.fetch(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1"
        )
        for (name,) in names:
            key = [
                row[0]
                for row in await connection.fetch(
                    "SELECT a.attname FROM pg_index AS i JOIN pg_attribute AS a "
                    "ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) "
                    "WHERE i.indrelid = $1::regclass AND i.indisprimary ORDER BY a.attnum",
                    name,
                )
            ]
            records = await connection.fetch(f'SELECT * FROM "{name}"')
            columns = list(records[0].keys()) if records else []
            found[name] = _keyed([dict(r) for r in records], key, columns)
        return found
    finally:
        await connection.close()


async def _sqlite_snapshot(path: Path) -> Snapshot:
    found: Snapshot = {}
    async with aiosqlite.connect(path) as connection:
        names = await connection.execute_fetchall(
            "SELECT name FROM sqlite_master WHERE type = 'table' "
            "AND name NOT LIKE 'sqlite_%' ORDER BY 1"
        )
        for (name,) in names:
            info = await connection.execute_fetchall(f'PRAGMA table_info("{name}")')
            key = [row[1] for row in sorted(info, key=lambda r: r[5]) if row[5]]
            columns = [row[1] for row in info]
            records = await connection.execute_fetchall(f'SELECT * FROM "{name}"')
            found[name] = _keyed(
                [dict(zip(columns, r, strict=True)) for r in records], key, columns
            )
    return found


def _keyed(rows: list[dict[str, Any]], key: list[str], columns: list[str]) -> TableRows:
    assert key, f"a table without a primary key: {columns}"
    keyed = {tuple(row[k] for k in key): row for row in rows}
    assert len(keyed) == len(rows)
    return TableRows(columns, keyed)


def same(a: Any, b: Any) -> bool:
    """Whether two stored values are the same: same type, and for floats the same bits."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return a.hex() == b.hex()
    return bool(a == b)


@dataclass
class Diff:
    """What a migration did to the tables there were before it."""

    changed: dict[str, list[tuple[dict[str, Any], dict[str, Any]]]] = field(default_factory=dict)
    added: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    removed: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    compared: int = 0  # rows of `before` found in `after`


def diff(before: Snapshot, after: Snapshot) -> Diff:
    """Compare every row of every table in `before` with `after` (on `before`'s columns)."""
    found = Diff()
    for name, old in before.items():
        assert name in after, f"table {name} is gone"
        new = after[name]
        assert set(old.columns) <= set(new.columns) or not old.rows, f"{name} lost columns"
        for key, row in old.rows.items():
            if key not in new.rows:
                found.removed.setdefault(name, []).append(row)
                continue
            found.compared += 1
            if not all(same(value, new.rows[key][column]) for column, value in row.items()):
                found.changed.setdefault(name, []).append((row, new.rows[key]))
        added = [row for key, row in new.rows.items() if key not in old.rows]
        if added:
            found.added[name] = added
    return found


def differing(pair: tuple[dict[str, Any], dict[str, Any]]) -> set[str]:
    old, new = pair
    return {column for column, value in old.items() if not same(value, new[column])}


def applied_rows(found: Diff) -> list[str]:
    """The migration IDs the `migration` table gained, and nothing else there."""
    rows = found.added.get("migration", [])
    assert all(row["app_name"] == "mim" for row in rows)
    return sorted(row["name"] for row in rows)


# --- SQL written for the first released schema -----------------------------------------------

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
LAST = datetime(2199, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)
TEXTS = (
    "",
    "plain",
    "Ünïcödé ✓ — “quoted”",
    "日本語のタイトル",
    "emoji 🚨🔥👩‍💻",
    "עברית RTL",
    "e\u0301 combining, zero\u200bwidth",
    "quote ' double \" backslash \\",
    "line\nbreak\ttab",
    "  spaces around  ",
    "placeholders {} %s $1 ? :name",
    "x" * 200,
)
VALUES = (0.0, -0.0, 1e12, -1e12, 0.1, 1e-300, 5e-324, -2.5, 123456.789012)
INTS = (1, 7, 2147483647)
# Observations fall on these days (a few at the edges), so rollup groups hold several rows.
DAYS = (
    EPOCH,
    LAST.replace(hour=0, minute=0, second=0, microsecond=0),
    *(datetime(2026, 1, 1, tzinfo=UTC) + timedelta(days=d) for d in (0, 1, 6, 7, 31, 59, 400)),
)


def text(rng: random.Random, limit: int = 200) -> str:
    return rng.choice(TEXTS)[:limit]


def moment(rng: random.Random) -> datetime:
    """A date-time anywhere the contract allows, to the microsecond."""
    span = (LAST - EPOCH) // timedelta(microseconds=1)
    return EPOCH + timedelta(microseconds=rng.randrange(span))


def target(rng: random.Random) -> dict[str, Any]:
    return {
        "severity": rng.choice((None, "P1", "P2", "P3", "P4")),
        "persona": rng.choice((None, "exec", "stakeholder", "responder", "ingest", "admin")),
        "comparison": rng.choice(("AT_MOST", "AT_LEAST")),
        "threshold": rng.choice((*VALUES, 120.0)),
    }


def first_release_rows(rng: random.Random) -> dict[str, list[dict[str, Any]]]:
    """Rows for every table of the first released schema, parents first."""
    definitions = []
    for n in range(12):
        created = moment(rng)
        definitions.append(
            {
                "slug": f"upgrade-{n}" if n else "upgrade-" + "z" * 56,  # 64 characters
                "name": text(rng),
                "description": text(rng),
                "formula": text(rng),
                "expression": rng.choice((None, "minutes(resolved_at - detected_at)")),
                "units": rng.choice(("minutes", "%", "", "µs")),
                "targets": json.dumps(
                    [target(rng) for _ in range(rng.randrange(4))], ensure_ascii=n % 2 == 0
                ),
                "data_sources": json.dumps(
                    [text(rng) for _ in range(rng.randrange(3))], ensure_ascii=n % 3 == 0
                ),
                "visibility": "exec" if n % 2 == 0 else "internal",
                "owner": text(rng),
                "review_cadence": rng.choice(("P90D", "P1Y2M", "PT36H", "P10Y")),
                "last_reviewed_at": rng.choice((None, moment(rng), EPOCH)),
                "version": rng.choice(INTS),
                "created_at": created,
                "updated_at": rng.choice((created, LAST)),
            }
        )
    revisions = [
        {
            "id": len(definitions) * 10 + n * 3 + version,
            "kpi": d["slug"],
            "version": version,
            "changed_at": moment(rng),
            "changed_by": text(rng),
            "note": rng.choice((None, text(rng))),
            "changes": json.dumps(
                [
                    {
                        "field": "name",
                        "before": json.dumps(text(rng)),
                        "after": json.dumps(text(rng), ensure_ascii=False),
                    }
                ],
                ensure_ascii=False,
            ),
        }
        for n, d in enumerate(definitions)
        for version in range(1, rng.randrange(2, 5))
    ]
    ids = [*range(1, 59), 1000, 2147483000]
    incidents = []
    for n, pk in enumerate(ids):
        detected = incidents[-1]["detected_at"] if n == 7 else moment(rng)  # a tie
        detected = {0: EPOCH, 1: LAST}.get(n, detected)
        resolved = detected + timedelta(minutes=rng.randrange(100_000))
        incidents.append(
            {
                "id": pk,
                "key": {2: "ИНЦ-ü-🚨", 3: "K" * 64}.get(n, f"INC-{pk}"),
                "title": "t" * 500 if n == 4 else text(rng),
                "severity": rng.choice(("P1", "P2", "P3", "P4")),
                "detected_at": detected,
                "resolved_at": rng.choice((None, resolved)) if resolved <= LAST else None,
            }
        )
    alerts, events, milestones, surveys, observations = [], [], [], [], []
    for incident in incidents:
        pk = incident["id"]
        for _ in range(rng.randrange(4)):
            alerts.append(
                {"incident": pk, "issue_time": moment(rng), "source": rng.choice((None, text(rng)))}
            )
        for _ in range(rng.randrange(5)):
            events.append(
                {
                    "incident": pk,
                    "kind": rng.choice(("detected", "phase", "update", "résolu")),
                    "phase": rng.choice((None, "gather", "mitigate", "")),
                    "occurred_at": moment(rng),
                    "note": rng.choice((None, text(rng))),
                }
            )
        for name in rng.sample(("ETA 1", "ETA 2", "résumé", "🚀 fix"), rng.randrange(4)):
            eta = moment(rng)
            delivered = eta + timedelta(minutes=rng.randrange(-60, 60))
            milestones.append(
                {
                    "incident": pk,
                    "name": name,
                    "committed_eta": eta,
                    "delivered_at": rng.choice((None, delivered)) if delivered <= LAST else None,
                }
            )
        for _ in range(rng.randrange(3)):
            surveys.append(
                {
                    "incident": pk,
                    "score": rng.choice((1, 3, 5, 0, -2147483648, 2147483647)),
                    "submitted_at": moment(rng),
                }
            )
        observations += observation_rows(rng, pk, [d["slug"] for d in definitions])
    return {
        "kpi_definition": definitions,
        "kpi_revision": revisions,
        "incident": incidents,
        "alert": [{"id": 5 * n + 3, **row} for n, row in enumerate(alerts)],
        "timeline_event": [{"id": n + 1, **row} for n, row in enumerate(events)],
        "milestone": [{"id": n + 1, **row} for n, row in enumerate(milestones)],
        "survey_response": [{"id": n + 1, **row} for n, row in enumerate(surveys)],
        "kpi_observation": observations,
    }


def observation_rows(rng: random.Random, incident: int, slugs: list[str]) -> list[dict[str, Any]]:
    rows = []
    for slug in rng.sample(slugs, rng.randrange(min(5, len(slugs) + 1))):
        day = rng.choice(DAYS)
        for second in rng.sample(range(86400), rng.randrange(1, 3)):
            rows.append(
                {
                    "kpi": slug,
                    "incident": incident,
                    "timestamp": day + timedelta(seconds=second, microseconds=rng.randrange(10**6)),
                    "value": rng.choice((*VALUES, rng.uniform(-1e3, 1e3))),
                    "source": rng.choice(("ingested", "computed", "manual", "импорт")),
                    "confidence": rng.choice((0.0, 1.0, 0.5, rng.random())),
                    "definition_version": rng.choice((None, 1, 2147483647)),
                    "recorded_at": moment(rng),
                }
            )
    return rows


async def insert(tables: dict[str, list[dict[str, Any]]]) -> int:
    """INSERT the rows, a few hundred to a statement, in one transaction; return how many."""
    engine = db.engine()
    count = 0
    async with engine.transaction():
        for name, rows in tables.items():
            if not rows:
                continue
            for start in range(0, len(rows), 200):
                chunk = rows[start : start + 200]
                columns = list(chunk[0])
                marks = "(" + ", ".join("{}" for _ in columns) + ")"
                quoted = ", ".join(f'"{c}"' for c in columns)
                sql = f"INSERT INTO {name} ({quoted}) VALUES {', '.join(marks for _ in chunk)}"
                args = [row[c] for row in chunk for c in columns]
                await engine.run_querystring(QueryString(sql, *args))
                count += len(chunk)
            if not db.is_sqlite() and "id" in rows[0]:
                # Explicit ids leave the sequence behind; a restore sets it as this does.
                await engine.run_querystring(
                    QueryString(
                        f"SELECT setval(pg_get_serial_sequence('{name}', 'id'), max(id)) "
                        f"FROM {name}"
                    )
                )
    return count


# --- rollups recomputed from the raw rows ----------------------------------------------------


def bucket(moment_: datetime, grain: str) -> datetime:
    day = datetime(moment_.year, moment_.month, moment_.day, tzinfo=UTC)
    if grain == "W":
        return day - timedelta(days=day.weekday())
    return day.replace(day=1) if grain == "M" else day


async def raw_groups() -> dict[tuple[str, str, str, datetime], list[float]]:
    """Each rollup group's observation values, from the raw rows, in id order."""
    groups: dict[tuple[str, str, str, datetime], list[float]] = defaultdict(list)
    rows = await db.fetch(
        "SELECT o.kpi, i.severity, o.timestamp, o.value FROM kpi_observation AS o "
        "JOIN incident AS i ON i.id = o.incident ORDER BY o.id",
        [],
    )
    for row in rows:
        moment_ = rollups.as_utc(row["timestamp"])
        for grain in "DWM":
            groups[(row["kpi"], grain, row["severity"], bucket(moment_, grain))].append(
                row["value"]
            )
    return groups


async def assert_rollups_recomputed() -> int:
    """Every rollup row equals a recomputation from the raw rows; return the groups compared."""
    want = await raw_groups()
    got = {
        (r["kpi"], r["grain"], r["severity"], rollups.as_utc(r["start"])): (
            r["n"],
            r["total"] + r["residue"],
        )
        for r in await db.fetch("SELECT * FROM kpi_rollup", [])
    }
    for key, values in want.items():
        assert got.get(key) == (len(values), math.fsum(values)), key
    for key, kept in got.items():
        assert key in want or kept == (0, 0.0), f"{key} holds {kept}, the rows nothing"
    return len(want)


# The table the rollups migration made before the exact sums (commit 303fdfd): no residue.
ROLLUPS_BEFORE_EXACT_SUMS = {
    "postgres": (
        "CREATE TABLE kpi_rollup (id bigserial PRIMARY KEY, kpi varchar(64) NOT NULL, "
        "grain varchar(1) NOT NULL, severity varchar(2) NOT NULL, start timestamptz NOT NULL, "
        "n bigint NOT NULL DEFAULT 0, total double precision NOT NULL DEFAULT 0, "
        "stamp bigint NOT NULL DEFAULT 1, changed_at timestamptz NOT NULL)"
    ),
    "sqlite": (
        "CREATE TABLE kpi_rollup (id INTEGER PRIMARY KEY, kpi VARCHAR(64) NOT NULL, "
        "grain VARCHAR(1) NOT NULL, severity VARCHAR(2) NOT NULL, start TIMESTAMPTZ NOT NULL, "
        "n INTEGER NOT NULL DEFAULT 0, total DOUBLE PRECISION NOT NULL DEFAULT 0, "
        "stamp INTEGER NOT NULL DEFAULT 1, changed_at TIMESTAMPTZ NOT NULL)"
    ),
}


async def rollups_as_before_exact_sums(drifted: str) -> int:
    """Put kpi_rollup back as a database made before 14:30 holds it: no residue column, sums
    kept by adding doubles, and in the day, week and month of observation `drifted` the
    rounding that 1e12 written and taken away again left behind. Return the groups written."""
    engine = rollups.engine_name()
    for statement in rollups.DROP[engine]:
        await db.engine().run_ddl(statement)
    await db.engine().run_ddl(ROLLUPS_BEFORE_EXACT_SUMS[engine])
    await db.engine().run_ddl(rollups.INDEX)
    s = db.statement()
    (drift,) = await db.fetch(
        f"SELECT kpi, timestamp FROM kpi_observation WHERE source = {s.arg(drifted)}", s.args
    )
    rows = []
    for (kpi, grain, severity, start), values in (await raw_groups()).items():
        total = 0.0
        for value in values:
            total += value
        if kpi == drift["kpi"] and start == bucket(rollups.as_utc(drift["timestamp"]), grain):
            total = (total + 1e12) - 1e12
        rows.append(
            {
                "kpi": kpi,
                "grain": grain,
                "severity": severity,
                "start": start,
                "n": len(values),
                "total": total,
                "stamp": 3,
                "changed_at": LAST,
            }
        )
    await insert({"kpi_rollup": rows})
    return len(rows)


# --- the migrations one step at a time -------------------------------------------------------


def expect_no_change(found: Diff, before: Snapshot) -> None:
    assert found.changed == {}
    assert set(found.added) <= {"migration"}


@dataclass
class Stage:
    """What the database holds before a step: more rows for it, and what the step may change."""

    fill: Callable[[random.Random], Awaitable[None]] | None = None
    expect: Callable[[Diff, Snapshot], None] = expect_no_change


async def users_edit_the_seed_kpis(rng: random.Random) -> None:
    """Between releases an admin gave mttr an expression and renamed mtta (version 2 each)."""
    when = moment(rng)
    for slug, column, value in (
        ("mttr", "expression", "hours(resolved_at - detected_at)"),
        ("mtta", "name", "MTTA ✓ renamed"),
    ):
        await db.engine().run_querystring(
            QueryString(
                f"UPDATE kpi_definition SET {column} = {{}}, version = 2, updated_at = {{}} "
                "WHERE slug = {}",
                value,
                when,
                slug,
            )
        )
    await insert(
        {
            "kpi_revision": [
                {
                    "kpi": slug,
                    "version": 2,
                    "changed_at": when,
                    "changed_by": "admin ✓",
                    "note": None,
                    "changes": "[]",
                }
                for slug in ("mttr", "mtta")
            ]
        }
    )


def expect_seed(found: Diff, before: Snapshot) -> None:
    assert found.changed == {}
    assert set(found.added) == {"migration", "kpi_definition", "kpi_revision"}
    seeded = found.added["kpi_definition"]
    assert sorted(row["slug"] for row in seeded) == sorted(SEED_SLUGS)
    assert all(row["version"] == 1 and row["expression"] is None for row in seeded)
    revisions = found.added["kpi_revision"]
    assert sorted(row["kpi"] for row in revisions) == sorted(SEED_SLUGS)
    assert all(row["version"] == 1 and row["changed_by"] == "migration" for row in revisions)


def expect_expressions(found: Diff, before: Snapshot) -> None:
    # Only the seed KPIs still without an expression change, and only in these three columns.
    waiting = {
        row["slug"]
        for row in before["kpi_definition"].rows.values()
        if row["slug"] in SEED_SLUGS and row["expression"] is None
    }
    assert waiting == {"mtta", "cadence-adherence", "stakeholder-satisfaction"}
    assert set(found.changed) == {"kpi_definition"}
    changed = found.changed["kpi_definition"]
    assert {old["slug"] for old, _ in changed} == waiting
    for old, new in changed:
        assert differing((old, new)) == {"expression", "version", "updated_at"}
        assert new["expression"] and new["version"] == old["version"] + 1
    assert set(found.added) == {"migration", "kpi_revision"}
    versions = {(r["kpi"], r["version"]) for r in found.added["kpi_revision"]}
    assert versions == {(new["slug"], new["version"]) for _, new in changed}


async def recompute_jobs_and_computed_observations(rng: random.Random) -> None:
    """Jobs in every state, and the seed KPIs' observations, as the 08:00 release wrote them."""
    jobs = [
        {
            "kpi": slug,
            "version": rng.choice(INTS),
            "state": state,
            "done": rng.randrange(100),
            "total": 2147483647,
            "written": 0,
            "skipped": rng.randrange(5),
            "after_incident": 2147483000,
            "queued_at": moment(rng),
            "started_at": rng.choice((None, moment(rng))),
            "finished_at": None if state in ("queued", "running") else moment(rng),
            "error": "Ünïcödé failure: {} ?" if state == "failed" else None,
            "runner": "host-1:4242" if state == "running" else None,
            "lease_until": LAST if state == "running" else None,
        }
        for slug, state in zip(
            ("mttr", "mtta", "upgrade-1", "upgrade-2"),
            ("done", "failed", "running", "queued"),
            strict=True,
        )
    ]
    rows: list[dict[str, Any]] = []
    for incident in (1, 5, 1000):
        rows += observation_rows(rng, incident, list(SEED_SLUGS))
    await insert({"kpi_recompute": jobs, "kpi_observation": rows})


def expect_rollups_built(found: Diff, before: Snapshot) -> None:
    expect_no_change(found, before)
    assert "kpi_rollup" not in before  # made by the step, compared with the raw rows after it


def expect_rollups_rebuilt(found: Diff, before: Snapshot) -> None:
    # The rollup rows are rebuilt (sums, stamps, times of change) and gain `residue`.
    assert "residue" not in before["kpi_rollup"].columns
    assert set(found.changed) <= {"kpi_rollup"}
    assert set(found.added) <= {"migration", "kpi_rollup"}


DRIFTED = "drift ✓"
DRIFT_AT = datetime(2150, 6, 15, 12, tzinfo=UTC)  # a day, week and month of its own


async def rollups_with_drifted_sums(rng: random.Random) -> None:
    incident = {
        "id": 4000,
        "key": "INC-DRIFT",
        "title": "drift",
        "severity": "P3",
        "detected_at": DRIFT_AT,
        "resolved_at": None,
    }
    observation = {
        "kpi": "upgrade-3",
        "incident": 4000,
        "timestamp": DRIFT_AT,
        "value": 0.1,
        "source": DRIFTED,
        "confidence": 1.0,
        "definition_version": None,
        "recorded_at": moment(rng),
    }
    await insert({"incident": [incident], "kpi_observation": [observation]})
    await rollups_as_before_exact_sums(DRIFTED)
    s = db.statement()
    drifted = await db.fetch(
        f"SELECT total FROM kpi_rollup WHERE kpi = {s.arg('upgrade-3')} AND severity = 'P3' "
        f"AND grain = 'D' AND start = {s.arg(bucket(DRIFT_AT, 'D'))}",
        s.args,
    )
    assert [row["total"] for row in drifted] == [0.0999755859375]  # what the step must mend


STAGES: dict[str, Stage] = {
    SEED: Stage(expect=expect_seed),
    EXPRESSIONS: Stage(fill=users_edit_the_seed_kpis, expect=expect_expressions),
    ROLLUPS: Stage(fill=recompute_jobs_and_computed_observations, expect=expect_rollups_built),
    EXACT_SUMS: Stage(fill=rollups_with_drifted_sums, expect=expect_rollups_rebuilt),
}


async def test_each_migration_after_the_first_keeps_every_row(
    database: Database, figure: Any
) -> None:
    rng = random.Random(run_seed("MIM_UPGRADE_SEED"))
    compared = groups = 0
    async with pointed_at(database):
        await migrate_to(FIRST)
        await insert(first_release_rows(rng))
        for step in SHIPPED[1:]:
            stage = STAGES.get(step, Stage())
            if stage.fill is not None:
                await stage.fill(rng)
            before = await snapshot(database)
            await migrate_to(step)
            after = await snapshot(database)
            found = diff(before, after)
            assert found.removed == {}, f"{step} removed rows: {found.removed}"
            assert applied_rows(found) == [step]
            stage.expect(found, before)
            if "kpi_rollup" in after:
                groups += await assert_rollups_recomputed()
            compared += found.compared
    figure("upgrade: migrations stepped", len(SHIPPED) - 1)
    figure("upgrade: rows compared", compared)
    figure("upgrade: rollup groups recomputed", groups)


# --- from the first release to the last, by `mim migrate`, then asked over the API -----------

DEFINITION = """
  slug name description formula expression units
  targets { severity persona comparison threshold } dataSources visibility owner reviewCadence
  lastReviewedAt version createdAt updatedAt
  revisions { version changedAt changedBy note changes { field before after } }
  summary { count value }
"""
INCIDENTS = """{ incidents(first: 100) { totalCount edges { node {
  id title severity detectedAt resolvedAt
  alerts { issueTime source } timeline { kind phase occurredAt note }
  milestones { name committedEta deliveredAt } surveyResponses { score submittedAt }
  kpis { kpi { slug } timestamp value source confidence definitionVersion }
} } } }"""
MOMENTS = {
    "lastReviewedAt",
    "createdAt",
    "updatedAt",
    "changedAt",
    "detectedAt",
    "resolvedAt",
    "issueTime",
    "occurredAt",
    "committedEta",
    "deliveredAt",
    "submittedAt",
    "timestamp",
}


def parsed(answer: Any) -> Any:
    """An answer with its date-times parsed, to compare with the rows' values."""
    if isinstance(answer, list):
        return [parsed(item) for item in answer]
    if isinstance(answer, dict):
        return {
            key: datetime.fromisoformat(value)
            if key in MOMENTS and isinstance(value, str)
            else parsed(value)
            for key, value in answer.items()
        }
    return answer


def expected_definitions(rows: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """What an admin's `kpis` says of each filled definition, by slug, from its rows."""
    found = {}
    for d in rows["kpi_definition"]:
        revisions = sorted(
            (r for r in rows["kpi_revision"] if r["kpi"] == d["slug"]),
            key=lambda r: r["version"],
            reverse=True,
        )
        values = [o["value"] for o in rows["kpi_observation"] if o["kpi"] == d["slug"]]
        found[d["slug"]] = {
            "slug": d["slug"],
            "name": d["name"],
            "description": d["description"],
            "formula": d["formula"],
            "expression": d["expression"],
            "units": d["units"],
            "targets": [
                {
                    "severity": t["severity"],
                    "persona": t["persona"].upper() if t["persona"] else None,
                    "comparison": t["comparison"],
                    "threshold": t["threshold"],
                }
                for t in json.loads(d["targets"])
            ],
            "dataSources": json.loads(d["data_sources"]),
            "visibility": d["visibility"].upper(),
            "owner": d["owner"],
            "reviewCadence": d["review_cadence"],
            "lastReviewedAt": d["last_reviewed_at"],
            "version": d["version"],
            "createdAt": d["created_at"],
            "updatedAt": d["updated_at"],
            "revisions": [
                {
                    "version": r["version"],
                    "changedAt": r["changed_at"],
                    "changedBy": r["changed_by"],
                    "note": r["note"],
                    "changes": json.loads(r["changes"]),
                }
                for r in revisions
            ],
            "summary": {"count": len(values), "values": values},
        }
    return found


def expected_incidents(rows: dict[str, list[dict[str, Any]]], slugs: set[str]) -> list[Any]:
    """What `incidents` says, newest first, seeing the observations of `slugs`."""

    def of(table: str, pk: int, order: str, fields: dict[str, str]) -> list[dict[str, Any]]:
        mine = sorted(
            (r for r in rows[table] if r["incident"] == pk), key=lambda r: (r[order], r["id"])
        )
        return [{name: r[column] for name, column in fields.items()} for r in mine]

    nodes = []
    for i in sorted(rows["incident"], key=lambda i: (i["detected_at"], i["id"]), reverse=True):
        pk = i["id"]
        observations = [o for o in rows["kpi_observation"] if o["incident"] == pk]
        nodes.append(
            {
                "id": i["key"],
                "title": i["title"],
                "severity": i["severity"],
                "detectedAt": i["detected_at"],
                "resolvedAt": i["resolved_at"],
                "alerts": of(
                    "alert", pk, "issue_time", {"issueTime": "issue_time", "source": "source"}
                ),
                "timeline": of(
                    "timeline_event",
                    pk,
                    "occurred_at",
                    {"kind": "kind", "phase": "phase", "occurredAt": "occurred_at", "note": "note"},
                ),
                "milestones": of(
                    "milestone",
                    pk,
                    "committed_eta",
                    {
                        "name": "name",
                        "committedEta": "committed_eta",
                        "deliveredAt": "delivered_at",
                    },
                ),
                "surveyResponses": of(
                    "survey_response",
                    pk,
                    "submitted_at",
                    {"score": "score", "submittedAt": "submitted_at"},
                ),
                "kpis": sorted(
                    (
                        {
                            "kpi": {"slug": o["kpi"]},
                            "timestamp": o["timestamp"],
                            "value": o["value"],
                            "source": o["source"],
                            "confidence": o["confidence"],
                            "definitionVersion": o["definition_version"],
                        }
                        for o in observations
                        if o["kpi"] in slugs
                    ),
                    key=by_kpi_and_time,
                ),
            }
        )
    return nodes


def by_kpi_and_time(observation: dict[str, Any]) -> tuple[str, datetime]:
    return observation["kpi"]["slug"], observation["timestamp"]


def assert_summary(answer: dict[str, Any], expected: dict[str, Any], slug: str) -> None:
    values = expected["values"]
    assert answer["count"] == len(values), slug
    if not values:
        assert answer["value"] is None, slug
        return
    # The exact mean, but for the rounding of adding up its groups' exact sums.
    exact = math.fsum(values) / len(values)
    bound = 2**-52 * math.fsum(abs(v) for v in values)
    assert math.isclose(answer["value"], exact, rel_tol=1e-12, abs_tol=bound), slug


async def assert_answers(client: TestClient, rows: dict[str, list[dict[str, Any]]]) -> int:
    """Ask what the rows say, as an admin and as an exec; return the answers compared."""
    definitions = expected_definitions(rows)
    exec_slugs = {slug for slug, d in definitions.items() if d["visibility"] == "EXEC"}
    compared = 0
    for persona, visible in (("admin", set(definitions)), ("exec", exec_slugs)):
        body = await gql(client, f"{{ kpis {{ {DEFINITION} }} }}", persona=persona)
        assert "errors" not in body, body
        answered = {d["slug"]: parsed(d) for d in body["data"]["kpis"]}
        seeds = {"mttr", "cadence-adherence", "stakeholder-satisfaction"}
        assert set(answered) == visible | seeds | ({"mtta"} if persona == "admin" else set())
        for slug in visible:
            answer, expected = answered[slug], dict(definitions[slug])
            assert_summary(answer.pop("summary"), expected.pop("summary"), slug)
            assert answer == expected, slug
            compared += 1
        body = await gql(client, INCIDENTS, persona=persona)
        assert "errors" not in body, body
        connection = body["data"]["incidents"]
        assert connection["totalCount"] == len(rows["incident"])
        nodes = [parsed(edge["node"]) for edge in connection["edges"]]
        for node in nodes:
            node["kpis"].sort(key=by_kpi_and_time)  # by slug: no collation of the database's
        assert nodes == expected_incidents(rows, visible)
        compared += len(nodes)
    hidden = min(set(definitions) - exec_slugs)
    body = await gql(client, f'{{ kpi(slug: "{hidden}") {{ slug }} }}', persona="exec")
    assert body == {"data": {"kpi": None}}
    return compared


async def test_a_first_release_database_upgrades_to_the_last_keeping_every_row(
    database: Database, figure: Any
) -> None:
    rng = random.Random(run_seed("MIM_UPGRADE_SEED"))
    rows = first_release_rows(rng)
    async with pointed_at(database):
        await migrate_to(FIRST)
        filled = await insert(rows)
    before = await snapshot(database)

    migrated = mim_migrate(database)
    assert migrated.returncode == 0, migrated.stderr
    assert migrated.stdout.endswith(f"applied {len(SHIPPED) - 1} migrations\n")

    after = await snapshot(database)
    found = diff(before, after)
    assert found.removed == {} and found.changed == {}
    assert applied_rows(found) == SHIPPED[1:]  # each once
    assert set(found.added) == {"migration", "kpi_definition", "kpi_revision"}
    assert {r["slug"] for r in found.added["kpi_definition"]} == set(SEED_SLUGS)
    assert {r["kpi"] for r in found.added["kpi_revision"]} == set(SEED_SLUGS)
    assert found.compared == filled + 1  # and the first migration's own row
    settings = Settings.from_env({**ENV, "DATABASE_URL": database.url})
    async with pointed_at(database):
        groups = await assert_rollups_recomputed()
        async with TestClient(TestServer(create_app(settings))) as client:
            answers = await assert_answers(client, rows)
    figure("upgrade: rows compared", found.compared)
    figure("upgrade: rollup groups recomputed", groups)
    figure("upgrade: API answers compared with the rows", answers)


# --- two at once, and a newer database -------------------------------------------------------

WAITING = "another mim migrate holds the migration lock; waiting for it\n"


@asynccontextmanager
async def migration_lock_held(database: Database) -> AsyncIterator[None]:
    """Hold the lock `mim migrate` takes, as another `mim migrate` would."""
    if database.path is None:
        connection = await asyncpg.connect(database.url)
        try:
            await connection.execute("SELECT pg_advisory_lock($1)", migrate.LOCK_KEY)
            yield
        finally:
            await connection.close()  # the session's end lets the lock go
        return
    with open(migrate.lock_file(str(database.path)), "a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        yield


async def test_two_mim_migrates_on_a_fresh_database_take_turns(
    database: Database, figure: Any
) -> None:
    async def start() -> asyncio.subprocess.Process:
        return await asyncio.create_subprocess_exec(
            MIM,
            "migrate",
            cwd=ROOT,
            env=database.env(),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )

    # Both certainly meet each other's lock: the test holds it until each says it waits.
    async with migration_lock_held(database):
        processes = [await start(), await start()]
        for process in processes:
            assert process.stderr is not None
            line = await asyncio.wait_for(process.stderr.readline(), timeout=120)
            assert line.decode() == WAITING
    said = []
    for process in processes:
        stdout, stderr = await process.communicate()
        assert process.returncode == 0, stderr.decode()
        assert stderr == b""  # nothing more than that it waited: no error, no traceback
        said.append(stdout.decode().splitlines()[-1])
    # Whichever took the lock first migrated; the other then found nothing to do.
    assert sorted(said) == [f"applied {len(SHIPPED)} migrations", "the database is up to date"]
    recorded = [row["name"] for row in (await snapshot(database))["migration"].rows.values()]
    assert sorted(recorded) == SHIPPED  # each once
    figure("upgrade: concurrent mim migrate runs", len(processes))


@pytest.mark.parametrize("at", [FIRST, "the last"])
async def test_mim_migrate_refuses_a_database_migrated_by_a_newer_release(
    database: Database, figure: Any, at: str
) -> None:
    rng = random.Random(run_seed("MIM_UPGRADE_SEED"))
    async with pointed_at(database):
        await migrate_to(SHIPPED[-1] if at == "the last" else at)
        await insert(first_release_rows(rng))
        await insert(
            {"migration": [{"name": FUTURE, "app_name": "mim", "ran_on": datetime(2099, 12, 31)}]}
        )
    before = await snapshot(database)
    refused = mim_migrate(database)
    assert (refused.returncode, refused.stdout, refused.stderr) == (1, "", NEWER)
    after = await snapshot(database)
    found = diff(before, after)
    assert set(after) == set(before)
    assert (found.changed, found.added, found.removed) == ({}, {}, {})
    figure("upgrade: newer databases refused", 1)


# --- first-release rows a later migration cannot take ----------------------------------------


def a_kpi_named_like_a_seed_kpi(rows: dict[str, list[dict[str, Any]]]) -> None:
    # The last of the four the seed migration inserts: the three before it must not stay.
    rows["kpi_definition"].append({**rows["kpi_definition"][1], "slug": SEED_SLUGS[-1]})


def one_observation_twice(rows: dict[str, list[dict[str, Any]]]) -> None:
    rows["kpi_observation"].append({**rows["kpi_observation"][0], "value": 42.0})


@pytest.mark.parametrize(
    ("rows_it_cannot_take", "failing"),
    [(a_kpi_named_like_a_seed_kpi, SEED), (one_observation_twice, SHIPPED[1])],
)
async def test_a_first_release_database_a_migration_cannot_take_is_left_as_it_was(
    database: Database,
    figure: Any,
    rows_it_cannot_take: Callable[[dict[str, list[dict[str, Any]]]], None],
    failing: str,
) -> None:
    """The first schema allows rows that later migrations refuse: 06:40 makes unique indexes
    over (kpi, incident, timestamp), (kpi, version) and (incident, name) without looking for
    duplicates, and 06:45 inserts the seed KPIs whatever slugs exist. Such a database cannot
    be upgraded as it is (a defect of those migrations, reported, not mended here); this test
    holds that the failure loses nothing: the failed migration leaves no row behind, the ones
    before it stay applied, and `mim migrate` names it and exits 1 without a traceback."""
    rng = random.Random(run_seed("MIM_UPGRADE_SEED"))
    rows = first_release_rows(rng)
    rows_it_cannot_take(rows)
    async with pointed_at(database):
        await migrate_to(FIRST)
        await insert(rows)
    before = await snapshot(database)
    failed = mim_migrate(database)
    assert failed.returncode == 1
    assert failed.stderr.startswith(f"Error: migration {failing} failed ("), failed.stderr
    assert failed.stderr.endswith(
        "); it and the ones after it are not applied, the ones before it are\n"
    )
    assert "Traceback" not in failed.stderr
    after = await snapshot(database)
    found = diff(before, after)
    assert set(after) == set(before)
    assert (found.changed, found.removed) == ({}, {})
    assert set(found.added) <= {"migration"}
    assert applied_rows(found) == SHIPPED[1 : SHIPPED.index(failing)]
    figure("upgrade: failed migrations that left nothing", 1)
