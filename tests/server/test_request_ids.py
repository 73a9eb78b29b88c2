"""X-Request-ID: a caller's short printable id is kept, anything else replaced, one made when
absent, and echoed on every answer (GraphQL on both paths, REST, health, errors, 401, 413)."""

from __future__ import annotations

import io
import json
import re

import pytest
from aiohttp.test_utils import TestClient

from tests.conftest import make_token

MADE = re.compile(r"[0-9a-f]{32}")


def bearer(persona: str = "exec") -> dict[str, str]:
    return {"Authorization": f"Bearer {make_token(persona)}"}


async def answer_of(client: TestClient, kind: str, request_id: str | None) -> tuple[int, str]:
    """Make one kind of request; return its status and the X-Request-ID it carried back."""
    headers = {} if request_id is None else {"X-Request-ID": request_id}
    if kind == "plan":
        r = await client.post("/graphql", json={"query": "{ kpis { slug } }"},
                              headers={**headers, **bearer()})  # fmt: skip
    elif kind == "executor":
        r = await client.post("/graphql", json={"query": "{ kpis { slug revisions { version } } }"},
                              headers={**headers, **bearer()})  # fmt: skip
    elif kind == "graphql-error":
        r = await client.post(
            "/graphql", json={"query": "{ nope }"}, headers={**headers, **bearer()}
        )
    elif kind == "rest":
        r = await client.get("/kpis/mttr", headers={**headers, **bearer()})
    elif kind == "health":
        r = await client.get("/healthz", headers=headers)
    elif kind == "unauthenticated":
        r = await client.post("/graphql", json={"query": "{ kpis { slug } }"}, headers=headers)
    elif kind == "too-large":
        body = io.BytesIO(json.dumps({"query": "{ kpis { slug } }", "x": "y" * 2**20}).encode())
        sent = {**headers, **bearer(), "Content-Type": "application/json"}
        r = await client.post("/graphql", data=body, headers=sent)
    elif kind == "unknown-route":
        r = await client.get("/nowhere", headers={**headers, **bearer()})
    elif kind == "bad-body":
        r = await client.post("/graphql", data=b"{", headers={**headers, **bearer(),
                              "Content-Type": "application/json"})  # fmt: skip
    else:
        raise AssertionError(kind)
    return r.status, r.headers.get("X-Request-ID", "")


KINDS = {
    "plan": 200, "executor": 200, "graphql-error": 200, "rest": 200, "health": 200,
    "unauthenticated": 401, "too-large": 413, "unknown-route": 404, "bad-body": 400,
}  # fmt: skip


@pytest.mark.parametrize("kind", sorted(KINDS))
async def test_a_callers_request_id_is_echoed_on_every_answer(
    client: TestClient, kind: str
) -> None:
    status, echoed = await answer_of(client, kind, "checkout-7f3a:retry/2")
    assert status == KINDS[kind]
    assert echoed == "checkout-7f3a:retry/2"


@pytest.mark.parametrize("kind", sorted(KINDS))
async def test_one_is_made_when_absent(client: TestClient, kind: str) -> None:
    status, first = await answer_of(client, kind, None)
    _, second = await answer_of(client, kind, None)
    assert status == KINDS[kind]
    assert MADE.fullmatch(first) and MADE.fullmatch(second)
    assert first != second


@pytest.mark.parametrize(
    "sent",
    ["x" * 129, "has space", "tab\there", "", "caf\u00e9"],
    ids=["too-long", "space", "tab", "empty", "non-ascii"],
)
async def test_an_unfit_id_is_replaced(client: TestClient, sent: str) -> None:
    status, echoed = await answer_of(client, "plan", sent)
    assert status == 200
    assert MADE.fullmatch(echoed), echoed


async def test_the_longest_accepted_id_is_kept(client: TestClient) -> None:
    longest = "a" * 127 + "~"
    _, echoed = await answer_of(client, "rest", longest)
    assert echoed == longest
