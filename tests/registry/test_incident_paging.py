"""Relay paging of incidents: first/after forward, last/before backward, and PageInfo's four fields.

Both directions walk 30 incidents (ties on detectedAt among them) for every persona, on the
compiled plans and on the standard executor, against the order the contract gives: newest first
by detectedAt, ties the more recently created first.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from registry.tables import Incident
from server.app import FAST_PATH, create_app
from server.config import Settings
from tests.conftest import ENV, PERSONAS, codes, gql

PAGE = """
query ($first: Int, $after: String, $last: Int, $before: String, $severity: Severity) {
  incidents(first: $first, after: $after, last: $last, before: $before, severity: $severity) {
    totalCount
    edges { cursor node { id } }
    pageInfo { hasNextPage hasPreviousPage startCursor endCursor }
  }
}
"""
UPSERT = """
mutation ($input: IncidentInput!) { upsertIncident(input: $input) { id } }
"""
SEVERITIES = ("P1", "P2", "P3", "P4")
START = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture(params=["plan", "executor"])
async def app(request: pytest.FixtureRequest) -> AsyncIterator[TestClient]:
    """The service with its compiled plans, or with the standard executor alone."""
    fast_path = "1" if request.param == "plan" else "0"
    settings = Settings.from_env({**ENV, "MIM_FAST_PATH": fast_path})
    async with TestClient(TestServer(create_app(settings))) as client:
        yield client


@pytest.fixture
async def made(app: TestClient) -> list[tuple[str, str]]:
    """Create 30 incidents, some detected at the same instant; return (id, severity) in the
    order the contract pages them."""
    created: list[tuple[datetime, int, str, str]] = []
    for n in range(30):
        detected = START + timedelta(hours=n * 7 % 20)  # 20 instants for 30: ties
        key, severity = f"INC-{n:03d}", SEVERITIES[n * 3 % 4]
        incident = {
            "id": key,
            "title": key,
            "severity": severity,
            "detectedAt": detected.isoformat(),
        }
        body = await gql(app, UPSERT, {"input": incident}, persona="ingest")
        assert "errors" not in body, body
        created.append((detected, n, key, severity))
    created.sort(reverse=True)  # newest first; ties: the later created first
    assert len({c[0] for c in created}) < len(created)  # there are ties
    return [(key, severity) for _, _, key, severity in created]


async def page(client: TestClient, persona: str, **arguments: Any) -> dict[str, Any]:
    body = await gql(client, PAGE, arguments, persona=persona)
    assert "errors" not in body, body
    connection: dict[str, Any] = body["data"]["incidents"]
    edges = connection["edges"]
    info = connection["pageInfo"]
    assert info["startCursor"] == (edges[0]["cursor"] if edges else None)
    assert info["endCursor"] == (edges[-1]["cursor"] if edges else None)
    return connection


def ids(connection: dict[str, Any]) -> list[str]:
    return [edge["node"]["id"] for edge in connection["edges"]]


async def walk_forward(
    client: TestClient, persona: str, size: int, **where: Any
) -> list[dict[str, Any]]:
    pages = [await page(client, persona, first=size, **where)]
    while pages[-1]["pageInfo"]["hasNextPage"]:
        after = pages[-1]["pageInfo"]["endCursor"]
        pages.append(await page(client, persona, first=size, after=after, **where))
        assert len(pages) <= 31
    return pages


async def walk_backward(
    client: TestClient, persona: str, size: int, **where: Any
) -> list[dict[str, Any]]:
    pages = [await page(client, persona, last=size, **where)]
    while pages[-1]["pageInfo"]["hasPreviousPage"]:
        before = pages[-1]["pageInfo"]["startCursor"]
        pages.append(await page(client, persona, last=size, before=before, **where))
        assert len(pages) <= 31
    return pages


def check_walk(pages: list[dict[str, Any]], expected: list[str], size: int, forward: bool) -> None:
    """Check a walk covers `expected` in order, each page's PageInfo exact."""
    ordered = pages if forward else pages[::-1]
    assert [key for p in ordered for key in ids(p)] == expected
    for index, connection in enumerate(pages):
        info = connection["pageInfo"]
        assert connection["totalCount"] == len(expected)
        last_page = index == len(pages) - 1
        more_on, back_on = ("hasNextPage", "hasPreviousPage")[:: 1 if forward else -1]
        assert info[more_on] is not last_page  # more in the walk's direction
        assert info[back_on] is (index > 0)  # the cursor's side: the pages walked
        assert len(ids(connection)) == (size if not last_page else len(ids(connection)))
        assert 0 < len(ids(connection)) <= size


@pytest.mark.parametrize("persona", PERSONAS)
async def test_walking_forward_and_backward_gives_the_contracts_order(
    app: TestClient, made: list[tuple[str, str]], persona: str
) -> None:
    expected = [key for key, _ in made]
    sizes = (1, 7, 30, 100) if persona == "admin" else (7,)
    for size in sizes:
        check_walk(await walk_forward(app, persona, size), expected, size, forward=True)
        check_walk(await walk_backward(app, persona, size), expected, size, forward=False)
    p1 = [key for key, severity in made if severity == "P1"]
    check_walk(await walk_forward(app, persona, 3, severity="P1"), p1, 3, forward=True)
    check_walk(await walk_backward(app, persona, 3, severity="P1"), p1, 3, forward=False)


async def test_the_compiled_plans_serve_the_new_arguments_and_fields(
    made: list[tuple[str, str]], app: TestClient
) -> None:
    fast_path = app.server.app.get(FAST_PATH)
    if fast_path is None:
        pytest.skip("the standard executor alone")
    served = fast_path.served
    forward = await page(app, "exec", first=5)
    await page(app, "exec", last=5, before=forward["pageInfo"]["endCursor"])
    await page(app, "exec", first=5, after=forward["pageInfo"]["endCursor"])
    assert fast_path.served == served + 3


async def test_back_and_forth_from_a_page_meets_the_same_pages(
    app: TestClient, made: list[tuple[str, str]]
) -> None:
    one = await page(app, "exec", first=6)
    two = await page(app, "exec", first=6, after=one["pageInfo"]["endCursor"])
    back = await page(app, "exec", last=6, before=two["pageInfo"]["startCursor"])
    assert ids(back) == ids(one)
    assert back["pageInfo"] == {**one["pageInfo"], "hasNextPage": True}
    again = await page(app, "exec", last=3, before=two["pageInfo"]["endCursor"])
    assert ids(again) == ids(two)[2:5]


async def test_pages_beyond_either_end_are_empty(
    app: TestClient, made: list[tuple[str, str]]
) -> None:
    newest = await page(app, "exec", first=1)
    before_the_first = await page(app, "exec", last=5, before=newest["pageInfo"]["startCursor"])
    assert before_the_first["edges"] == []
    assert before_the_first["pageInfo"] == {
        "hasNextPage": True,  # the first incident itself follows
        "hasPreviousPage": False,
        "startCursor": None,
        "endCursor": None,
    }
    oldest = await page(app, "exec", last=1)
    assert ids(oldest) == [made[-1][0]]
    assert oldest["pageInfo"]["hasNextPage"] is False
    assert oldest["pageInfo"]["hasPreviousPage"] is True
    after_the_last = await page(app, "exec", first=5, after=oldest["pageInfo"]["endCursor"])
    assert after_the_last["edges"] == []
    assert after_the_last["pageInfo"]["hasNextPage"] is False
    assert after_the_last["pageInfo"]["hasPreviousPage"] is True
    assert after_the_last["totalCount"] == 30


async def test_no_incidents_is_an_empty_page_either_way(app: TestClient) -> None:
    for arguments in ({}, {"first": 3}, {"last": 3}):
        connection = await page(app, "exec", **arguments)
        assert connection["edges"] == [] and connection["totalCount"] == 0
        assert connection["pageInfo"] == {
            "hasNextPage": False,
            "hasPreviousPage": False,
            "startCursor": None,
            "endCursor": None,
        }


async def test_a_cursor_from_another_filter_is_a_position(
    app: TestClient, made: list[tuple[str, str]]
) -> None:
    everything = await page(app, "responder", first=30)
    cursors = {edge["node"]["id"]: edge["cursor"] for edge in everything["edges"]}
    order = [key for key, _ in made]
    for index in (0, 9, 17, 29):
        key = order[index]
        newer = [k for k, s in made[:index] if s == "P1"]
        older = [k for k, s in made[index + 1 :] if s == "P1"]
        at_or_newer = [k for k, s in made[: index + 1] if s == "P1"]
        at_or_older = [k for k, s in made[index:] if s == "P1"]
        forward = await page(app, "responder", first=30, after=cursors[key], severity="P1")
        assert ids(forward) == older
        assert forward["pageInfo"]["hasPreviousPage"] is bool(at_or_newer)
        backward = await page(app, "responder", last=30, before=cursors[key], severity="P1")
        assert ids(backward) == newer
        assert backward["pageInfo"]["hasNextPage"] is bool(at_or_older)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"first": 2, "last": 2}, "not both"),
        ({"last": 2, "after": "A"}, "after pages forward"),
        ({"first": 2, "before": "A"}, "before pages backward"),
        ({"after": "A", "before": "B"}, "after pages forward"),
        ({"last": 0}, "last must be between 1 and 100"),
        ({"last": 101}, "last must be between 1 and 100"),
        ({"last": 2, "before": "not-a-cursor"}, "before is not a cursor"),
    ],
    ids=["first-and-last", "last-after", "first-before", "after-before", "last-0", "last-101",
         "bad-before"],
)  # fmt: skip
async def test_a_mix_of_directions_or_a_bad_size_is_refused_and_writes_nothing(
    app: TestClient, made: list[tuple[str, str]], arguments: dict[str, Any], message: str
) -> None:
    before = await Incident.count()
    for persona in PERSONAS:
        body = await gql(app, PAGE, arguments, persona=persona)
        assert codes(body) == ["BAD_USER_INPUT"], body
        assert message in body["errors"][0]["message"], body
        assert (body["data"] or {}).get("incidents") is None
    assert await Incident.count() == before
