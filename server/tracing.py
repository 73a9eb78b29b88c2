"""OpenTelemetry traces, an optional extra (`pip install mim-kpi[otel]`), off unless configured.

Configured by the standard variables (OTEL_TRACES_EXPORTER, OTEL_EXPORTER_OTLP_ENDPOINT,
OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES, ...): a span per HTTP request (the aiohttp server
instrumentation), a span per GraphQL operation on either path, named and attributed as the
OpenTelemetry GraphQL conventions say, and on PostgreSQL a span per SQL statement (asyncpg).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Mapping
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Span

EXPORTERS = frozenset({"otlp", "console", "none"})


class TracingUnavailable(Exception):
    """Tracing is configured but the `otel` extra is not installed."""


def wanted(env: Mapping[str, str]) -> bool:
    """Return whether the environment asks for traces."""
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporter = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter:
        return exporter != "none"
    endpoints = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    return any(env.get(name) for name in endpoints)


class Tracing:
    """Spans for one application, from one tracer provider."""

    def __init__(self, provider: TracerProvider) -> None:
        from opentelemetry.instrumentation.aiohttp_server import (
            AioHttpServerInstrumentor,
            create_aiohttp_middleware,
        )

        self.provider = provider
        self.tracer = provider.get_tracer("mim", _version())
        # The instrumentation readies its settings (excluded URLs, its meters) when it patches
        # aiohttp's Application class; its middleware is then given to this application alone,
        # and the class is put back (a subclass of Application is deprecated in aiohttp).
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            instrumentor = AioHttpServerInstrumentor()
            if not instrumentor.is_instrumented_by_opentelemetry:
                instrumentor.instrument(tracer_provider=provider)
                instrumentor.uninstrument()
        self.middleware = create_aiohttp_middleware(tracer_provider=provider)

    def instrument_database(self) -> None:
        """Trace every asyncpg statement (PostgreSQL) with this provider."""
        from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor

        AsyncPGInstrumentor().instrument(tracer_provider=self.provider)

    def uninstrument_database(self) -> None:
        """Stop tracing asyncpg statements."""
        from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor

        AsyncPGInstrumentor().uninstrument()

    def annotate(self, request_id: str) -> None:
        """Put the request id on the request's span."""
        from opentelemetry import trace

        trace.get_current_span().set_attribute("mim.request_id", request_id)

    @contextlib.contextmanager
    def operation(self, kind: str | None, name: str | None, document: str | None) -> Iterator[Span]:
        """Return a span around one GraphQL operation (the conventions' name and attributes)."""
        span_name = "GraphQL Operation" if kind is None else f"{kind} {name}" if name else kind
        attributes: dict[str, Any] = {}
        if kind is not None:
            attributes["graphql.operation.type"] = kind
        if name:
            attributes["graphql.operation.name"] = name
        if document is not None:
            attributes["graphql.document"] = document
        with self.tracer.start_as_current_span(span_name, attributes=attributes) as span:
            yield span

    def shutdown(self) -> None:
        """Send what is still buffered and stop."""
        self.provider.shutdown()


def from_env(env: Mapping[str, str]) -> Tracing:
    """Return tracing set up as the environment says (an OTLP or console exporter)."""
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import (
            BatchSpanProcessor,
            ConsoleSpanExporter,
            SpanExporter,
        )
    except ImportError:
        raise TracingUnavailable(
            "OTEL_* variables ask for traces, but the otel extra is not installed: "
            "pip install 'mim-kpi[otel]'"
        ) from None
    name = env.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() or "otlp"
    exporter: SpanExporter
    if name == "console":
        exporter = ConsoleSpanExporter()
    elif name == "otlp":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter()
    else:
        raise TracingUnavailable(f"OTEL_TRACES_EXPORTER={name!r}: use otlp, console or none")
    # Resource.create reads OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES itself; "mim" is
    # the service's name unless they give one.
    named = env.get("OTEL_SERVICE_NAME") or "service.name=" in env.get(
        "OTEL_RESOURCE_ATTRIBUTES", ""
    )
    provider = TracerProvider(resource=Resource.create({} if named else {"service.name": "mim"}))
    provider.add_span_processor(BatchSpanProcessor(exporter))
    return Tracing(provider)


def _version() -> str:
    try:
        return version("mim-kpi")
    except PackageNotFoundError:
        return "0"
