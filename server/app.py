"""The aiohttp application: GraphQL, the REST mirror, health, and authentication."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import orjson
from aiohttp import web
from multidict import MultiMapping
from strawberry.aiohttp.views import GraphQLView
from strawberry.http import GraphQLRequestData, process_result
from strawberry.types import ExecutionResult

from registry import db, opaque
from registry.errors import Unauthenticated
from registry.model import ANONYMOUS
from schema import build_schema, schema
from schema.context import Context
from schema.errors import INTERNAL_MESSAGE, TIMEOUT_MESSAGE, UNAVAILABLE_MESSAGE, coded_errors
from schema.fast_path import FastPath
from schema.limits import refused_by, request_refusal
from server import (
    answers,
    compression,
    cors,
    graphiql,
    health,
    media,
    observe,
    openapi,
    pages,
    persisted,
    rest,
    revalidation,
    shed,
    static,
)
from server.auth import TokenVerifier
from server.config import Settings
from server.http import VIEWER, error_response
from server.jobs import RecomputeRunner
from server.metrics import (
    Clock,
    Metrics,
    code_label,
    exposition_response,
    may_scrape,
    operation_label,
    type_label,
)
from server.observe import (
    METRICS,
    TRACING,
    fields,
    operation_count,
    operation_name,
    operation_of,
)
from server.tracing import Tracing
from server.tracing import from_env as tracing_from_env

log = logging.getLogger("mim.http")

SETTINGS = web.AppKey("settings", Settings)
VERIFIER = web.AppKey("verifier", TokenVerifier)
FAST_PATH = web.AppKey("fast_path", FastPath)
RUNNER = web.AppKey("recompute_runner", RecomputeRunner)
OWNS_TRACING = web.AppKey("owns_tracing", bool)
OPERATION = web.RequestKey("operation", dict)
# The document a request runs, once a persisted query's hash is resolved (MimGraphQLView._read).
DOCUMENT = web.RequestKey("document", str)

UNAUTHENTICATED_BODY = json.dumps(
    {
        "errors": [
            {
                "message": "Authentication required: send a valid bearer token.",
                "extensions": {"code": "UNAUTHENTICATED"},
            }
        ]
    }
)
PUBLIC_PATHS = frozenset({"/healthz", "/readyz", openapi.PATH})
METRICS_PATH = "/metrics"
_NAME = re.compile(r"[_A-Za-z][_0-9A-Za-z]*")
MAX_HEADER_BYTES = 32 * 1024
MAX_BODY_BYTES = 1024 * 1024
# How often each worker sets its database pool gauges.
POOL_GAUGE_SECONDS = 1.0

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _is_ide_page(request: web.Request) -> bool:
    return (
        request.method == "GET"
        and not _is_upgrade(request)
        and request.path == "/graphql"
        and "query" not in request.query
        and "extensions" not in request.query  # a persisted query's hash
        and "text/html" in request.headers.get("Accept", "")
    )


def _is_upgrade(request: web.Request) -> bool:
    connection = request.headers.get("Connection", "").lower()
    return "Upgrade" in request.headers or "upgrade" in connection


@web.middleware
async def refuse_upgrades(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Refuse every protocol upgrade (WebSocket included): the service has no subscriptions."""
    if _is_upgrade(request):
        return error_response(
            400,
            "BAD_USER_INPUT",
            "Protocol upgrades are not accepted: this service has no "
            "subscriptions; send queries over HTTP.",
        )
    return await handler(request)


@web.middleware
async def refuse_encoded_bodies(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Refuse a compressed request body: bodies are small, and decoding one is work we avoid."""
    encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        return error_response(
            415, "BAD_USER_INPUT", "Content-Encoding is not accepted: send the body uncompressed."
        )
    return await handler(request)


@web.middleware
async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Refuse every request without a valid token before any handler runs."""
    if request.path in PUBLIC_PATHS or static.is_static(request.path) or _is_ide_page(request):
        return await handler(request)
    if pages.is_page(request.path):
        return await pages.handle(request, handler)  # a session, not a bearer token
    settings = request.app[SETTINGS]
    if (
        request.path == METRICS_PATH
        and settings.metrics
        and may_scrape(request, settings.metrics_token)
    ):
        return await handler(request)  # the metrics token is not a token of a viewer
    try:
        request[VIEWER] = viewer = await request.app[VERIFIER].viewer(
            request.headers.get("Authorization")
        )
    except Unauthenticated:
        # RFC 6750 3.1: a token was sent and failed (why is nobody's business); without one, or
        # with another scheme, the bare challenge.
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        sent = scheme.lower() == "bearer" and token.strip()
        return web.Response(
            status=401,
            text=UNAUTHENTICATED_BODY,
            content_type="application/json",
            headers={
                "WWW-Authenticate": 'Bearer realm="mim", error="invalid_token"'
                if sent
                else 'Bearer realm="mim"'
            },
        )
    fields(request)["sub"] = viewer.subject
    return await handler(request)


@web.middleware
async def revalidate(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Give GET answers that were tagged before they were made (revalidation.check) their ETag.

    Only answers without errors are tagged; every other response is no-store (_no_store).
    """
    response = await handler(request)
    return revalidation.tag_answer(request, response)


@web.middleware
async def mask_faults(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Answer an unexpected exception with a coded INTERNAL error, logging the detail here."""
    limit = request.app[SETTINGS].request_timeout_seconds
    # SQLite statements stop at the same moment (registry/db.py guard); PostgreSQL's own
    # statement_timeout ends theirs.
    deadline = db.deadline.set(time.monotonic() + limit)
    try:
        async with asyncio.timeout(limit):
            response = await handler(request)
    except web.HTTPRequestEntityTooLarge:
        _refused(request, "body_size")
        return error_response(413, "BAD_USER_INPUT", "The request body is larger than 1 MiB.")
    except web.HTTPException as refusal:
        if refusal.status < 400:
            raise
        return _coded_refusal(refusal.status, refusal.reason, refusal.headers.get("Allow"))
    except TimeoutError:
        log.warning("request ran past its time limit: %s %s", request.method, request.path)
        _refused(request, "timeout")
        if (operation := request.get(OPERATION)) is not None:
            operation["code"] = "TIMEOUT"
            finish_operation(request)
        return error_response(503, "TIMEOUT", TIMEOUT_MESSAGE)
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is None or task.cancelling():
            raise  # this request really is being cancelled (shutdown)
        # A cancellation nobody asked for (an awaited future was cancelled elsewhere) would
        # otherwise drop the connection without an answer.
        log.exception("stray cancellation serving %s %s", request.method, request.path)
        return error_response(500, "INTERNAL", INTERNAL_MESSAGE)
    except Exception as error:
        if db.is_timeout(error):
            _refused(request, "timeout")
            return error_response(503, "TIMEOUT", TIMEOUT_MESSAGE)
        if db.is_transient(error):
            log.warning("database unavailable: %s", type(error).__name__)
            response = error_response(503, "UNAVAILABLE", UNAVAILABLE_MESSAGE)
            response.headers["Retry-After"] = "1"
            return response
        log.exception("unexpected error serving %s %s", request.method, request.path)
        return error_response(500, "INTERNAL", INTERNAL_MESSAGE)
    finally:
        db.deadline.reset(deadline)
    if response.status >= 400 and response.content_type == "text/plain":
        # Transport-level refusals (unsupported content type, no query, ...) get a code too.
        text = response.text if isinstance(response, web.Response) else None
        return _coded_refusal(
            response.status, text or response.reason, response.headers.get("Allow")
        )
    return response


def finish_operation(request: web.Request) -> None:
    """Record a GraphQL operation's path and code in the log fields and the metrics, once."""
    operation = request.get(OPERATION)
    if operation is None or operation.get("finished"):
        return
    operation["finished"] = True
    log_fields = fields(request)
    log_fields["path"], log_fields["error_code"] = operation["path"], operation["code"]
    metrics = request.app.get(METRICS)
    if metrics is not None and operation["counted"]:
        metrics.operation_done(
            type_label(operation["type"]),
            operation_label(operation["name"]),
            operation["path"],
            code_label(operation["code"]),
            operation["clock"].seconds(),
        )


def _fault_code(error: BaseException) -> str:
    """Return the code mask_faults answers an exception with."""
    if isinstance(error, TimeoutError) or db.is_timeout(error):
        return "TIMEOUT"
    if db.is_transient(error):
        return "UNAVAILABLE"
    return "INTERNAL"


def _refused(request: web.Request, limit: str) -> None:
    metrics = request.app.get(METRICS)
    if metrics is not None:
        metrics.refusal(limit)


def _coded_refusal(status: int, message: str | None, allow: str | None = None) -> web.Response:
    code = {404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED"}.get(status, "BAD_USER_INPUT")
    response = error_response(status, code, message or "Bad request.")
    if allow is not None:
        response.headers["Allow"] = allow  # a 405 says which methods the route has
    return response


class MimGraphQLView(GraphQLView[Context, None]):
    def __init__(self, *, suggestions: bool, fast_path: FastPath | None, **options: Any) -> None:
        super().__init__(**options)
        self.suggestions = suggestions
        self.fast_path = fast_path

    async def __call__(self, request: web.Request) -> web.StreamResponse:
        clock = Clock()
        body, refusal = await self._read(request)
        query = body.get("query") if body is not None else None
        sent_name = body.get("operationName") if body is not None else None
        kind, name = (
            operation_of(query, sent_name if isinstance(sent_name, str) else None)
            if isinstance(query, str)
            else (None, None)
        )
        # What the logs, metrics and span say of this operation: path and code are filled in
        # by whoever answers; finish_operation records it once.
        name = operation_name(name)
        operation: dict[str, Any] = {
            "path": "executor", "code": None, "type": kind, "name": name, "clock": clock,
            "counted": body is not None or refusal is not None,
        }  # fmt: skip
        request[OPERATION] = operation
        log_fields = fields(request)
        log_fields["operation_type"], log_fields["operation_name"] = kind, name
        tracing = request.app.get(TRACING)
        with (
            tracing.operation(kind, name, query if isinstance(query, str) else None)
            if tracing is not None and body is not None
            else contextlib.nullcontext()
        ) as span:
            try:
                response: web.StreamResponse = (
                    refusal if refusal is not None else await self._answer(request, body, operation)
                )
            except asyncio.CancelledError:
                # Stopped from outside: a time limit (mask_faults counts it as TIMEOUT) or the
                # server stopping (nobody gets an answer: not counted).
                raise
            except BaseException as error:
                # mask_faults answers it; it is counted with the code it will carry.
                operation["code"] = _fault_code(error)
                finish_operation(request)
                raise
            finally:
                if span is not None:
                    span.set_attribute("mim.graphql.path", operation["path"])
                    if operation["code"] is not None:
                        span.set_attribute("mim.graphql.error_code", operation["code"])
        if media.response_type(request.headers.get("Accept")) == media.GRAPHQL_RESPONSE:
            response = media.as_graphql_response(response)
        response.headers.add("Vary", "Accept")
        if refusal is not None:
            operation.update(path="refused", code="BAD_USER_INPUT")
        elif response.status >= 400 and operation["code"] is None:
            operation["code"] = "BAD_USER_INPUT"
        finish_operation(request)
        return response

    async def _read(
        self, request: web.Request
    ) -> tuple[dict[str, Any] | None, web.Response | None]:
        """Return the GraphQL request a request carries, or the refusal of one that cannot be."""
        if request.method == "POST":
            # aiohttp parses the media type: `application/jsonx` or `application/json-patch+json`
            # is not JSON, whatever it contains.
            if request.content_type != "application/json":
                return None, error_response(
                    415, "BAD_USER_INPUT", "Send the request body as application/json."
                )
            body, refusal = read_body(await request.read())
            if refusal is not None:
                return None, error_response(400, "BAD_USER_INPUT", refusal)
            found: dict[str, Any] | None = body
        elif request.method == "GET":
            found = read_query_string(request.query)
        else:
            return None, None
        if found is None:
            return None, None
        # A persisted query's hash becomes its document here; then the document is judged as if
        # it had been sent in full.
        resolved, answer = await persisted.resolve(found, request.get(VIEWER))
        if answer is not None or resolved is None:
            return None, answer
        if (refusal := operation_refusal(resolved)) is not None:
            return None, error_response(400, "BAD_USER_INPUT", refusal)
        restricted = request.app[SETTINGS].trusted_personas
        if not persisted.trusted(request.get(VIEWER), resolved, restricted):
            _refused(request, "untrusted")
            return None, persisted.untrusted()
        request[DOCUMENT] = resolved["query"]
        return resolved, None

    async def _answer(
        self, request: web.Request, body: dict[str, Any] | None, operation: dict[str, Any]
    ) -> web.StreamResponse:
        viewer = request.get(VIEWER)
        if request.method == "GET" and body is not None and viewer is not None:
            query, name = body.get("query"), body.get("operationName")
            # Refused requests read nothing, not even the generation.
            if (
                isinstance(query, str)
                and request_refusal(query, name, body.get("variables")) is None
            ):
                clock = "reviewOverdue" in query
                if (same := await revalidation.check(request, viewer, clock=clock)) is not None:
                    operation["path"] = "not_modified"
                    return same
        if body is not None and self.fast_path is not None:
            kept = request.app.get(answers.ANSWERS)
            key = None
            if kept is not None and viewer is not None and self.fast_path.covers(body):
                key = await answers.key_of(request, viewer, body)
                if (answer := kept.get(key)) is not None:
                    operation["path"] = "kept"  # the same answer, kept since the last write
                    return _json_answer(answer)
            answer = await self.fast_path.respond(body, request.get(VIEWER, ANONYMOUS))
            if answer is not None:
                operation["path"] = "plan"
                if key is not None and kept is not None:
                    kept.put(key, answer)
                return _json_answer(answer)
        return await super().__call__(request)

    async def render_graphql_ide(self, request: web.Request) -> web.Response:
        # Our page: GraphiQL from /static/ under the pages' policy (server/graphiql.py).
        return graphiql.page(request)

    def should_render_graphql_ide(self, request: Any) -> bool:
        # A GET with a persisted query's hash and no text is a request, not a visit to the IDE.
        return "extensions" not in request.query_params and super().should_render_graphql_ide(
            request
        )

    async def parse_http_body(self, request: Any) -> Any:
        found = await super().parse_http_body(request)
        document = request.request.get(DOCUMENT)
        if isinstance(found, GraphQLRequestData) and document is not None:
            # The document of a persisted query's hash, resolved (and judged) by _read.
            return dataclasses.replace(found, query=document)
        return found

    def encode_json(self, data: object) -> bytes:
        # The encoder of the fast path, so both paths write the same bytes (UTF-8, not \u escapes).
        try:
            return orjson.dumps(data)
        except orjson.JSONEncodeError:
            # Text that is not UTF-8 (a lone surrogate echoed from the request): escape it.
            return json.dumps(data, separators=(",", ":")).encode()

    async def process_result(self, request: web.Request, result: ExecutionResult) -> Any:
        if result.errors:
            limits = {refused_by(error.message) for error in result.errors}
            result.errors = coded_errors(result.errors, suggestions=self.suggestions)
            operation = request.get(OPERATION)
            if operation is not None:
                operation["code"] = (result.errors[0].extensions or {}).get("code")
            metrics = request.app.get(METRICS)
            if metrics is not None:
                for limit in limits - {None}:
                    metrics.refusal(limit)
        answer = process_result(result)
        if media.is_request_error(answer):
            # Nothing ran, so there is no data, not even null (GraphQL spec, "Response"); in
            # either media type.
            del answer["data"]
        return answer

    async def get_context(self, request: web.Request, response: Any) -> Context:
        # The GraphiQL page is served without a token; it renders no data.
        return Context(
            viewer=request.get(VIEWER, ANONYMOUS),
            settle=partial(
                request.app[RUNNER].settle, seconds=request.app[SETTINGS].recompute_wait
            ),
        )


async def _without_server_header(request: web.Request, response: web.StreamResponse) -> None:
    # Which server and version answer is nobody's business but ours.
    response.headers.pop("Server", None)


async def _no_store(request: web.Request, response: web.StreamResponse) -> None:
    # Only answers tagged for revalidation may be kept; mutations, errors and refusals never.
    response.headers.setdefault("Cache-Control", "no-store")


def read_body(raw: bytes) -> tuple[dict[str, Any], str | None]:
    """Return a JSON request body, and why it cannot be a GraphQL request (None if it may be)."""
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):  # also invalid UTF-8 and absurd nesting
        return {}, "The request body is not valid JSON."
    if isinstance(body, list):
        return {}, "Batched requests are not accepted: send one operation per request."
    if not isinstance(body, dict):
        return {}, "The request body must be a JSON object with a query string."
    if not isinstance(body.get("extensions"), dict | None):
        return {}, "extensions must be a JSON object."
    query = body.get("query")
    if not isinstance(query, str) and not (query is None and persisted.persisted_query(body)):
        return {}, "The request body must be a JSON object with a query string."
    return body, None


def operation_refusal(body: dict[str, Any]) -> str | None:
    """Return why a request's document cannot run as sent (None if it may)."""
    name = body.get("operationName")
    if isinstance(name, str) and not _NAME.fullmatch(name):
        return "operationName must be the name of an operation in the document."
    if name is None and operation_count(body["query"]) > 1:
        return "The document holds several operations: name the one to run in operationName."
    return None


def read_query_string(query: MultiMapping[str]) -> dict[str, Any] | None:
    """Return the request a GET's query string makes, or None when the executor should judge it.

    Anything unusual (a parameter given twice, variables that are not a JSON object) is left to
    the standard executor, which answers it in its own words.
    """
    names = ("query", "operationName", "variables", "extensions")
    if any(len(query.getall(name, ())) > 1 for name in names):
        return None
    extensions = persisted.query_extensions(query["extensions"]) if "extensions" in query else None
    if "query" not in query and (extensions is None or "persistedQuery" not in extensions):
        return None
    body: dict[str, Any] = {
        "query": query.get("query"),
        "operationName": query.get("operationName"),
    }
    if extensions is not None:
        body["extensions"] = extensions
    if "variables" in query:
        try:
            body["variables"] = json.loads(query["variables"])
        except (ValueError, RecursionError):
            return None
        if not isinstance(body["variables"], dict | None):
            return None
    return body


async def _database(app: web.Application) -> AsyncIterator[None]:
    await db.open_engine(statement_timeout_seconds=app[SETTINGS].statement_timeout_seconds)
    try:
        await opaque.load()
    except Exception as error:
        # Not migrated yet, or the database is down: the service starts all the same (/readyz
        # says why), and the key is read when an answer first needs it.
        log.warning("the service key is not readable yet: %s", type(error).__name__)
    metrics = app.get(METRICS)
    if metrics is None:
        yield
        await db.close_engine()
        return
    unwatch = db.watch_pool(metrics.pool_wait.observe)
    # Every worker keeps its pool gauges current (a scrape reaches one worker of several).
    watching = asyncio.create_task(_watch_pool(metrics))
    yield
    watching.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await watching
    unwatch()
    await db.close_engine()


async def _watch_pool(metrics: Metrics) -> None:
    while True:
        metrics.pool()
        await asyncio.sleep(POOL_GAUGE_SECONDS)


async def _traces(app: web.Application) -> AsyncIterator[None]:
    tracing = app[TRACING]
    tracing.instrument_database()
    yield
    tracing.uninstrument_database()
    if app[OWNS_TRACING]:
        tracing.shutdown()


def _json_answer(body: bytes) -> web.Response:
    return web.Response(body=body, content_type="application/json", charset="utf-8")


async def serve_metrics(request: web.Request) -> web.Response:
    """Answer a scrape: only a GET for the metrics token or an admin; anything else meets the
    404 of an unknown route (for every method: a 405 would say the route exists)."""
    scrape = request.method in ("GET", "HEAD")
    if not scrape or not may_scrape(request, request.app[SETTINGS].metrics_token):
        raise web.HTTPNotFound()
    return exposition_response(await request.app[METRICS].exposition())


async def _recomputes(app: web.Application) -> AsyncIterator[None]:
    await app[RUNNER].start()
    yield
    await app[RUNNER].stop()


def create_app(settings: Settings, *, tracing: Tracing | None = None) -> web.Application:
    """Return the service's application for these settings (traced by `tracing` if given)."""
    owns_tracing = tracing is None and settings.tracing
    if owns_tracing:
        tracing = tracing_from_env(os.environ)
    middlewares = [
        observe.observe,
        compression.compress,
        refuse_upgrades,
        mask_faults,
        refuse_encoded_bodies,
        authenticate,
        revalidate,
    ]
    if settings.cors_origins:
        # A preflight carries no token: answered before authentication (server/cors.py).
        middlewares.insert(middlewares.index(authenticate), cors.preflight)
    if tracing is not None:
        middlewares.insert(0, tracing.middleware)  # the request's span holds everything else
    middlewares.insert(0, shed.shed)  # a refusal costs nothing else (server/shed.py)
    app = web.Application(
        middlewares=middlewares,
        # Room for long tokens, so that an oversized one meets the 401 and not a parser error.
        # Bodies are never decompressed by the parser (refuse_encoded_bodies refuses them), so a
        # bad or unsupported encoding cannot fail below the middlewares.
        handler_args={"max_field_size": MAX_HEADER_BYTES, "auto_decompress": False},
        client_max_size=MAX_BODY_BYTES,
    )
    app[SETTINGS] = settings
    app[VERIFIER] = TokenVerifier(settings)
    metrics = None
    if settings.metrics:
        app[METRICS] = metrics = Metrics(version=_version(), engine=_engine(settings))
    app[shed.GATE] = shed.Gate(
        settings.max_inflight,
        on_refusal=partial(metrics.refusal, "inflight") if metrics is not None else None,
        lag_limit=settings.shed_lag_seconds,
        cors=bool(settings.cors_origins),
    )
    app[RUNNER] = RecomputeRunner(
        poll_seconds=settings.recompute_poll_seconds,
        on_finish=metrics.recompute_finished if metrics is not None else None,
    )
    if tracing is not None:
        app[TRACING] = tracing
        app[OWNS_TRACING] = owns_tracing
        app.cleanup_ctx.append(_traces)
    app.cleanup_ctx.append(_database)
    app.cleanup_ctx.append(shed.watch_lag)
    app.cleanup_ctx.append(_recomputes)
    app.on_response_prepare.append(_without_server_header)
    app.on_response_prepare.append(_no_store)
    app.on_response_prepare.append(observe.echo_request_id)
    served_schema = schema if settings.introspection else build_schema(introspection=False)
    app[revalidation.REVALIDATOR] = revalidation.Revalidator(served_schema.as_str())
    fast_path = FastPath(served_schema) if settings.fast_path else None
    if fast_path is not None:
        app[FAST_PATH] = fast_path
        if settings.answer_cache:
            app[answers.ANSWERS] = answers.Answers()
    view = MimGraphQLView(
        schema=served_schema,
        graphql_ide="graphiql" if settings.graphiql else None,
        subscription_protocols=(),
        suggestions=settings.introspection,
        fast_path=fast_path,
    )
    app.router.add_route("GET", "/graphql", view)
    app.router.add_route("POST", "/graphql", view)
    app.router.add_get("/healthz", health.healthz)
    app.router.add_get("/readyz", health.readyz)
    app.router.add_get(openapi.PATH, openapi.serve)  # public: it names no KPI
    if metrics is not None:
        app.router.add_route("*", METRICS_PATH, serve_metrics)
    rest.add_routes(app)
    static.add_routes(app)
    pages.setup(app, app[VERIFIER].sign_in)
    if settings.cors_origins:
        # Browser apps on the listed origins may call GraphQL and the REST mirror.
        rest_methods = dict.fromkeys(("/kpis", "/kpis/{slug}", "/incidents/{id}/kpis"), "GET")
        cors.setup(app, settings.cors_origins, {"/graphql": "GET, POST", **rest_methods})
    return app


def _version() -> str:
    try:
        return version("mim-kpi")
    except PackageNotFoundError:
        return "unknown"


def _engine(settings: Settings) -> str:
    return "sqlite" if settings.database_url.startswith("sqlite") else "postgresql"
