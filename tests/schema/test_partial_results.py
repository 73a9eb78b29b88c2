"""Root query fields are nullable: one failing field is null with its error, and the others of the
same query keep their data, byte for byte alike on the compiled plans and the standard executor."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from graphql import GraphQLNonNull

from schema import schema
from server.app import create_app
from server.config import Settings
from tests.conftest import ENV, make_token


@pytest.fixture
async def apps() -> AsyncIterator[tuple[TestClient, TestClient]]:
    """The service with its compiled plans, and with the standard executor alone."""
    fast = Settings.from_env({**ENV, "MIM_FAST_PATH": "1"})
    standard = Settings.from_env({**ENV, "MIM_FAST_PATH": "0"})
    async with (
        TestClient(TestServer(create_app(fast))) as one,
        TestClient(TestServer(create_app(standard))) as other,
    ):
        yield one, other


async def both(
    apps: tuple[TestClient, TestClient], query: str, persona: str = "exec"
) -> dict[str, Any]:
    """POST to both apps; assert the same status and bytes; return the JSON body."""
    answers = []
    for app in apps:
        response = await app.post(
            "/graphql",
            json={"query": query},
            headers={"Authorization": f"Bearer {make_token(persona)}"},
        )
        answers.append((response.status, await response.read()))
    assert answers[0] == answers[1]
    status, raw = answers[0]
    assert status == 200
    body: dict[str, Any] = json.loads(raw)
    return body


def test_every_root_query_field_is_nullable() -> None:
    query_type = schema._schema.query_type
    assert query_type is not None
    required = [n for n, f in query_type.fields.items() if isinstance(f.type, GraphQLNonNull)]
    assert required == []


async def test_a_failing_field_leaves_the_others_their_data(
    apps: tuple[TestClient, TestClient],
) -> None:
    body = await both(apps, "{ a: kpis { slug } b: incidents(first: 0) { totalCount } }")
    assert {kpi["slug"] for kpi in body["data"]["a"]} >= {"mttr"}
    assert body["data"]["b"] is None
    [error] = body["errors"]
    assert error["path"] == ["b"] and error["extensions"]["code"] == "BAD_USER_INPUT"


@pytest.mark.parametrize(
    "query",
    [
        '{ viewer { subject } incidents(last: 2, after: "x") { totalCount } }',
        '{ kpi(slug: "mttr") { slug } incidents(after: "garbage") { totalCount } }',
        "{ viewer { subject } kpis { slug } incidents(first: 101) { totalCount } }",
        '{ kpis { slug } c: kpi(slug: "mttr") { summary(from: "2026-02-01T00:00:00Z", '
        'to: "2026-01-01T00:00:00Z") { count } } }',
    ],
)
async def test_one_bad_widget_nulls_only_itself_on_both_paths(
    apps: tuple[TestClient, TestClient], query: str
) -> None:
    body = await both(apps, query)
    assert body["errors"] and all(error["path"] for error in body["errors"])
    failed = {error["path"][0] for error in body["errors"]}
    kept = {key: value for key, value in body["data"].items() if key not in failed}
    assert kept and all(value is not None for value in kept.values()), body


async def test_a_token_naming_no_persona_gets_every_field_null_with_its_error(
    apps: tuple[TestClient, TestClient],
) -> None:
    body = await both(apps, "{ viewer { subject } kpis { slug } }", persona="auditor")
    assert body["data"] == {"viewer": None, "kpis": None}
    assert sorted(e["path"][0] for e in body["errors"]) == ["kpis", "viewer"]
    assert {e["extensions"]["code"] for e in body["errors"]} == {"FORBIDDEN"}
