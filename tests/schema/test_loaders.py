"""Nested lists are batched: a page costs the same few SQL statements whatever its size.

These are the standard executor's DataLoaders, so the compiled path is off here; its own
statement counts are in tests/schema/test_fast_path.py.
"""

from __future__ import annotations

import re

import pytest

from server import demo
from server.config import Settings
from tests.conftest import ENV, gql

PAGE = """
query ($first: Int!) {
  incidents(first: $first) {
    totalCount
    edges { node {
      id
      alerts { id } timeline { phase } milestones { name } surveyResponses { score }
      kpis {
        value meetsTarget incident { id }
        kpi { slug name summary { count } revisions { version } }
      }
    } }
  }
}
"""


@pytest.fixture
def settings() -> Settings:
    return Settings.from_env({**ENV, "MIM_FAST_PATH": "0"})


@pytest.fixture
async def hundred_incidents() -> None:
    await demo.load(count=120, seed=7)


async def _statements_for_page(client, sql_statements, first: int) -> int:
    sql_statements.statements.clear()
    body = await gql(client, PAGE, {"first": first}, persona="responder")
    assert "errors" not in body, body
    assert len(body["data"]["incidents"]["edges"]) == first
    return sql_statements.count


async def test_page_of_100_costs_the_same_statements_as_a_page_of_5(
    client, hundred_incidents, sql_statements
) -> None:
    small = await _statements_for_page(client, sql_statements, 5)
    large = await _statements_for_page(client, sql_statements, 100)
    assert large == small
    # page, count, alerts, timeline, milestones, surveys, observations, definitions, summaries,
    # revisions, incidents: one statement each.
    assert large <= 11, sql_statements.statements


async def test_observation_kpis_are_loaded_once_per_request(
    client, hundred_incidents, sql_statements
) -> None:
    query = "{ incidents(first: 100) { edges { node { kpis { kpi { slug } } } } } }"
    body = await gql(client, query, persona="admin")
    slugs = {
        k["kpi"]["slug"] for e in body["data"]["incidents"]["edges"] for k in e["node"]["kpis"]
    }
    assert slugs == {"mttr", "mtta", "cadence-adherence", "stakeholder-satisfaction"}
    definition_queries = [
        s for s in sql_statements.statements if re.search(r'FROM "?kpi_definition"?\b', s)
    ]
    assert len(definition_queries) == 1, definition_queries
