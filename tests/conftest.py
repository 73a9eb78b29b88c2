"""Shared fixtures: a migrated database (SQLite or PostgreSQL), the app over real HTTP, real tokens.

TEST_DATABASE_URL picks the engine; by default a fresh SQLite file. The database is rebuilt from
the migrations once per run and emptied back to the seeded state before every test.
"""

from __future__ import annotations

import json
import os
import random
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from hypothesis import HealthCheck, Phase, given, seed
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

_TMP = Path(tempfile.mkdtemp(prefix="mim-tests-"))
DATABASE_URL = os.environ.get("TEST_DATABASE_URL") or f"sqlite:///{_TMP / 'test.sqlite3'}"
os.environ["DATABASE_URL"] = DATABASE_URL  # piccolo_conf reads it at import, so before any import
TEST_SECRET = "test-secret-that-is-long-enough-for-hs256-0123456789"
ENV = {
    "DATABASE_URL": DATABASE_URL,
    "MIM_JWT_SECRET": TEST_SECRET,
    "MIM_JWT_SECRET_FILE": str(_TMP / "unused-secret"),
    # A definition mutation waits for its recompute (the tests' data is small), and no runner
    # looks for jobs on a timer, so no statement runs that a test did not ask for.
    "MIM_RECOMPUTE_WAIT": "3600",
    "MIM_RECOMPUTE_POLL": "0",
    # Every request is answered afresh, so that tests count what a plan or the executor does;
    # kept answers are tested on their own (tests/server/test_answers.py) and by the leak search.
    "MIM_ANSWER_CACHE": "0",
    # Tests of interleaving put more requests in flight at once than a worker admits by default,
    # on a loop their own clients slow down; the bound, its adaptation to the loop's lag and
    # their defaults are tested on their own (test_shed.py, test_overload.py).
    "MIM_MAX_INFLIGHT": "1000",
    "MIM_SHED_LAG": "0",
}

from aiohttp.test_utils import TestClient, TestServer  # noqa: E402
from aiohttp.web_runner import BaseRunner  # noqa: E402

from registry import db  # noqa: E402
from registry.tables import TABLES, KpiDefinition, KpiRevision  # noqa: E402
from server import shed  # noqa: E402
from server.app import create_app  # noqa: E402
from server.config import Settings  # noqa: E402

PERSONAS = ("exec", "stakeholder", "responder", "ingest", "admin")
EXEC_ONLY = ("exec", "stakeholder")
SEES_INTERNAL = ("responder", "ingest", "admin")


def is_postgres() -> bool:
    return DATABASE_URL.startswith("postgres")


def pytest_report_header(config: pytest.Config) -> str:
    engine = "PostgreSQL" if is_postgres() else "SQLite"
    return f"database: {engine} ({DATABASE_URL.rsplit('@', 1)[-1]})"


async def _reset_schema() -> None:
    if is_postgres():
        await db.engine().run_ddl("DROP SCHEMA public CASCADE")
        await db.engine().run_ddl("CREATE SCHEMA public")
    else:
        Path(db.engine().path).unlink(missing_ok=True)  # type: ignore[attr-defined]


@pytest.fixture(scope="session")
async def seeded() -> dict[str, list[dict[str, Any]]]:
    """Migrate a fresh database once, and return the seeded rows to restore before each test."""
    from piccolo.apps.migrations.commands.forwards import run_forwards

    await _reset_schema()
    result = await run_forwards(app_name="mim")
    assert result.success, result.message
    return {
        "definitions": await KpiDefinition.select(),
        "revisions": await KpiRevision.select(
            *(c for c in KpiRevision.all_columns() if c._meta.name != "id")
        ),
    }


@pytest.fixture(autouse=True)
async def clean_db(seeded: dict[str, list[dict[str, Any]]]) -> None:
    """Empty every table, then put the seed KPIs back as the migration left them."""
    for table in reversed(TABLES):
        await table.delete(force=True)
    await KpiDefinition.insert(*(KpiDefinition(_data=row) for row in seeded["definitions"]))
    await KpiRevision.insert(*(KpiRevision(_data=row) for row in seeded["revisions"]))


@pytest.fixture
def settings() -> Settings:
    return Settings.from_env(ENV)


class ServiceServer(TestServer):
    """aiohttp's test server, serving as `mim serve` does: through server.shed.Runner."""

    async def _make_runner(self, **kwargs: Any) -> BaseRunner:
        return shed.Runner(self.app, **kwargs)


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[TestClient]:
    async with TestClient(ServiceServer(create_app(settings))) as test_client:
        yield test_client


def make_token(
    persona: Any = "admin",
    *,
    sub: Any = "tester",
    secret: str = TEST_SECRET,
    algorithm: str = "HS256",
    ttl: int = 600,
    **claims: Any,
) -> str:
    """Return a real signed token; pass persona=None or sub=None to leave the claim out."""
    now = int(time.time())
    payload: dict[str, Any] = {"iat": now, "exp": now + ttl, **claims}
    if persona is not None:
        payload["persona"] = persona
    if sub is not None:
        payload["sub"] = sub
    return jwt.encode(payload, secret, algorithm=algorithm)


async def gql(
    client: TestClient,
    query: str,
    variables: dict[str, Any] | None = None,
    *,
    persona: Any = "admin",
    token: str | None = None,
) -> dict[str, Any]:
    """POST a GraphQL request with a bearer token; return the JSON body (asserting HTTP 200)."""
    token = token if token is not None else make_token(persona)
    response = await client.post(
        "/graphql",
        json={"query": query, "variables": variables or {}},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert response.status == 200, await response.text()
    body: dict[str, Any] = await response.json()
    return body


def codes(body: dict[str, Any]) -> list[str]:
    """Return the extensions.code of every error in a GraphQL response."""
    return [e["extensions"]["code"] for e in body.get("errors", [])]


class StatementCounter:
    """Counts the SQL statements the engine runs, by wrapping its one entry point."""

    def __init__(self) -> None:
        self.statements: list[str] = []

    @property
    def count(self) -> int:
        return len(self.statements)


@pytest.fixture
def sql_statements(monkeypatch: pytest.MonkeyPatch) -> StatementCounter:
    """Count statements by wrapping the engine class's entry point (engines have __slots__) and
    the lean read path, db.fetch."""
    engine_class = type(db.engine())
    counter = StatementCounter()
    original = engine_class.run_querystring

    async def counting(self: Any, querystring: Any, in_pool: bool = True) -> Any:
        counter.statements.append(str(querystring))
        return await original(self, querystring, in_pool=in_pool)

    original_fetch = db.fetch

    async def counting_fetch(sql: str, args: Any) -> Any:
        counter.statements.append(sql)
        return await original_fetch(sql, args)

    monkeypatch.setattr(engine_class, "run_querystring", counting)
    monkeypatch.setattr(db, "fetch", counting_fetch)
    return counter


FIGURES_FILE = os.environ.get("MIM_FIGURES_FILE")
# Counts that helpers deep in a test add to; flushed as figures after each test.
COUNTS: Counter[str] = Counter()


@pytest.fixture
def figure() -> Any:
    """Return a recorder of security figures; `make security` prints them.

    Counts are summed by name over the run; a measurement (a latency in ms, a memory figure)
    passes `worst=True` and the largest value recorded under its name is shown.
    """

    def record(name: str, value: float, *, worst: bool = False) -> None:
        if FIGURES_FILE:
            row = {"name": name, "value": value, "how": "max" if worst else "sum"}
            with open(FIGURES_FILE, "a") as handle:
                handle.write(json.dumps(row) + "\n")

    return record


@pytest.fixture(autouse=True)
def _flush_counts(figure: Any) -> Any:
    yield
    for name, value in COUNTS.items():
        figure(name, value)
    COUNTS.clear()


SEEDS: dict[str, int] = {}


def run_seed(variable: str) -> int:
    """Return the seed named by an environment variable, or a fresh one, and remember it.

    The run's seeds are printed at the end of every run, so a failure can be replayed exactly.
    """
    SEEDS[variable] = int(os.environ.get(variable) or random.randrange(2**32))
    return SEEDS[variable]


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if SEEDS:
        replay = " ".join(f"{name}={value}" for name, value in sorted(SEEDS.items()))
        terminalreporter.write_line(f"generated inputs: replay this run with {replay}")


def draw_examples(strategy: st.SearchStrategy[Any], count: int, seed_value: int) -> list[Any]:
    """Return `count` examples of `strategy`, drawn by Hypothesis under a synchronous @given."""
    drawn: list[Any] = []

    @seed(seed_value)
    @hypothesis_settings(
        max_examples=count,
        deadline=None,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=[
            HealthCheck.function_scoped_fixture,
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.large_base_example,
        ],
    )
    @given(strategy)
    def collect(example: Any) -> None:
        drawn.append(example)

    collect()
    return drawn
