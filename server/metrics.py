"""Prometheus metrics: what the service did, measured at the HTTP layer and on both GraphQL paths.

Every label takes its values from a small, fixed set (routes of the router, the contract's error
codes, the names of the operations the project ships), so no request can grow the number of
series, and none carries a KPI slug, a subject, a token or an incident id.

With `mim serve --workers N` the supervisor gives every worker one PROMETHEUS_MULTIPROC_DIR
(prometheus-client's multiprocess mode): each worker writes its samples there and whichever worker
answers a scrape reports them all.
"""

from __future__ import annotations

import asyncio
import hmac
import os
import time
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from registry import db, recompute
from registry.model import Persona
from schema.operations import SHIPPED_NAMES
from server.http import VIEWER

MULTIPROCESS_DIR = "PROMETHEUS_MULTIPROC_DIR"
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 15)
METHODS = frozenset({"GET", "POST", "HEAD", "OPTIONS", "PUT", "PATCH", "DELETE"})
# The contract's codes (docs/contract.md); anything else is counted as "other".
CODES = frozenset(
    {
        "BAD_USER_INPUT",
        "UNAUTHENTICATED",
        "FORBIDDEN",
        "NOT_FOUND",
        "CONFLICT",
        "INTERNAL",
        "TIMEOUT",
        "UNAVAILABLE",
        "METHOD_NOT_ALLOWED",
    }
)
OPERATION_TYPES = frozenset({"query", "mutation", "subscription"})
LIMITS = (
    "depth",
    "aliases",
    "tokens",
    "cost",
    "list_size",
    "body_size",
    "timeout",
    "inflight",
    "untrusted",
)
RECOMPUTE_STATES = ("queued", "running", "done", "failed")
# How long a scrape waits for the recompute jobs' progress before leaving it out.
PROGRESS_SECONDS = 2.0
# The files prometheus-client's multiprocess mode writes (and nothing else in the directory).
SAMPLE_FILES = ("counter_*.db", "gauge_*.db", "histogram_*.db", "summary_*.db")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def prepare_directory(path: str) -> None:
    """Make the multiprocess directory ready: created if missing, earlier runs' samples gone."""
    directory = Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    for pattern in SAMPLE_FILES:
        for stale in directory.glob(pattern):
            stale.unlink()


def multiprocess_mode() -> bool:
    """Return whether samples go to a directory shared by the workers of one server."""
    return bool(os.environ.get(MULTIPROCESS_DIR))


class Metrics:
    """The service's metrics, for one application."""

    def __init__(self, *, version: str, engine: str) -> None:
        shared = multiprocess_mode()
        # In multiprocess mode samples live in files, collected at scrape time; otherwise here.
        self.registry = CollectorRegistry(auto_describe=True)
        into = None if shared else self.registry
        self.http_requests = Counter(
            "mim_http_requests",
            "HTTP requests answered, by method, route and status.",
            ["method", "route", "status"],
            registry=into,
        )
        self.http_duration = Histogram(
            "mim_http_request_duration_seconds",
            "Time to answer an HTTP request, by method and route.",
            ["method", "route"],
            buckets=LATENCY_BUCKETS,
            registry=into,
        )
        self.in_flight = Gauge(
            "mim_http_requests_in_flight",
            "HTTP requests being answered now.",
            multiprocess_mode="livesum",
            registry=into,
        )
        self.not_modified = Counter(
            "mim_http_not_modified",
            "GET answers revalidated with 304 Not Modified (the data had not changed), by route.",
            ["route"],
            registry=into,
        )
        self.operations = Counter(
            "mim_graphql_operations",
            "GraphQL operations, by type, operation name (shipped operations; 'other' for the "
            "rest), path taken (plan, kept, executor, not_modified, refused) and first error code.",
            ["type", "operation", "path", "code"],
            registry=into,
        )
        self.operation_duration = Histogram(
            "mim_graphql_operation_duration_seconds",
            "Time to answer a GraphQL operation, by type, operation name and path taken.",
            ["type", "operation", "path"],
            buckets=LATENCY_BUCKETS,
            registry=into,
        )
        self.refused = Counter(
            "mim_requests_refused",
            "Requests refused by a limit: depth, aliases, tokens, cost, list_size, body_size, "
            "timeout, inflight, untrusted.",
            ["limit"],
            registry=into,
        )
        self.pool_size = Gauge(
            "mim_db_pool_size",
            "Connections open in the database pool (PostgreSQL; SQLite has no pool: 0).",
            multiprocess_mode="livesum",
            registry=into,
        )
        self.pool_max = Gauge(
            "mim_db_pool_max",
            "Most connections the database pool may open.",
            multiprocess_mode="livesum",
            registry=into,
        )
        self.pool_in_use = Gauge(
            "mim_db_pool_in_use",
            "Pool connections lent to a statement or transaction now.",
            multiprocess_mode="livesum",
            registry=into,
        )
        self.pool_wait = Histogram(
            "mim_db_pool_wait_seconds",
            "Time spent waiting for a pool connection when none was free (its count: the waits).",
            buckets=LATENCY_BUCKETS,
            registry=into,
        )
        self.recompute_duration = Histogram(
            "mim_recompute_duration_seconds",
            "Time a worker spent running a recompute (backfill) job, by outcome (done, failed, "
            "paused).",
            ["outcome"],
            buckets=(0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600),
            registry=into,
        )
        self.build_info = Gauge(
            "mim_build_info",
            "The service's version and database engine (always 1).",
            ["version", "engine"],
            multiprocess_mode="max",
            registry=into,
        )
        self.build_info.labels(version=version, engine=engine).set(1)
        for limit in LIMITS:
            self.refused.labels(limit=limit)  # present from the start, at 0
        self.recompute_duration.labels(outcome="failed")
        self.not_modified.labels(route="/graphql")
        if shared:
            multiprocess.MultiProcessCollector(self.registry)
        self._recompute_rows: list[dict[str, Any]] | None = []
        # Label children by label values (bounded: every value comes from a fixed set).
        self._requests: dict[tuple[str, str, int], tuple[Any, Any, Any]] = {}
        self._operations: dict[tuple[str, str, str, str], tuple[Any, Any]] = {}
        self.registry.register(_RecomputeCollector(self))

    def request_done(self, method: str, route: str, status: int, seconds: float) -> None:
        """Count and time one HTTP answer."""
        key = (method, route, status)
        found = self._requests.get(key)
        if found is None:
            # labels() costs more than the increment: each label set's children are kept.
            found = self._requests[key] = (
                self.http_requests.labels(method=method, route=route, status=str(status)),
                self.http_duration.labels(method=method, route=route),
                self.not_modified.labels(route=route) if status == 304 else None,
            )
        count, duration, not_modified = found
        count.inc()
        duration.observe(seconds)
        if not_modified is not None:
            not_modified.inc()

    def operation_done(
        self, kind: str, operation: str, path: str, code: str, seconds: float
    ) -> None:
        """Count and time one GraphQL operation."""
        key = (kind, operation, path, code)
        found = self._operations.get(key)
        if found is None:
            found = self._operations[key] = (
                self.operations.labels(type=kind, operation=operation, path=path, code=code),
                self.operation_duration.labels(type=kind, operation=operation, path=path),
            )
        count, duration = found
        count.inc()
        duration.observe(seconds)

    def pool(self) -> None:
        """Set the pool gauges from this process's pool."""
        size, maximum, in_use = db.pool_usage()
        self.pool_size.set(size)
        self.pool_max.set(maximum)
        self.pool_in_use.set(in_use)

    def refusal(self, limit: str | None) -> None:
        """Count a request refused by `limit` (None: not a limit's refusal)."""
        if limit is not None:
            self.refused.labels(limit=limit).inc()

    def recompute_finished(self, outcome: str, seconds: float) -> None:
        """Count a recompute job's run on this worker."""
        self.recompute_duration.labels(outcome=outcome).observe(seconds)

    async def exposition(self) -> bytes:
        """Return every metric in the Prometheus text format (job progress read now).

        Without the database (down, or every connection busy past PROGRESS_SECONDS), the
        recompute families are left out and the rest is answered: an outage is when metrics
        matter most.
        """
        self.pool()
        try:
            self._recompute_rows = await asyncio.wait_for(recompute.progress(), PROGRESS_SECONDS)
        except Exception as error:
            if not (isinstance(error, TimeoutError) or db.is_transient(error)):
                raise
            self._recompute_rows = None
        return generate_latest(self.registry)


class _RecomputeCollector(Collector):
    """Recompute jobs by state and the incidents they still have to scan, from the database."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterable[Metric]:
        if self.metrics._recompute_rows is None:
            return []  # the database did not answer this scrape
        rows = {row["state"]: row for row in self.metrics._recompute_rows}
        jobs = GaugeMetricFamily(
            "mim_recompute_jobs", "Recompute (backfill) jobs by state.", labels=["state"]
        )
        scanned = GaugeMetricFamily(
            "mim_recompute_incidents_scanned",
            "Incidents scanned so far by the jobs in each state.",
            labels=["state"],
        )
        remaining = GaugeMetricFamily(
            "mim_recompute_incidents_remaining",
            "Incidents the jobs in each state have still to scan.",
            labels=["state"],
        )
        oldest = GaugeMetricFamily(
            "mim_recompute_oldest_unfinished_seconds",
            "Age of the oldest queued or running recompute job (0: none).",
        )
        ages = [0.0]
        for state in RECOMPUTE_STATES:
            row = rows.get(state, {})
            jobs.add_metric([state], row.get("jobs", 0))
            scanned.add_metric([state], row.get("done", 0))
            remaining.add_metric([state], max(0, row.get("total", 0) - row.get("done", 0)))
            if state in ("queued", "running") and row.get("age") is not None:
                ages.append(row["age"])
        oldest.add_metric([], max(ages))
        return [jobs, scanned, remaining, oldest]


def route_of(request: web.BaseRequest) -> str:
    """Return the route's pattern (`/kpis/{slug}`), never the path a caller chose."""
    info = getattr(request, "match_info", None)
    route = getattr(info, "route", None)
    resource = getattr(route, "resource", None)
    return resource.canonical if resource is not None else "unmatched"


def method_of(request: web.BaseRequest) -> str:
    """Return the method, or `other` for one the service does not know."""
    return request.method if request.method in METHODS else "other"


def operation_label(name: object) -> str:
    """Return the label of an operation name: its own for a shipped operation, else `other`."""
    return name if isinstance(name, str) and name in SHIPPED_NAMES else "other"


def type_label(kind: object) -> str:
    """Return the label of an operation type (`unknown` when the document names none)."""
    return kind if isinstance(kind, str) and kind in OPERATION_TYPES else "unknown"


def code_label(code: object) -> str:
    """Return the label of an error code: a contract code, `none`, or `other`."""
    if code is None:
        return "none"
    return code if isinstance(code, str) and code in CODES else "other"


class Clock:
    """Times one piece of work."""

    def __init__(self) -> None:
        self.started = time.perf_counter()

    def seconds(self) -> float:
        """Return the seconds since the clock started."""
        return time.perf_counter() - self.started


def may_scrape(request: web.Request, token: str | None) -> bool:
    """Return whether the request may read the metrics: the metrics token, or an admin token."""
    if token:
        sent = request.headers.get("Authorization", "")
        scheme, _, credentials = sent.partition(" ")
        # Header text that is not UTF-8 (aiohttp decodes it as such, with surrogates) compares as
        # the bytes it was; it cannot equal a token, and must not fail.
        sent_bytes = credentials.strip().encode("utf-8", "surrogateescape")
        if scheme.lower() == "bearer" and hmac.compare_digest(sent_bytes, token.encode()):
            return True
    viewer = request.get(VIEWER)
    return viewer is not None and Persona.ADMIN in viewer.personas


def exposition_response(body: bytes) -> web.Response:
    """Return a scrape's answer in the Prometheus text format."""
    response = web.Response(body=body)
    response.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return response
