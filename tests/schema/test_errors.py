"""Every error leaves with a contract code; faults are masked."""

from __future__ import annotations

import asyncio
import gc
import re
import warnings

import strawberry
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from graphql import GraphQLError, parse

from registry.errors import BadInput, Conflict, Forbidden
from schema import UNSTARTED_RESOLVER
from schema.errors import INTERNAL_MESSAGE, coded
from server.app import create_app
from server.config import Settings
from tests.conftest import PERSONAS, codes, gql, make_token


def test_unexpected_exception_in_a_resolver_is_masked_as_internal() -> None:
    error = GraphQLError(
        "connection to 10.0.0.5 refused: password=hunter2",
        path=["kpis"],
        original_error=RuntimeError("connection to 10.0.0.5 refused: password=hunter2"),
    )
    shown = coded(error)
    assert shown.message == INTERNAL_MESSAGE
    assert shown.extensions == {"code": "INTERNAL"}
    assert shown.original_error is None


def test_a_value_the_service_cannot_serialize_is_masked_as_internal() -> None:
    raised = GraphQLError("Float cannot represent non numeric value: nan")
    shown = coded(GraphQLError(raised.message, path=["kpis", 0, "value"], original_error=raised))
    assert (shown.message, shown.extensions) == (INTERNAL_MESSAGE, {"code": "INTERNAL"})


def test_executor_error_over_a_variable_is_bad_user_input() -> None:
    variable = parse("query ($no: Boolean) { viewer { subject @skip(if: $no) } }")
    node = variable.definitions[0].variable_definitions[0].variable  # type: ignore[attr-defined]
    raised = GraphQLError("Argument 'if' has invalid value", node)
    shown = coded(GraphQLError(raised.message, path=["viewer"], original_error=raised))
    assert (shown.message, shown.extensions) == (raised.message, {"code": "BAD_USER_INPUT"})


def test_service_errors_keep_their_message_and_code() -> None:
    for raised, code in (
        (BadInput("bad"), "BAD_USER_INPUT"),
        (Conflict("c"), "CONFLICT"),
        (Forbidden("f"), "FORBIDDEN"),
    ):
        shown = coded(GraphQLError(raised.message, path=["x"], original_error=raised))
        assert (shown.message, shown.extensions) == (raised.message, {"code": code})


async def test_syntax_error_is_bad_user_input(client) -> None:
    body = await gql(client, "{ kpis { slug ")
    assert codes(body) == ["BAD_USER_INPUT"]
    assert "data" not in body


async def test_unknown_field_is_bad_user_input(client) -> None:
    body = await gql(client, "{ kpis { slug secretColumn } }")
    assert codes(body) == ["BAD_USER_INPUT"]


async def test_naive_datetime_variable_is_bad_user_input(client) -> None:
    query = "query ($t: DateTime) { kpis { summary(from: $t) { count } } }"
    body = await gql(client, query, {"t": "2026-01-01T10:00:00"})
    assert codes(body) == ["BAD_USER_INPUT"]
    assert "offset" in body["errors"][0]["message"]


async def test_naive_datetime_literal_is_bad_user_input(client) -> None:
    body = await gql(client, '{ kpis { summary(from: "2026-01-01T10:00:00") { count } } }')
    assert codes(body) == ["BAD_USER_INPUT"]


# `kpis` and `kpi(slug: "mttr")` both wait on mttr's revisions; the failing `summary` next to
# the second makes the executor cancel that resolver, which must not cancel the first one's wait.
SHARED_KEY_WITH_A_FAILING_SIBLING = """{
  kpis { slug revisions { version } }
  kpi(slug: "mttr") {
    revisions { version }
    summary(from: "2026-03-01T00:00:00Z", to: "2026-03-01T00:00:00Z") { count }
  }
}"""


async def test_a_failing_field_does_not_cancel_a_field_sharing_its_batch(client) -> None:
    for persona in PERSONAS:
        body = await gql(client, SHARED_KEY_WITH_A_FAILING_SIBLING, persona=persona)
        assert codes(body) == ["BAD_USER_INPUT"], (persona, body)
        assert body["errors"][0]["path"] == ["kpi", "summary"]
        assert body["data"]["kpi"] is None  # summary is non-null, so its parent goes
        mttr = [k for k in body["data"]["kpis"] if k["slug"] == "mttr"]
        assert len(mttr) == 1 and mttr[0]["revisions"], (persona, body)


async def _cancelled_elsewhere(request: web.Request) -> web.Response:
    future = asyncio.get_running_loop().create_future()
    future.cancel()
    await future  # raises CancelledError though nothing cancelled this request
    raise AssertionError("unreachable")


async def test_a_stray_cancellation_gets_a_coded_internal_error_not_a_dropped_connection(
    settings: Settings,
) -> None:
    app = create_app(settings)
    app.router.add_get("/stray", _cancelled_elsewhere)
    async with TestClient(TestServer(app)) as client:
        response = await client.get(
            "/stray", headers={"Authorization": f"Bearer {make_token('admin')}"}
        )
        assert response.status == 500
        body = await response.json()
        # The connection stays usable: the next request on it is answered.
        again = await gql(client, "{ viewer { subject } }")
    assert body["errors"][0]["extensions"]["code"] == "INTERNAL"
    assert body["errors"][0]["message"] == INTERNAL_MESSAGE
    assert again["data"]["viewer"]["subject"]


@strawberry.type
class _Item:
    n: int

    @strawberry.field
    async def x(self) -> int:
        return self.n

    @strawberry.field
    async def y(self) -> int:
        return self.n


@strawberry.type
class _RaceQuery:
    """`fail` raises in the loop turn where `items` returns its list (both wait on one gate)."""

    @strawberry.field
    async def fail(self, info: strawberry.Info) -> int:
        await info.context["gate"]
        raise ValueError("boom")

    @strawberry.field
    async def items(self, info: strawberry.Info) -> list[_Item]:
        await info.context["gate"]
        return [_Item(n=n) for n in range(3)]


class _QuietSchema(strawberry.Schema):
    def process_errors(self, errors: list[GraphQLError], execution_context: object = None) -> None:
        """Log nothing: a logged error's traceback would keep the coroutines from collection."""


async def test_the_executor_leaves_resolvers_of_cancelled_siblings_unstarted() -> None:
    """Why UNSTARTED_RESOLVER is silenced, and a sign for when it no longer needs to be.

    The executor has just made a task per item (each with two async fields) when `fail` raises,
    and cancels them before they start. If this test fails because nothing was recorded,
    graphql-core has stopped doing this: drop the filter in schema/__init__.py and pyproject.toml.
    """
    gate = asyncio.get_running_loop().create_future()
    asyncio.get_running_loop().call_later(0.01, gate.set_result, None)
    with warnings.catch_warnings(record=True) as recorded:
        warnings.simplefilter("always")
        result = await _QuietSchema(query=_RaceQuery).execute(
            "{ fail items { x y } }", context_value={"gate": gate}
        )
        data, errors = result.data, [error.message for error in result.errors or []]
        del result  # its errors' tracebacks hold the executor's frames
        await asyncio.sleep(0.05)  # let the cancelled tasks finish
        gc.collect()
    assert data is None
    assert errors == ["boom"]
    messages = [str(w.message) for w in recorded if w.category is RuntimeWarning]
    assert messages, "graphql-core now starts (or closes) every resolver: drop the filter"
    assert all(re.fullmatch(UNSTARTED_RESOLVER, message) for message in messages), messages
