"""Definitions as of a date: kpi(slug, asOf:) rebuilt from the revisions, under the policy."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from server.app import create_app
from server.config import Settings
from tests.conftest import EXEC_ONLY, PERSONAS, codes, gql

FIELDS = """
    slug name description formula expression units
    targets { severity persona comparison threshold }
    dataSources visibility owner reviewCadence status lastReviewedAt version createdAt updatedAt
    revisions { version }
"""
AS_OF = f"query ($slug: String!, $at: DateTime) {{ kpi(slug: $slug, asOf: $at) {{ {FIELDS} }} }}"
NOW = f"query ($slug: String!) {{ kpi(slug: $slug) {{ {FIELDS} }} }}"
CREATE = """
mutation ($input: CreateKpiDefinitionInput!) { createKpiDefinition(input: $input) { version } }
"""
UPDATE = """
mutation ($slug: String!, $input: UpdateKpiDefinitionInput!) {
  updateKpiDefinition(slug: $slug, input: $input) { version }
}
"""
RETIRE = "mutation ($slug: String!) { retireKpiDefinition(slug: $slug) { version } }"
REVIEW = "mutation ($slug: String!) { markKpiReviewed(slug: $slug) { version } }"
NEW = {
    "slug": "as-of-probe",
    "name": "Probe",
    "description": "A KPI whose history the tests walk.",
    "formula": "avg(x)",
    "units": "minutes",
    "visibility": "EXEC",
    "owner": "First Owner",
    "reviewCadence": "P30D",
    "targets": [{"severity": "P1", "comparison": "AT_MOST", "threshold": 60}],
}


def stamp() -> str:
    return datetime.now(UTC).isoformat()


async def admin(client: Any, query: str, variables: dict[str, Any]) -> dict[str, Any]:
    body = await gql(client, query, variables)
    assert "errors" not in body, body
    data: dict[str, Any] = body["data"]
    return data


async def as_of(client: Any, at: str, persona: str = "admin", slug: str = "as-of-probe") -> Any:
    body = await gql(client, AS_OF, {"slug": slug, "at": at}, persona=persona)
    assert "errors" not in body, body
    return body["data"]["kpi"]


async def history(client: Any) -> list[tuple[str, dict[str, Any]]]:
    """Walk a KPI through five versions; return (moment, the definition as it then was)."""
    before = stamp()
    seen: list[tuple[str, dict[str, Any]]] = [(before, {})]
    await admin(client, CREATE, {"input": NEW})
    steps: list[tuple[str, dict[str, Any]]] = [
        (UPDATE, {"slug": "as-of-probe", "input": {"owner": "Second Owner"}}),
        (
            UPDATE,
            {
                "slug": "as-of-probe",
                "input": {
                    "targets": [{"comparison": "AT_LEAST", "threshold": 2.5}],
                    "expression": "minutes(resolved_at - detected_at)",
                },
            },
        ),
        (REVIEW, {"slug": "as-of-probe"}),
        (RETIRE, {"slug": "as-of-probe"}),
    ]
    seen.append((stamp(), (await admin(client, NOW, {"slug": "as-of-probe"}))["kpi"]))
    for mutation, variables in steps:
        await admin(client, mutation, variables)
        seen.append((stamp(), (await admin(client, NOW, {"slug": "as-of-probe"}))["kpi"]))
    return seen


@pytest.fixture(params=[True, False], ids=["compiled-plans", "executor"])
async def either_path(request: Any, settings: Settings) -> Any:
    app = create_app(replace(settings, fast_path=request.param))
    async with TestClient(TestServer(app)) as test_client:
        yield test_client


async def test_each_moment_gives_the_definition_as_it_then_stood(either_path) -> None:
    client = either_path
    seen = await history(client)
    assert await as_of(client, seen[0][0]) is None, "before it existed"
    for moment, expected in seen[1:]:
        assert await as_of(client, moment) == expected, moment
    versions = [definition["version"] for _, definition in seen[1:]]
    assert versions == [1, 2, 3, 4, 5]
    assert [d["status"] for _, d in seen[1:]] == ["ACTIVE"] * 4 + ["RETIRED"]
    # A definition as of a date lists the revisions up to its version only.
    assert [r["version"] for r in (await as_of(client, seen[2][0]))["revisions"]] == [2, 1]


@pytest.mark.parametrize("persona", PERSONAS)
async def test_as_of_follows_the_policy_then_and_now(client, persona: str) -> None:
    await admin(client, CREATE, {"input": {**NEW, "visibility": "INTERNAL"}})
    internal_then = stamp()
    await admin(client, UPDATE, {"slug": "as-of-probe", "input": {"visibility": "EXEC"}})
    exec_then = stamp()
    hidden = persona in EXEC_ONLY
    # Internal as it stood then: hidden from exec personas, though it is exec now.
    assert (await as_of(client, internal_then, persona) is None) is hidden
    found = await as_of(client, exec_then, persona)
    assert found is not None and found["visibility"] == "EXEC"
    # Made internal since: hidden from exec personas at every date.
    await admin(client, UPDATE, {"slug": "as-of-probe", "input": {"visibility": "INTERNAL"}})
    assert (await as_of(client, exec_then, persona) is None) is hidden
    assert (await as_of(client, stamp(), persona) is None) is hidden


async def test_seed_kpis_as_of_now_equal_their_current_definition(client) -> None:
    for slug in ("mttr", "mtta", "cadence-adherence", "stakeholder-satisfaction"):
        current = (await admin(client, NOW, {"slug": slug}))["kpi"]
        assert await as_of(client, stamp(), slug=slug) == current


async def test_an_unknown_slug_is_null_at_any_date(client) -> None:
    assert await as_of(client, stamp(), slug="no-such-kpi") is None


@pytest.mark.parametrize("at", ["2026-01-01T00:00:00", "1900-01-01T00:00:00Z", "yesterday"])
async def test_a_bad_as_of_is_bad_input(client, at: str) -> None:
    body = await gql(client, AS_OF, {"slug": "mttr", "at": at})
    assert codes(body) == ["BAD_USER_INPUT"]
