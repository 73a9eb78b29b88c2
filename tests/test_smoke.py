from __future__ import annotations

from tests.conftest import gql

QUERY = "{ viewer { subject personas visibilities } kpis { slug version } }"


async def test_admin_sees_the_four_seed_kpis(client) -> None:
    body = await gql(client, QUERY, persona="admin")
    assert body["data"]["viewer"] == {
        "subject": "tester",
        "personas": ["ADMIN"],
        "visibilities": ["INTERNAL", "EXEC"],
    }
    slugs = [k["slug"] for k in body["data"]["kpis"]]
    assert slugs == ["cadence-adherence", "mtta", "mttr", "stakeholder-satisfaction"]
