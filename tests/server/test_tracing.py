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
    # A shipped operation's name is in the span's name; any other's only in its attribute.
    assert operation.name == ("query ExecDashboard" if name == "ExecDashboard" else "query")
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


async def test_query_strings_and_long_documents_stay_out_of_spans(
    traced: TestClient, exporter: InMemorySpanExporter
) -> None:
    secret = "token-in-a-query-string-0123456789"
    exec_ = {"Authorization": f"Bearer {make_token('exec')}"}
    response = await traced.get(
        "/graphql",
        params={"query": PLAN, "access_token": secret},
        headers={**exec_, "X-Request-ID": "trace-get"},
    )
    assert response.status == 200
    padded = "query Padded { kpis { slug } }" + " " * 10_000 + "# end"
    response = await traced.post(
        "/graphql", json={"query": padded}, headers={**exec_, "X-Request-ID": "trace-long"}
    )
    assert response.status == 200
    spans = exporter.get_finished_spans()
    server, _, _ = tree(spans, "trace-get")
    for span in spans:
        for value in (span.attributes or {}).values():
            assert secret not in str(value)
    urls = [v for k, v in (server.attributes or {}).items() if "url" in k or k == "http.target"]
    assert urls and all("?" not in str(v) for v in urls)
    _, operation, _ = tree(spans, "trace-long")
    document = (operation.attributes or {})["graphql.document"]
    assert len(document) == tracing.DOCUMENT_CHARS and document.startswith("query Padded")
    assert operation.name == "query"  # Padded is no shipped operation


def test_exporter_lists_and_unknown_exporters() -> None:
    assert tracing.exporters({"OTEL_TRACES_EXPORTER": "otlp, console"}) == ["otlp", "console"]
    for bad in ("jaeger", "otlp,zipkin"):
        with pytest.raises(ValueError, match="OTEL_TRACES_EXPORTER"):
            Settings.from_env({**ENV, "OTEL_TRACES_EXPORTER": bad})
