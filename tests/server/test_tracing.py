"""OpenTelemetry: off unless the OTEL_* variables ask; when on, a server span per request holding
a GraphQL operation span (named and attributed as the conventions say) on both paths, with the
request id, and on PostgreSQL a span per SQL statement under it. Spans go to the SDK's in-memory
exporter."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import replace

import pytest
from aiohttp.test_utils import TestClient, TestServer
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from server import tracing
from server.app import create_app
from server.config import Settings
from server.observe import TRACING
from tests.conftest import ENV, is_postgres, make_token

PLAN = "query ExecDashboard { kpis { slug name units } }"
EXECUTOR = "query Revisions { kpis { slug revisions { version } } }"


@pytest.fixture(scope="module")
def exporter() -> Iterator[InMemorySpanExporter]:
    found = InMemorySpanExporter()
    yield found
    found.shutdown()


@pytest.fixture
async def traced(settings: Settings, exporter: InMemorySpanExporter) -> AsyncIterator[TestClient]:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    app = create_app(settings, tracing=tracing.Tracing(provider))
    async with TestClient(TestServer(app)) as client:
        exporter.clear()
        yield client


async def ask(client: TestClient, query: str, request_id: str) -> None:
    response = await client.post(
        "/graphql",
        json={"query": query},
        headers={"Authorization": f"Bearer {make_token('exec')}", "X-Request-ID": request_id},
    )
    assert response.status == 200
    assert "errors" not in await response.json()


def tree(
    spans: tuple[ReadableSpan, ...], request_id: str
) -> tuple[ReadableSpan, ReadableSpan, list[ReadableSpan]]:
    """Return the request's server span, its GraphQL span and the SQL spans under that."""
    (server,) = [
        s for s in spans
        if s.kind is SpanKind.SERVER and (s.attributes or {}).get("mim.request_id") == request_id
    ]  # fmt: skip
    assert server.context is not None
    children = [
        s for s in spans if s.parent is not None and s.parent.span_id == server.context.span_id
    ]
    (operation,) = [s for s in children if (s.attributes or {}).get("graphql.operation.type")]
    assert operation.context is not None
    statements = [
        s for s in spans
        if s.parent is not None and s.parent.span_id == operation.context.span_id
        and s.kind is SpanKind.CLIENT
    ]  # fmt: skip
    return server, operation, statements


@pytest.mark.parametrize(
    ("query", "name", "path"),
    [(PLAN, "ExecDashboard", "plan"), (EXECUTOR, "Revisions", "executor")],
    ids=["plan", "executor"],
)
async def test_one_query_makes_a_request_span_holding_its_operation_and_statements(
    traced: TestClient, exporter: InMemorySpanExporter, query: str, name: str, path: str
) -> None:
    await ask(traced, query, f"trace-{path}")
    server, operation, statements = tree(exporter.get_finished_spans(), f"trace-{path}")
    assert server.name == "POST /graphql"
    assert operation.name == f"query {name}"
    attributes = dict(operation.attributes or {})
    assert attributes["graphql.operation.type"] == "query"
    assert attributes["graphql.operation.name"] == name
    assert attributes["graphql.document"] == query
    assert attributes["mim.graphql.path"] == path
    assert server.context.trace_id == operation.context.trace_id  # type: ignore[union-attr]
    if is_postgres():
        assert statements, "asyncpg statements are traced under the operation"
        assert all(s.context.trace_id == server.context.trace_id for s in statements)  # type: ignore[union-attr]
    else:
        assert statements == []  # SQLite statements are not traced


async def test_no_spans_without_tracing(settings: Settings, exporter: InMemorySpanExporter) -> None:
    app = create_app(settings)
    async with TestClient(TestServer(app)) as client:
        exporter.clear()
        await ask(client, PLAN, "untraced")
    assert exporter.get_finished_spans() == ()


@pytest.mark.parametrize(
    ("env", "wanted"),
    [
        ({}, False),
        ({"OTEL_TRACES_EXPORTER": "none"}, False),
        ({"OTEL_TRACES_EXPORTER": "console"}, True),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4318/v1/traces"}, True),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x", "OTEL_SDK_DISABLED": "true"}, False),
    ],
)
def test_tracing_is_off_unless_the_environment_asks(env: dict[str, str], wanted: bool) -> None:
    assert tracing.wanted(env) is wanted
    assert Settings.from_env({**ENV, **env}).tracing is wanted


def test_an_unknown_exporter_is_refused() -> None:
    with pytest.raises(tracing.TracingUnavailable, match="OTEL_TRACES_EXPORTER"):
        tracing.from_env({"OTEL_TRACES_EXPORTER": "zipkin"})


async def test_the_environment_configures_an_exporter(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "mim-under-test")
    app = create_app(replace(settings, tracing=True))
    configured = app[TRACING]
    try:
        assert configured.provider.resource.attributes["service.name"] == "mim-under-test"
    finally:
        configured.shutdown()
