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

from schema.operations import SHIPPED_NAMES

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Span

EXPORTERS = frozenset({"otlp", "console", "none"})
# The longest document a span carries (the rest is cut).
DOCUMENT_CHARS = 4096
# Attributes of a request span that may hold its query string (a caller may put a token there).
_WITH_QUERY = ("http.target", "http.url", "url.full", "url.query")


class TracingUnavailable(ValueError):
    """Tracing is asked for in a way this service cannot give (or the extra is not installed)."""


def exporters(env: Mapping[str, str]) -> list[str]:
    """Return the exporters the environment asks for (none: no traces)."""
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return []
    raw = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if not raw:
        endpoints = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        return ["otlp"] if any(env.get(name) for name in endpoints) else []
    names = [name.strip() for name in raw.split(",") if name.strip()]
    if unknown := [name for name in names if name not in EXPORTERS]:
        raise TracingUnavailable(
            f"OTEL_TRACES_EXPORTER names {', '.join(unknown)}: use otlp, console or none"
        )
    return [name for name in names if name != "none"]


def wanted(env: Mapping[str, str]) -> bool:
    """Return whether the environment asks for traces (raising TracingUnavailable if it asks
    for what cannot be given)."""
    if not exporters(env):
        return False
    try:
        import opentelemetry.sdk.trace  # noqa: F401
    except ImportError:
        raise TracingUnavailable(
            "OTEL_* variables ask for traces, but the otel extra is not installed: "
            "pip install 'mim-kpi[otel]'"
        ) from None
    return True


class Tracing:
    """Spans for one application, from one tracer provider."""

    def __init__(self, provider: TracerProvider) -> None:
        from opentelemetry.instrumentation.aiohttp_server import (
            AioHttpServerInstrumentor,
            create_aiohttp_middleware,
        )

        self.provider = provider
        provider.add_span_processor(_without_query_strings())
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
        """Return a span around one GraphQL operation (the conventions' name and attributes).

        The span's name carries the operation's name only for the operations the project ships
        (any caller may choose a name: span names stay few); the attribute carries any valid one.
        The document is cut at DOCUMENT_CHARS and made valid UTF-8.
        """
        shipped = name if name in SHIPPED_NAMES else None
        span_name = kind or "GraphQL Operation"
        if kind is not None and shipped is not None:
            span_name = f"{kind} {shipped}"
        attributes: dict[str, Any] = {}
        if kind is not None:
            attributes["graphql.operation.type"] = kind
        if name:
            attributes["graphql.operation.name"] = name
        if document is not None:
            text = document[:DOCUMENT_CHARS].encode("utf-8", "replace").decode("utf-8")
            attributes["graphql.document"] = text
        with self.tracer.start_as_current_span(span_name, attributes=attributes) as span:
            yield span

    def shutdown(self) -> None:
        """Send what is still buffered and stop."""
        self.provider.shutdown()


def from_env(env: Mapping[str, str]) -> Tracing:
    """Return tracing set up as the environment says (OTLP and/or console exporters)."""
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

    # Resource.create reads OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES itself; "mim" is
    # the service's name unless they give one.
    attributes = env.get("OTEL_RESOURCE_ATTRIBUTES", "")
    named = env.get("OTEL_SERVICE_NAME") or "service.name=" in attributes
    provider = TracerProvider(resource=Resource.create({} if named else {"service.name": "mim"}))
    for name in exporters(env):
        if name == "console":
            provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
        else:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    return Tracing(provider)


def _without_query_strings() -> Any:
    """Return a span processor that cuts the query string off URL attributes as spans start."""
    from opentelemetry.sdk.trace import SpanProcessor

    class WithoutQueryStrings(SpanProcessor):
        def on_start(self, span: Any, parent_context: Any = None) -> None:
            attributes = span.attributes or {}
            for key in _WITH_QUERY:
                value = attributes.get(key)
                if not isinstance(value, str):
                    continue
                if key == "url.query":
                    span.set_attribute(key, "")
                elif "?" in value:
                    span.set_attribute(key, value.split("?", 1)[0])

    return WithoutQueryStrings()


def _version() -> str:
    try:
        return version("mim-kpi")
    except PackageNotFoundError:
        return "0"
