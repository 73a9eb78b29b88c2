"""Generated requests never show an exec-only token an internal KPI, on any path, errors included.

hypothesis-graphql draws operation shapes over the exported `schema.graphql` (every Query and
Mutation root field); a cheap seeded pass then makes many requests of each shape: it draws the
arguments again (the internal slugs, real incident ids and cursors, exec slugs, and garbage), adds
aliases, `__typename`, fragments and `@skip`/`@include`, names some operations and moves some
arguments into variables. Each request is sent over real HTTP with real exec and stakeholder
tokens, by POST and by GET (query, variables and operationName in the query string); the REST
mirror gets generated paths and parameters, invalid ones included; the pages under /ui/ get
generated paths, parameters, forms and headers, sent with a session each exec-only persona
opened through the sign-in form. The world is seeded with canaries: an internal KPI whose every
text field carries a marker, sentinel values on the observations of both internal KPIs (ingested
and computed), and the seeded internal `mtta`, whose slug, name and owner are canaries too.

The raw text of every answer, body and headers, is searched for every canary; only an ETag or a
request id that is an opaque hash is left out (and on the pages, the random session ids and CSRF
tokens). A page is also searched for the numbers as a page prints them (`987,654`), in its link
targets and redirects once percent-decoded. Where the request itself names an internal slug
(and an error could echo it), the answer is compared with the answer to the same request naming
an absent slug of the same length instead: same status, same body bytes, same headers.

MIM_LEAK_SIZE=full (`make security`) sends at least 10,000 query requests (and as many by GET),
2,000 mutation requests, 2,000 REST requests and 2,000 page requests per exec-only persona; the
default `ci` sample is a small fraction. Hypothesis cannot drive an async test, so the shapes are
drawn by a synchronous `@given` function that collects them; LEAK_SEED replays a run's requests
exactly.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import random
import re
import time
import zlib
from collections import Counter
from collections.abc import Awaitable, Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, fields, replace
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qs, quote, unquote, urlencode, urljoin, urlsplit

import aiohttp
import graphql
import pytest
from aiohttp.test_utils import TestClient
from hypothesis import strategies as st
from hypothesis_graphql import from_schema, mutations, nodes, queries
from yarl import URL

from registry import generation
from registry.tables import TABLES, KpiObservation
from server.config import Settings
from server.pages import format as page_format
from server.pages import session as page_session
from tests.conftest import COUNTS, ENV, EXEC_ONLY, draw_examples, make_token, run_seed

pytestmark = [
    pytest.mark.security,
    # graphql-core's own coroutine for a field whose sibling failed first, never started: the
    # same as UNSTARTED_RESOLVER (schema/__init__.py) one level down, seen in full-size runs on
    # PostgreSQL; and the same, collected where its warning cannot be made (see pyproject.toml).
    pytest.mark.filterwarnings(
        "ignore:coroutine 'Executor\\.complete_awaitable_value' was never awaited:RuntimeWarning"
    ),
    pytest.mark.filterwarnings(
        "ignore:Exception ignored in. <coroutine object Executor\\.complete_awaitable_value"
        ":pytest.PytestUnraisableExceptionWarning"
    ),
]

SCHEMA_SDL = (Path(__file__).resolve().parents[2] / "schema.graphql").read_text()
SCHEMA = graphql.build_schema(SCHEMA_SDL)
QUERY_FIELDS = sorted(SCHEMA.query_type.fields) if SCHEMA.query_type else []
MUTATION_FIELDS = sorted(SCHEMA.mutation_type.fields) if SCHEMA.mutation_type else []


@pytest.fixture
def settings() -> Settings:
    """The service as it runs: answers kept per worker too (server/answers.py), so that the
    search also tries every request against answers kept for other callers."""
    return Settings.from_env({**ENV, "MIM_ANSWER_CACHE": "1"})


@dataclass(frozen=True)
class Size:
    """How many requests to generate; the request counts are per exec-only persona."""

    shapes_per_field: int  # hypothesis-graphql documents per Query field (`viewer`: a tenth)
    mixed_shapes: int  # ... over every Query field at once
    queries: int  # distinct query requests, each sent by POST and again by GET
    shapes_per_mutation: int  # per Mutation field, plus as many again from both roots at once
    mutations: int  # distinct mutation requests
    rest: int  # REST requests
    pages: int  # requests to the pages under /ui/, each with an exec-only persona's session
    control_every: int  # every n-th query request is also sent with an admin token


# MIM_LEAK_SIZE picks one; LEAK_SCALE multiplies its counts (e.g. LEAK_SCALE=5 for a long soak);
# LEAK_SEED replays one run's requests exactly.
SIZES = {
    "ci": Size(16, 16, 240, 4, 120, 240, 240, 4),
    "full": Size(200, 200, 10_000, 25, 2_000, 2_500, 2_500, 20),
}
# What the full size must reach, per exec-only persona.
GOALS = {
    "generated queries": 10_000,
    "GET requests": 10_000,
    "generated mutations": 2_000,
    "REST requests": 2_000,
    "page requests": 2_000,
}
SIZE_NAME = os.environ.get("MIM_LEAK_SIZE") or "ci"
assert SIZE_NAME in SIZES, f"MIM_LEAK_SIZE must be one of {sorted(SIZES)}, not {SIZE_NAME!r}"
SCALE = float(os.environ.get("LEAK_SCALE", "1"))
SIZE = replace(
    SIZES[SIZE_NAME],
    **{
        field.name: max(1, round(getattr(SIZES[SIZE_NAME], field.name) * SCALE))
        for field in fields(Size)
        if field.name != "control_every"
    },
)
SEED = run_seed("LEAK_SEED")
# Requests in flight at once, on one client: reads interleave across personas, as in production.
IN_FLIGHT = 8

EXEC_SLUGS = ("cadence-adherence", "mttr", "stakeholder-satisfaction")
UNKNOWN_SLUG = "does-not-exist"

# --- the canaries --------------------------------------------------------------------------------

TAG = "CANARY-7f3a9c"
CANARY_SLUG = "zz-canary-internal"
SENTINEL = 987654.321  # every ingested and computed observation of the canary KPI
MTTA_SENTINEL = 876543.125  # ingested observations of mtta
MTTA_COMPUTED = 4321.75  # what mtta computes: gather entered 4321.75 minutes after the first alert
CANARY_MICROS = "424242"  # the sub-second part of every internal observation's timestamp
CANARY_THRESHOLD = 555555.5
CANARY_PERSONA_THRESHOLD = 444444.25
CANARY_EXPRESSION = "987654.321 + 0 * count(alerts)"
CANARY_DEFINITION = {
    "slug": CANARY_SLUG,
    "name": f"{TAG} name",
    "description": f"{TAG} description",
    "formula": f"{TAG} formula",
    "expression": CANARY_EXPRESSION,
    "units": f"{TAG} units",
    "targets": [
        {"severity": "P1", "comparison": "AT_MOST", "threshold": CANARY_THRESHOLD},
        {"persona": "STAKEHOLDER", "comparison": "AT_MOST", "threshold": CANARY_PERSONA_THRESHOLD},
    ],
    "dataSources": [f"{TAG} source one", f"{TAG} source two"],
    "visibility": "INTERNAL",
    "owner": f"{TAG} owner",
    "reviewCadence": "P30D",
}

# A KPI created for execs and then made internal: hidden from them at every date (kpi(asOf:)).
FORMER_SLUG = "zz-canary-formerly"
FORMER_DEFINITION = {
    **CANARY_DEFINITION,
    "slug": FORMER_SLUG,
    "name": f"{TAG} former name",
    "visibility": "EXEC",
}

# Matched case-insensitively against the raw text of every answer to an exec-only token.
CANARIES = (
    CANARY_SLUG,
    FORMER_SLUG,
    TAG,
    "987654",  # the sentinel, however it is printed: 987654.321, 987654.32, 987654.3210...
    "87654321",  # ... or 9.87654321e+05
    "876543",  # the mtta sentinel: 876543.125, 8.76543125e+05
    "76543125",
    "4321.75",  # mtta's computed value, in minutes
    "4.32175",
    "259305",  # ... and in seconds (4321.75 * 60)
    CANARY_MICROS,
    "555555",
    "444444",
    # the seeded internal mtta
    "mtta",
    "Mean Time to Acknowledge",
    "MIM Lead",
    "Average time from alert issue",
    "phase_entered_at",
    "alert.issue_time",
    "timeline.phase_entered",
)
# A request naming an internal slug is replayed naming an absent slug of the same length, so that
# positions in error messages stay the same; the two answers must then be the same bytes.
TWINS = {CANARY_SLUG: "zz-absent-internal", FORMER_SLUG: "zz-absent-formerly", "mtta": "mxxa"}
assert all(len(a) == len(b) for a, b in TWINS.items())

# --- the world -----------------------------------------------------------------------------------

INCIDENTS = [
    # id, severity, detectedAt, resolvedAt
    ("INC-LEAK-1", "P1", "2026-03-02T09:00:00Z", "2026-03-02T11:30:00Z"),
    ("INC-LEAK-2", "P2", "2026-03-09T14:00:00Z", "2026-03-09T20:00:00Z"),
    ("INC-LEAK-3", "P3", "2026-04-01T08:00:00Z", None),
    ("INC-LEAK-4", "P4", "2026-04-15T22:00:00Z", "2026-04-16T01:00:00Z"),
]
INCIDENT_IDS = [row[0] for row in INCIDENTS]
ALERTS = [
    ("INC-LEAK-1", "2026-03-02T08:55:00Z", "pager"),
    ("INC-LEAK-1", "2026-03-02T08:58:00Z", "synthetics"),
    ("INC-LEAK-2", "2026-03-09T13:50:00Z", "pager"),
    ("INC-LEAK-4", "2026-04-15T21:59:00Z", None),
]
TIMELINE = [
    # incident, kind, phase, occurredAt, note; gather comes 4321.75 minutes after the first alert
    ("INC-LEAK-1", "phase", "declare", "2026-03-02T09:00:00Z", "declared"),
    ("INC-LEAK-1", "phase", "gather", "2026-03-05T08:56:45Z", None),
    ("INC-LEAK-1", "note", None, "2026-03-05T09:10:00Z", "status page updated"),
    ("INC-LEAK-2", "phase", "gather", "2026-03-12T13:51:45Z", "war room open"),
    ("INC-LEAK-3", "phase", "declare", "2026-04-01T08:05:00Z", None),
]
MILESTONES = [
    ("INC-LEAK-1", "mitigation", "2026-03-02T10:00:00Z", "2026-03-02T09:45:00Z"),
    ("INC-LEAK-1", "root cause", "2026-03-02T11:00:00Z", "2026-03-02T12:00:00Z"),
    ("INC-LEAK-2", "mitigation", "2026-03-09T16:00:00Z", "2026-03-09T15:30:00Z"),
    ("INC-LEAK-3", "mitigation", "2026-04-01T12:00:00Z", None),
]
SURVEYS = [
    ("INC-LEAK-1", 4, "2026-03-03T09:00:00Z"),
    ("INC-LEAK-1", 5, "2026-03-03T10:00:00Z"),
    ("INC-LEAK-2", 3, "2026-03-10T09:00:00Z"),
]
# Ingested observations: (slug, incident, timestamp, value).
OBSERVATIONS = [
    (CANARY_SLUG, "INC-LEAK-1", f"2026-03-02T09:30:00.{CANARY_MICROS}Z", SENTINEL),
    (CANARY_SLUG, "INC-LEAK-2", f"2026-03-09T15:00:00.{CANARY_MICROS}Z", SENTINEL),
    (CANARY_SLUG, "INC-LEAK-3", f"2026-04-01T09:00:00.{CANARY_MICROS}Z", SENTINEL),
    ("mtta", "INC-LEAK-1", f"2026-03-02T10:00:00.{CANARY_MICROS}Z", MTTA_SENTINEL),
    ("mtta", "INC-LEAK-3", f"2026-04-01T10:00:00.{CANARY_MICROS}Z", MTTA_SENTINEL),
    ("mttr", "INC-LEAK-3", "2026-04-01T09:00:00Z", 75.5),
    ("cadence-adherence", "INC-LEAK-3", "2026-04-01T09:00:00Z", 80.0),
    ("stakeholder-satisfaction", "INC-LEAK-4", "2026-04-16T02:00:00Z", 4.25),
]
# Instants that matter to the data above, so generated windows often cut through it.
INSTANTS = sorted(
    {row[2] for row in INCIDENTS}
    | {row[3] for row in INCIDENTS if row[3]}
    | {row[1] for row in ALERTS}
    | {row[3] for row in TIMELINE}
    | {row[2] for row in OBSERVATIONS if CANARY_MICROS not in row[2]}
    | {"2026-03-01T00:00:00Z", "2026-04-01T00:00:00Z", "2026-05-01T00:00:00Z"}
)


async def post(
    client: TestClient, token: str, query: str, variables: dict[str, Any] | None = None
) -> tuple[int, str]:
    response = await client.post(
        "/graphql",
        json={"query": query, "variables": variables or {}},
        headers={"Authorization": f"Bearer {token}"},
    )
    return response.status, await response.text()


async def get(client: TestClient, token: str, path: str, **params: str) -> tuple[int, str]:
    response = await client.get(path, params=params, headers={"Authorization": f"Bearer {token}"})
    return response.status, await response.text()


async def ok(client: TestClient, persona: str, query: str, variables: Any = None) -> Any:
    status, text = await post(client, make_token(persona), query, variables)
    body = json.loads(text)
    assert status == 200 and "errors" not in body, text
    return body["data"]


def _each(rows: Iterable[tuple[Any, ...]], names: tuple[str, ...]) -> list[dict[str, Any]]:
    return [{k: v for k, v in zip(names, row, strict=True) if v is not None} for row in rows]


async def seed_world(client: TestClient) -> None:
    """Set up incidents with every kind of child, the canary KPI, and observations of all KPIs."""
    define = """mutation ($input: CreateKpiDefinitionInput!) {
      createKpiDefinition(input: $input) { slug visibility } }"""
    created = await ok(client, "admin", define, {"input": CANARY_DEFINITION})
    assert created["createKpiDefinition"] == {"slug": CANARY_SLUG, "visibility": "INTERNAL"}
    update = """mutation ($slug: String!, $input: UpdateKpiDefinitionInput!, $note: String) {
      updateKpiDefinition(slug: $slug, input: $input, note: $note) { version } }"""
    await ok(
        client,
        "admin",
        update,
        {"slug": CANARY_SLUG, "input": {"formula": f"{TAG} formula v2"}, "note": f"{TAG} note"},
    )
    reviewed = """mutation ($slug: String!, $note: String) {
      markKpiReviewed(slug: $slug, note: $note) { version } }"""
    await ok(client, "admin", reviewed, {"slug": CANARY_SLUG, "note": f"{TAG} review"})
    await ok(client, "admin", reviewed, {"slug": "mtta", "note": f"{TAG} mtta review"})
    await ok(client, "admin", define, {"input": FORMER_DEFINITION})
    internal = {"visibility": "INTERNAL", "description": f"{TAG} description v2"}
    made = {"slug": FORMER_SLUG, "input": internal, "note": f"{TAG} made internal"}
    await ok(client, "admin", update, made)

    batches: list[tuple[str, str, list[dict[str, Any]]]] = [
        (
            "upsertIncident(input: $input) { id }",
            "IncidentInput",
            [
                {"id": key, "title": f"Outage {key}", "severity": sev, "detectedAt": det}
                | ({"resolvedAt": res} if res else {})
                for key, sev, det, res in INCIDENTS
            ],
        ),
        (
            "recordAlert(input: $input) { id }",
            "AlertInput",
            _each(ALERTS, ("incidentId", "issueTime", "source")),
        ),
        (
            "recordTimelineEvent(input: $input) { kind }",
            "TimelineEventInput",
            _each(TIMELINE, ("incidentId", "kind", "phase", "occurredAt", "note")),
        ),
        (
            "recordMilestone(input: $input) { name }",
            "MilestoneInput",
            _each(MILESTONES, ("incidentId", "name", "committedEta", "deliveredAt")),
        ),
        (
            "recordSurveyResponse(input: $input) { score }",
            "SurveyResponseInput",
            _each(SURVEYS, ("incidentId", "score", "submittedAt")),
        ),
    ]
    for selection, input_type, inputs in batches:
        for item in inputs:
            await ok(
                client,
                "ingest",
                f"mutation ($input: {input_type}!) {{ {selection} }}",
                {"input": item},
            )
    record = """mutation ($inputs: [RecordObservationInput!]!) {
      recordObservations(inputs: $inputs) { value } }"""
    observations = [
        {"kpiSlug": s, "incidentId": i, "timestamp": t, "value": v, "source": "import"}
        for s, i, t, v in OBSERVATIONS
    ]
    await ok(client, "ingest", record, {"inputs": observations})
    await ok(client, "admin", 'mutation { backfillKpi(slug: "mtta") { skipped } }')

    # The world is as designed: internal KPIs have ingested and computed rows with the sentinels.
    rows = await ok(client, "admin", ALL_OBSERVATIONS)
    values = {(o["kpi"]["slug"], o["source"], o["value"]) for o in observations_of(rows)}
    assert (CANARY_SLUG, "computed", SENTINEL) in values, values
    assert (CANARY_SLUG, "import", SENTINEL) in values, values
    assert ("mtta", "computed", MTTA_COMPUTED) in values, values
    assert ("mtta", "import", MTTA_SENTINEL) in values, values
    assert {slug for slug, _, _ in values} == {*INTERNAL_SLUGS, *EXEC_SLUGS}


ALL_OBSERVATIONS = """{
  incidents(first: 100) { totalCount edges { node {
    id severity
    kpis { timestamp value source kpi { slug visibility } }
  } } }
}"""


def observations_of(data: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {**o, "severity": e["node"]["severity"], "incident": e["node"]["id"]}
        for e in data["incidents"]["edges"]
        for o in e["node"]["kpis"]
    ]


# --- strategies ----------------------------------------------------------------------------------


def _iso(moment: datetime, offset: str) -> str:
    if offset == "Z":
        return moment.strftime("%Y-%m-%dT%H:%M:%SZ")
    sign = 1 if offset[0] == "+" else -1
    hours, minutes = map(int, offset[1:].split(":"))
    local = moment + sign * timedelta(hours=hours, minutes=minutes)
    return local.strftime("%Y-%m-%dT%H:%M:%S") + offset


OFFSETS = ("Z", "Z", "Z", "+00:00", "+05:30", "-08:00")
DATETIMES = st.one_of(
    st.sampled_from(INSTANTS),
    st.builds(
        _iso,
        st.datetimes(min_value=datetime(2026, 1, 1), max_value=datetime(2026, 12, 31)).map(
            lambda d: d.replace(microsecond=0)
        ),
        st.sampled_from(OFFSETS),
    ),
)
INTERNAL_SLUGS = (CANARY_SLUG, FORMER_SLUG, "mtta")
# Stand-ins for what only the world knows: the cursors it issues (one per incident, newest first)
# and the moments the formerly exec KPI was created and made internal (for asOf). The requests
# are generated once per run; each world's values replace these when they are sent.
CURSOR_MARKS = tuple(f"issued-cursor-{n}" for n in range(len(INCIDENTS)))
HISTORY_MARKS = ("history-created", "history-made-internal")


def garbage() -> st.SearchStrategy[str]:
    return st.one_of(
        st.text(max_size=24),
        st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=24),
        st.sampled_from(["", " ", "\x00", "MTTA", "mtta ", "%", "'; --", "INC-NOPE", "null"]),
    )


def scalar_strategies(cursors: Sequence[str]) -> dict[str, st.SearchStrategy[graphql.ValueNode]]:
    """Arguments: the internal slugs, real ids and cursors, exec slugs, and garbage."""
    strings = st.one_of(
        st.sampled_from(INTERNAL_SLUGS),
        st.sampled_from([UNKNOWN_SLUG, *EXEC_SLUGS]),
        st.sampled_from(INCIDENT_IDS),
        st.sampled_from(cursors),
        garbage(),
    )
    return {
        "String": strings.map(nodes.String),
        "ID": st.one_of(
            st.sampled_from(INCIDENT_IDS).map(nodes.String),
            strings.map(nodes.String),
            st.integers(-5, 10).map(nodes.Int),
        ),
        "Int": st.one_of(
            st.integers(1, 100),
            st.integers(1, 5),
            st.sampled_from([0, -1, 101, 2**31 - 1, -(2**31)]),
        ).map(nodes.Int),
        "DateTime": DATETIMES.map(nodes.String),
    }


def draw(strategy: st.SearchStrategy[Any], count: int, salt: int = 0) -> list[Any]:
    """Return `count` examples of `strategy`, drawn under this module's seed plus `salt`."""
    return draw_examples(strategy, count, SEED + salt)


class _Steer(graphql.Visitor):
    """Turn most requests a cheap check would refuse into ones that reach the data.

    Every nullable argument is always present in a generated document, so most `after` and
    `before` values are not cursors, most `from`/`to` pairs are backwards and every page mixes
    first with last, and most `incidents` and `series` selections would stop at BAD_USER_INPUT.
    Most of those are made valid here; which ones depends only on the value (crc32), so a seed
    still replays the same documents.
    """

    def __init__(self, cursors: Sequence[str]) -> None:
        super().__init__()
        self.cursors = set(cursors)

    def enter_field(self, node: graphql.FieldNode, *_: Any) -> graphql.FieldNode | None:
        args = {a.name.value: a for a in node.arguments or ()}
        changed = dict(args)
        for name in ("after", "before"):
            cursor = args.get(name)
            if (
                cursor is not None
                and isinstance(cursor.value, graphql.StringValueNode)
                and cursor.value.value not in self.cursors
                and zlib.crc32(cursor.value.value.encode()) % 4
            ):
                changed[name] = graphql.ArgumentNode(name=cursor.name, value=nodes.Null)
        if {"first", "last"} <= set(args):
            # Paging both ways at once is refused: most pages go one way (forward or backward).
            roll = zlib.crc32(graphql.print_ast(node).encode()) % 8
            for name in ("last", "before") if roll < 4 else ("first", "after") if roll < 7 else ():
                if name in args:
                    changed[name] = graphql.ArgumentNode(name=args[name].name, value=nodes.Null)
        start, end = args.get("from"), args.get("to")
        if (
            start is not None
            and end is not None
            and isinstance(start.value, graphql.StringValueNode)
            and isinstance(end.value, graphql.StringValueNode)
            and later_or_same(start.value.value, end.value.value)
            and zlib.crc32((start.value.value + end.value.value).encode()) % 4
        ):
            changed["from"] = graphql.ArgumentNode(name=start.name, value=end.value)
            changed["to"] = graphql.ArgumentNode(name=end.name, value=start.value)
        if changed == args:
            return None
        return graphql.FieldNode(
            alias=node.alias,
            name=node.name,
            arguments=tuple(changed.values()),
            directives=node.directives,
            selection_set=node.selection_set,
        )


def later_or_same(start: str, end: str) -> bool:
    """Whether a window from `start` to `end` is backwards (False when either is no date-time)."""
    try:
        return parse_time(start) >= parse_time(end)
    except ValueError:
        return False


def steered(cursors: Sequence[str]) -> Callable[[graphql.DocumentNode], str]:
    steer = _Steer(cursors)
    return lambda document: graphql.print_ast(graphql.visit(document, steer))


# --- requests: many cheap variants of each drawn shape -------------------------------------------

ODD_TEXT = (
    *("", " ", "\x00", "MTTA", "Mtta", "mtta ", " mtta", "mtta\n", "MTTA-", "%", "%25", "'; --"),
    *("INC-NOPE", "inc-leak-1", "null", "..", "/", "\\", '"', "\u202e", "é", "🙂", "a" * 65),
    f"{CANARY_SLUG} ",
    CANARY_SLUG.upper(),
)
TEXT_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789-_ .,:/%é🙂\u00a0"
EXPRESSIONS = (
    "count(alerts)",
    "minutes(resolved_at - detected_at)",
    "avg(surveys.score)",
    "100 * count(milestones where delivered_at <= committed_eta) / count(milestones)",
    "hours(resolved_at - detected_at) + 1",
    "count(",
    "unknown_name + 1",
)
CADENCES = ("P30D", "P90D", "P1Y", "P2W", "PT12H", "P0D", "P20Y", "-P1D", "90 days", "")
ENUMS = {
    name: tuple(kind.values)
    for name, kind in SCHEMA.type_map.items()
    if isinstance(kind, graphql.GraphQLEnumType) and not name.startswith("__")
}


class Values:
    """Draws argument values by name: mostly ones that reach the data, at the rate `odd` ones
    that a check must refuse (garbage, out of range, unknown)."""

    def __init__(self, rng: random.Random, odd: float = 0.1) -> None:
        self.rng, self.odd = rng, odd

    def pick(self, name: str, where: str, type_name: str) -> graphql.ValueNode:
        rng, odd = self.rng, self.rng.random() < self.odd
        if type_name in ENUMS:
            return nodes.Enum(rng.choice(ENUMS[type_name]))
        if type_name == "Boolean":
            return nodes.Boolean(rng.random() < 0.5)
        if name in ("slug", "kpiSlug", "slugs"):
            if where == "CreateKpiDefinitionInput" and not odd and rng.random() < 0.8:
                return nodes.String(f"gen-{rng.randrange(10**6)}")
            return nodes.String(self.text() if odd else self.slug())
        if name in ("id", "incidentId"):
            if where == "IncidentInput" and rng.random() < 0.4:
                return nodes.String(f"INC-GEN-{rng.randrange(1000)}")
            return nodes.String(self.text() if odd else rng.choice(INCIDENT_IDS))
        if name in ("after", "before"):
            return nodes.String(self.text() if odd else rng.choice(CURSOR_MARKS))
        if name in ("first", "last"):
            return nodes.Int(rng.choice((0, -1, 101, 2**31 - 1)) if odd else rng.randint(1, 100))
        if name == "reviewCadence":
            return nodes.String(rng.choice(CADENCES[5:] if odd else CADENCES[:5]))
        if name == "expression":
            return nodes.String(rng.choice(EXPRESSIONS[5:] if odd else EXPRESSIONS[:5]))
        if name == "score":
            return nodes.Int(rng.choice((0, 6, -1)) if odd else rng.randint(1, 5))
        if name == "confidence":
            return nodes.Float(1.5 if odd else round(rng.random(), 3))
        if name == "asOf" and not odd and rng.random() < 0.5:
            return nodes.String(rng.choice(HISTORY_MARKS))
        if type_name == "DateTime":
            return nodes.String(self.instant(odd))
        if type_name == "Float":
            large = rng.choice((1e13, -1e13, 1e300))
            return nodes.Float(large if odd else round(rng.uniform(-500, 5000), 2))
        if type_name == "Int":
            return nodes.Int(rng.randint(-3, 120))
        return nodes.String(self.text() if odd else self.words())

    def slug(self) -> str:
        """A KPI slug to look up: often an internal one, more often an exec one."""
        roll = self.rng.random()
        if roll < 0.3:
            return self.rng.choice(INTERNAL_SLUGS)
        if roll < 0.9:
            return self.rng.choice(EXEC_SLUGS)
        return UNKNOWN_SLUG

    def instant(self, odd: bool = False) -> str:
        rng = self.rng
        if odd:
            return rng.choice(("2026-03-01T00:00:00", "1969-12-31T23:59:59Z", "2300-01-01T00:00Z"))
        if rng.random() < 0.5:
            return rng.choice(INSTANTS)
        moment = datetime(2026, 1, 1) + timedelta(seconds=rng.randrange(365 * 86400))
        return _iso(moment, rng.choice(OFFSETS))

    def words(self) -> str:
        """Text a check accepts, sometimes naming a KPI or an incident."""
        rng = self.rng
        if rng.random() < 0.2:
            return rng.choice((*INTERNAL_SLUGS, *EXEC_SLUGS, *INCIDENT_IDS))
        return "".join(rng.choices(TEXT_ALPHABET, k=rng.randint(1, 16))).strip() or "x"

    def text(self) -> str:
        """Any text, odd text often."""
        return self.rng.choice(ODD_TEXT) if self.rng.random() < 0.5 else self.words()


class _Vary(graphql.Visitor):
    """Make another request of a drawn shape: draw its argument values again (keeping some of
    hypothesis's), and dress its selections in aliases, `__typename`, fragments and directives.

    Run under a graphql.TypeInfoVisitor, so every value knows the type it must have.
    """

    def __init__(self, rng: random.Random, type_info: graphql.TypeInfo, *, keep: float) -> None:
        super().__init__()
        self.rng, self.type_info = rng, type_info
        self.keep = keep  # the share of hypothesis's own values kept as they were drawn
        self.values = Values(rng, odd=keep / 2)
        self.names: list[tuple[str, str]] = []  # the argument or input field being filled, where
        self.fragments: list[graphql.FragmentDefinitionNode] = []
        self.added = 0

    def enter_argument(self, node: graphql.ArgumentNode, *_: Any) -> None:
        self.names.append((node.name.value, ""))

    def enter_object_field(self, node: graphql.ObjectFieldNode, *_: Any) -> None:
        parent = self.type_info.get_parent_input_type()
        self.names.append((node.name.value, getattr(parent, "name", "")))

    def leave_argument(self, *_: Any) -> None:
        self.names.pop()

    leave_object_field = leave_argument

    def _leaf(self, node: graphql.ValueNode, *_: Any) -> graphql.ValueNode | None:
        expected = self.type_info.get_input_type()
        if not self.names or expected is None or self.rng.random() < self.keep:
            return None
        named = graphql.get_named_type(expected)
        if not graphql.is_leaf_type(named):
            return None  # a null list or input object stays null
        if graphql.is_nullable_type(expected) and self.rng.random() < 0.1:
            return nodes.Null
        return self.values.pick(*self.names[-1], named.name)

    enter_string_value = enter_int_value = enter_float_value = _leaf
    enter_enum_value = enter_null_value = _leaf

    def leave_field(self, node: graphql.FieldNode, *_: Any) -> graphql.FieldNode | None:
        rng = self.rng
        if rng.random() > 0.35:
            return None
        selections = node.selection_set
        kind = graphql.get_named_type(self.type_info.get_type())
        if selections is not None and kind is not None:
            if rng.random() < 0.3:
                selections = self.with_typename(selections)
            roll = rng.random()
            if roll < 0.25:
                selections = self.as_fragment(selections, kind.name)
            elif roll < 0.4:
                condition = graphql.NamedTypeNode(name=graphql.NameNode(value=kind.name))
                inline = graphql.InlineFragmentNode(
                    type_condition=condition if rng.random() < 0.5 else None,
                    directives=(),
                    selection_set=selections,
                )
                selections = graphql.SelectionSetNode(selections=(inline,))
        alias = node.alias
        if alias is None and rng.random() < 0.2:
            alias = graphql.NameNode(value=self.new_name("a"))
        directives = tuple(node.directives or ())
        if rng.random() < 0.15:
            directives += (self.directive(),)
        return graphql.FieldNode(
            alias=alias,
            name=node.name,
            arguments=node.arguments,
            directives=directives,
            selection_set=selections,
        )

    def leave_operation_definition(
        self, node: graphql.OperationDefinitionNode, *_: Any
    ) -> graphql.OperationDefinitionNode | None:
        if self.rng.random() > 0.1:
            return None
        kind = "Query" if node.operation == graphql.OperationType.QUERY else "Mutation"
        spread = self.as_fragment(node.selection_set, kind)
        return graphql.OperationDefinitionNode(
            operation=node.operation,
            name=node.name,
            variable_definitions=node.variable_definitions,
            directives=node.directives,
            selection_set=spread,
        )

    def with_typename(self, selections: graphql.SelectionSetNode) -> graphql.SelectionSetNode:
        typename = graphql.FieldNode(name=graphql.NameNode(value="__typename"))
        return graphql.SelectionSetNode(selections=(*selections.selections, typename))

    def as_fragment(
        self, selections: graphql.SelectionSetNode, on: str
    ) -> graphql.SelectionSetNode:
        name = graphql.NameNode(value=self.new_name("F"))
        self.fragments.append(
            graphql.FragmentDefinitionNode(
                name=name,
                type_condition=graphql.NamedTypeNode(name=graphql.NameNode(value=on)),
                directives=(),
                selection_set=selections,
            )
        )
        spread = graphql.FragmentSpreadNode(name=name, directives=())
        return graphql.SelectionSetNode(selections=(spread,))

    def directive(self) -> graphql.DirectiveNode:
        name = self.rng.choice(("include", "skip"))
        # Mostly the literal that keeps the field, so that the answer still shows it.
        keep = self.rng.random() < 0.8
        value = nodes.Boolean(keep if name == "include" else not keep)
        argument = graphql.ArgumentNode(name=graphql.NameNode(value="if"), value=value)
        return graphql.DirectiveNode(name=graphql.NameNode(value=name), arguments=(argument,))

    def new_name(self, prefix: str) -> str:
        self.added += 1
        return f"{prefix}{self.added}"


class _Variables(graphql.Visitor):
    """Move some arguments (directive ones too) into variables of the operation."""

    def __init__(self, rng: random.Random, type_info: graphql.TypeInfo, share: float) -> None:
        super().__init__()
        self.rng, self.type_info, self.share = rng, type_info, share
        self.definitions: list[graphql.VariableDefinitionNode] = []
        self.values: dict[str, Any] = {}

    def enter_argument(self, node: graphql.ArgumentNode, *_: Any) -> graphql.ArgumentNode | None:
        expected = self.type_info.get_input_type()
        if expected is None or self.rng.random() >= self.share:
            return None
        name = f"v{len(self.definitions)}"
        self.values[name] = graphql.value_from_ast_untyped(node.value)
        self.definitions.append(
            graphql.VariableDefinitionNode(
                variable=graphql.VariableNode(name=graphql.NameNode(value=name)),
                type=graphql.parse_type(str(expected)),
                directives=(),
            )
        )
        return graphql.ArgumentNode(
            name=node.name, value=graphql.VariableNode(name=graphql.NameNode(value=name))
        )


@dataclass(frozen=True)
class Request:
    """One generated GraphQL request: the document, its variables, the operation to run."""

    query: str
    variables: str | None  # JSON
    operation_name: str | None
    mutation: bool
    fields: tuple[str, ...]  # the root fields it selects
    get_params: tuple[tuple[str, str], ...]  # the same request as a GET query string

    def text(self) -> str:
        """Everything the request sends, to tell what an answer may echo."""
        return "\n".join([self.query, self.variables or "", self.operation_name or ""])

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"query": self.query}
        if self.variables is not None:
            body["variables"] = json.loads(self.variables)
        if self.operation_name is not None:
            body["operationName"] = self.operation_name
        return body

    def mapped(self, change: Callable[[str], str]) -> Request:
        """Return the request with `change` applied to every text it sends."""
        return replace(
            self,
            query=change(self.query),
            variables=None if self.variables is None else change(self.variables),
            operation_name=None if self.operation_name is None else change(self.operation_name),
            get_params=tuple((k, change(v)) for k, v in self.get_params),
        )


# A GET whose request line is longer than 8,190 bytes meets aiohttp's own plain-text 400 before
# the application sees it: no request is generated that would not fit.
MAX_GET_TARGET = 8000


def as_request(document: graphql.DocumentNode, rng: random.Random) -> Request:
    """Return a document as a request: sometimes named, sometimes with variables."""
    operation = document.definitions[0]
    assert isinstance(operation, graphql.OperationDefinitionNode)
    variables: dict[str, Any] | None = None
    if rng.random() < 0.4:
        collect = _Variables(rng, graphql.TypeInfo(SCHEMA), share=rng.choice((0.5, 1.0)))
        document = graphql.visit(document, graphql.TypeInfoVisitor(collect.type_info, collect))
        operation = document.definitions[0]
        assert isinstance(operation, graphql.OperationDefinitionNode)
        variables = collect.values
        operation = replace_operation(operation, variable_definitions=tuple(collect.definitions))
    name = None
    if rng.random() < 0.5:
        name = f"{rng.choice(('Probe', 'Dashboard', 'q', 'Op_'))}{rng.randrange(100)}"
        operation = replace_operation(operation, name=graphql.NameNode(value=name))
    document = graphql.DocumentNode(definitions=(operation, *document.definitions[1:]))
    query = graphql.print_ast(document)
    variables_json = None if variables is None else json.dumps(variables)
    sent_name = name if rng.random() < 0.7 else None  # a lone operation needs no name sent
    params = [("query", query)]
    if variables_json is not None:
        params.append(("variables", variables_json))
    if sent_name is not None:
        params.append(("operationName", sent_name))
    if rng.random() < 0.08:
        params = mangled(params, rng)
    return Request(
        query=query,
        variables=variables_json,
        operation_name=sent_name,
        mutation=operation.operation == graphql.OperationType.MUTATION,
        fields=root_fields(document),
        get_params=tuple(params),
    )


def mangled(params: list[tuple[str, str]], rng: random.Random) -> list[tuple[str, str]]:
    """Return GET parameters spoiled in one way: what the executor must refuse, saying nothing."""
    roll = rng.randrange(6)
    if roll == 0:
        return [*params, ("variables", "{not json")]
    if roll == 1:
        return [*params, ("operationName", "Nope")]
    if roll == 2:
        return [*params, ("operationName", "1bad name")]
    if roll == 3:
        return [*params, params[0]]  # the query twice
    if roll == 4:
        return [(k, v) for k, v in params if k != "query"] + [("variables", "[1]")]
    return [*params, ("variables", json.dumps({"slug": rng.choice(INTERNAL_SLUGS)}))]


def replace_operation(
    operation: graphql.OperationDefinitionNode, **changes: Any
) -> graphql.OperationDefinitionNode:
    fields = {
        "operation": operation.operation,
        "name": operation.name,
        "variable_definitions": operation.variable_definitions,
        "directives": operation.directives,
        "selection_set": operation.selection_set,
    }
    return graphql.OperationDefinitionNode(**(fields | changes))


def root_fields(document: graphql.DocumentNode) -> tuple[str, ...]:
    """Return the root fields an operation selects, through fragments."""
    fragments = {
        d.name.value: d
        for d in document.definitions
        if isinstance(d, graphql.FragmentDefinitionNode)
    }
    operation = document.definitions[0]
    assert isinstance(operation, graphql.OperationDefinitionNode)

    def walk(selections: graphql.SelectionSetNode) -> Iterable[str]:
        for selection in selections.selections:
            if isinstance(selection, graphql.FieldNode):
                yield selection.name.value
            elif isinstance(selection, graphql.FragmentSpreadNode):
                yield from walk(fragments[selection.name.value].selection_set)
            elif isinstance(selection, graphql.InlineFragmentNode):
                yield from walk(selection.selection_set)

    return tuple(walk(operation.selection_set))


def variants(shapes: list[str], count: int, salt: int, *, keep: float = 0.2) -> list[Request]:
    """Return `count` distinct requests made from the drawn shapes, each shape in turn.

    The first request of a shape is the shape as drawn; each further one draws its values again
    and dresses it (_Vary), then is steered like a drawn one (_Steer). One seeded rng: replayable.
    """
    rng = random.Random(SEED * 1000 + salt)
    parsed = [graphql.parse(shape) for shape in shapes]
    steer = _Steer(CURSOR_MARKS)
    found: dict[Request, None] = {}
    for turn in range(count * 4 // max(len(parsed), 1) + 8):
        for document in parsed:
            if len(found) >= count:
                return list(found)
            if turn:
                vary = _Vary(rng, graphql.TypeInfo(SCHEMA), keep=keep)
                document = graphql.visit(document, graphql.TypeInfoVisitor(vary.type_info, vary))
                definitions = (*document.definitions, *vary.fragments)
                document = graphql.visit(graphql.DocumentNode(definitions=definitions), steer)
            request = as_request(document, rng)
            if len(urlencode(request.get_params)) <= MAX_GET_TARGET:
                found.setdefault(request)
    return list(found)


@functools.cache
def query_requests() -> list[Request]:
    """The run's generated query requests, with stand-ins for the world's values (`in_world`)."""
    scalars, steer = scalar_strategies(CURSOR_MARKS), steered(CURSOR_MARKS)
    shapes: list[str] = []
    for salt, field in enumerate(QUERY_FIELDS):
        strategy = queries(SCHEMA_SDL, fields=[field], custom_scalars=scalars, print_ast=steer)
        count = SIZE.shapes_per_field // (10 if field == "viewer" else 1)
        shapes += draw(strategy, max(count, 3), salt)
    mixed = queries(SCHEMA_SDL, custom_scalars=scalars, print_ast=steer)
    shapes += draw(mixed, SIZE.mixed_shapes, 100)
    return variants(unique(shapes), SIZE.queries, 1)


@functools.cache
def mutation_requests() -> list[Request]:
    """The run's generated mutation requests (and the queries drawn beside them)."""
    scalars, steer = scalar_strategies(CURSOR_MARKS), steered(CURSOR_MARKS)
    shapes: list[str] = []
    for salt, field in enumerate(MUTATION_FIELDS):
        strategy = mutations(SCHEMA_SDL, fields=[field], custom_scalars=scalars, print_ast=steer)
        shapes += draw(strategy, SIZE.shapes_per_mutation, 200 + salt)
    # Queries and mutations from one strategy, as from_schema draws them.
    both = from_schema(SCHEMA_SDL, custom_scalars=scalars, print_ast=steer)
    shapes += draw(both, SIZE.shapes_per_mutation * 4, 300)
    shapes = unique(shapes)
    drawn_queries = [s for s in shapes if not s.startswith("mutation")]
    drawn_mutations = [s for s in shapes if s.startswith("mutation")]
    # Mostly values that pass the checks, so that an admin's mutation writes (the control).
    return variants(drawn_mutations, SIZE.mutations, 2, keep=0.06) + variants(
        drawn_queries, len(drawn_queries), 3
    )


async def world_marks(client: TestClient) -> dict[str, str]:
    """Return what each stand-in stands for in this world: cursors and moments."""
    data = await ok(
        client,
        "admin",
        f"""{{ incidents(first: 100) {{ edges {{ cursor }} }}
          kpi(slug: "{FORMER_SLUG}") {{ revisions {{ version changedAt }} }} }}""",
    )
    cursors = [e["cursor"] for e in data["incidents"]["edges"]]
    moments = [r["changedAt"] for r in sorted(data["kpi"]["revisions"], key=lambda r: r["version"])]
    return dict(zip(CURSOR_MARKS, cursors, strict=True)) | dict(
        zip(HISTORY_MARKS, moments, strict=True)
    )


Marked = TypeVar("Marked", "Request", "PageRequest")


def in_world(request: Marked, marks: dict[str, str]) -> Marked:
    """Return the request with this world's values in place of the stand-ins."""
    if not any(mark in request.text() for mark in marks):
        return request

    def change(text: str) -> str:
        for mark, value in marks.items():
            text = text.replace(mark, value)
        return text

    return request.mapped(change)


# --- REST requests -------------------------------------------------------------------------------


@dataclass(frozen=True)
class RestRequest:
    """One generated request to the REST mirror (or next to it)."""

    method: str
    path: str  # already percent-encoded
    params: tuple[tuple[str, str], ...]
    headers: tuple[tuple[str, str], ...]

    def text(self) -> str:
        return f"{self.method} {self.path} {self.params} {self.headers}"

    def mapped(self, change: Callable[[str], str]) -> RestRequest:
        return RestRequest(
            self.method,
            change(self.path),
            tuple((k, change(v)) for k, v in self.params),
            tuple((k, change(v)) for k, v in self.headers),
        )


class RestValues(Values):
    """Path segments and parameters for the REST mirror, invalid ones included."""

    def segment(self, value: str) -> str:
        """Percent-encode a path segment, or (for a plain one, sometimes) not."""
        if self.rng.random() < 0.1 and re.fullmatch(r"[A-Za-z0-9._~-]+", value):
            return value
        return quote(value, safe="")

    def slug_segment(self) -> str:
        roll = self.rng.random()
        if roll < 0.08:
            return self.rng.choice(("%2e%2e", "mtta%2F", "%6D%74%74%61", "mt%74a", "%00mtta"))
        if roll < 0.1:
            return "m" * self.rng.choice((64, 65, 300, 3000))
        return self.segment(self.slug())

    def incident_segment(self) -> str:
        if self.rng.random() < 0.75:
            return self.segment(self.rng.choice(INCIDENT_IDS))
        return self.segment(self.rng.choice((*INCIDENT_IDS, "INC-NOPE")).lower() + self.text())

    def token(self) -> str:
        """Text a header may carry: visible ASCII."""
        return "".join(self.rng.choices('abcdefghijklmnopqrstuvwxyz0123456789-/*;=,"', k=8))

    def visibility(self) -> str:
        names = ("EXEC", "exec", "INTERNAL", "internal", "Internal", "iNtErNaL", " internal")
        return self.rng.choice(names) if self.rng.random() < 0.85 else self.text()

    def request(self) -> RestRequest:
        rng = self.rng
        params: list[tuple[str, str]] = []
        roll = rng.random()
        if roll < 0.25:
            path = "/kpis"
            for _ in range(rng.choice((0, 1, 1, 1, 2))):
                params.append(("visibility", self.visibility()))
            for _ in range(rng.choice((0, 0, 1, 1, 2))):
                retired = ("true", "false", "True", "1", "yes", "")
                params.append(("includeRetired", rng.choice(retired)))
        elif roll < 0.55:
            path = f"/kpis/{self.slug_segment()}"
        elif roll < 0.9:
            path = f"/incidents/{self.incident_segment()}/kpis"
            for _ in range(rng.choice((0, 1, 1, 2, 3, 5))):
                params.append(("kpi", self.slug() if rng.random() < 0.85 else self.text()))
        else:
            slug, incident = self.slug_segment(), self.incident_segment()
            path = rng.choice(
                (
                    f"/kpis/{slug}/",
                    f"/kpis/{slug}/revisions",
                    f"/kpi/{slug}",
                    f"/KPIS/{slug}",
                    f"/kpis/{slug}/../{slug}",
                    f"/incidents/{incident}",
                    f"/incidents/{incident}/kpis/{slug}",
                    f"/incidents/{incident}/kpis/",
                    "/kpis/",
                    "/metrics",
                    "/readyz",
                    "/healthz",
                )
            )
        if rng.random() < 0.15:
            name = rng.choice(("slug", "kpi", "visibility", "asOf", "persona", "q", "kpi[]"))
            params.append((name, rng.choice((*INTERNAL_SLUGS, self.visibility(), self.text()))))
        rng.shuffle(params)
        headers: list[tuple[str, str]] = []
        if rng.random() < 0.2:
            accept = ("application/json", "*/*", "text/html", "application/xml", self.token())
            headers.append(("Accept", rng.choice(accept)))
        if rng.random() < 0.1:
            tag = ('"0123456789abcdef0123456789abcdef01234567"', "*", 'W/"x"', self.token())
            headers.append(("If-None-Match", rng.choice(tag)))
        if rng.random() < 0.05:
            headers.append(("Origin", rng.choice(("https://dash.example", "null", self.token()))))
        if rng.random() < 0.1:
            headers.append(("Accept-Encoding", rng.choice(("identity", "gzip;q=0", "*", "br"))))
        method = rng.choices(("GET", "HEAD", "POST", "DELETE", "OPTIONS"), (86, 8, 3, 1, 2))[0]
        return RestRequest(method, path, tuple(params), tuple(headers))


@functools.cache
def rest_requests() -> list[RestRequest]:
    values = RestValues(random.Random(SEED * 1000 + 4))
    return [values.request() for _ in range(SIZE.rest)]


# --- sending, and checking one answer ------------------------------------------------------------

Answer = tuple[int, str, tuple[tuple[str, str], ...]]
# Headers left out of the canary search, each only while it is an opaque hash: the ETag (a hash of
# what the answer depends on; weak when the answer is compressed) and the request id the service
# made.
OPAQUE = {
    "etag": re.compile(r'(W/)?"[0-9a-f]{40}"'),
    "x-request-id": re.compile(r"[0-9a-f]{32}"),
}


async def exchange(
    client: TestClient,
    method: str,
    path: str,
    token: str,
    *,
    params: Sequence[tuple[str, str]] = (),
    body: dict[str, Any] | None = None,
    headers: Sequence[tuple[str, str]] = (),
) -> Answer:
    """Send one request; return its status, body text and headers."""
    response = await client.request(
        method,
        path,
        params=list(params),
        json=body,
        headers=[("Authorization", f"Bearer {token}"), *headers],
    )
    text = (await response.read()).decode("utf-8", "replace")
    return response.status, text, tuple(response.headers.items())


def searchable(answer: Answer) -> str:
    """Return an answer's text as the canaries are searched in: body, then every header that is
    not an opaque hash."""
    _, text, headers = answer
    shown = [
        f"{name}: {value}"
        for name, value in headers
        if not ((shape := OPAQUE.get(name.lower())) and shape.fullmatch(value))
    ]
    return "\n".join([text, *shown])


# The GraphiQL page's style nonce, new with every page (in its CSP and its script's attribute).
NONCE = re.compile(r"nonce-[A-Za-z0-9_-]+|(?<=data-style-nonce=\")[A-Za-z0-9_-]+")
# How many more times a request and its twin are sent when their answers differ.
RESENDS = 4


def twin_view(answer: Answer) -> tuple[int, str, tuple[tuple[str, str], ...]]:
    """Return what the twin's answer must be: this answer with the internal slugs swapped."""
    status, text, headers = comparable(answer)
    return status, as_twin(text), headers


def comparable(answer: Answer) -> tuple[int, str, tuple[tuple[str, str], ...]]:
    """Return an answer as two answers that reveal the same must compare: opaque hashes, the date
    and the length reduced to their presence (the length of a gzipped body depends on the text a
    request echoes, and the bodies themselves are compared)."""
    status, text, headers = answer
    reduced = (*OPAQUE, "date", "content-length")
    kept = tuple(
        sorted(
            (name.lower(), "…" if name.lower() in reduced else NONCE.sub("nonce-…", value))
            for name, value in headers
        )
    )
    return status, NONCE.sub("nonce-…", text), kept


class Findings:
    """Everything the generated requests showed, to assert on and to report."""

    def __init__(self, title: str) -> None:
        self.title = title
        self.sent: Counter[str] = Counter()
        self.outcomes: Counter[tuple[str, str]] = Counter()
        self.fields: Counter[str] = Counter()
        self.statuses: Counter[int] = Counter()
        self.codes: Counter[str] = Counter()
        self.messages: Counter[str] = Counter()
        self.twins: Counter[str] = Counter()
        self.unsteady: Counter[str] = Counter()  # twins sent again: an answer changed
        self.control: Counter[str] = Counter()
        self.seconds: dict[str, float] = {}
        self.leaks: list[str] = []
        self.faults: list[str] = []

    def share(self, persona: str, outcome: str) -> float:
        return self.outcomes[(persona, outcome)] / max(self.sent[persona], 1)

    def report(self) -> str:
        outcomes = {
            persona: {o: f"{self.share(persona, o):.1%}" for p, o in self.outcomes if p == persona}
            for persona in self.sent
        }
        lines = [
            f"{self.title} (MIM_LEAK_SIZE={SIZE_NAME}, LEAK_SEED={SEED})",
            f"  sent per persona: {dict(self.sent)}; "
            f"replayed with an absent twin slug: {dict(self.twins)}, "
            f"sent again as an answer changed: {dict(self.unsteady)}",
            f"  outcomes: {outcomes}",
            f"  root fields: {dict(sorted(self.fields.items()))}",
            f"  HTTP: {dict(sorted(self.statuses.items()))}",
            f"  error codes: {dict(sorted(self.codes.items()))}",
            f"  commonest errors: {self.messages.most_common(5)}",
        ]
        if self.control:
            lines.append(f"  admin control: {dict(self.control)}")
        if self.seconds:
            lines.append("  seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in self.seconds.items()))
        lines.append(f"  leaks: {len(self.leaks)}; faults: {len(self.faults)}")
        return "\n".join(lines)

    def count(self, kind: str, figure: Callable[..., None]) -> None:
        """Add this test's figures to the run's: requests per persona, their outcomes, twins,
        leaks, and how long it took."""
        if self.seconds:
            figure(f"leak: seconds, {kind}", round(sum(self.seconds.values()), 1), worst=True)
        for persona, sent in self.sent.items():
            COUNTS[f"leak: {persona} {kind}"] += sent
        for (_, outcome), number in self.outcomes.items():
            COUNTS[f"leak: {kind}, {outcome}"] += number
        COUNTS["leak: twin requests (internal slug swapped for an absent one)"] += sum(
            self.twins.values()
        )
        COUNTS["leak: twins sent again, an answer having changed between sends"] += sum(
            self.unsteady.values()
        )
        COUNTS["leak: leaks found"] += len(self.leaks)

    def check(
        self,
        persona: str,
        request: str,
        answer: Answer,
        *,
        statuses: frozenset[int],
        codes: frozenset[str],
        kind: str,
        visible: Collection[str] = EXEC_SLUGS,
    ) -> dict[str, Any] | None:
        """Record what is wrong with one answer to an exec-only token; return its JSON body.

        `visible`: the slugs it may show. Other ones than the seeded exec KPIs mean the world was
        written to, and its canaries may have been copied into visible rows: only the answer's
        slugs and visibilities are checked then, not its text.
        """
        status, text, _ = answer
        where = f"{persona}: {request!r}"
        self.statuses[status] += 1
        leaked = canaries_in(searchable(answer), request) if visible is EXEC_SLUGS else []
        if leaked:
            self.leaks.append(f"{leaked} in the answer to {where}: {searchable(answer)[:800]}")
        if kind.startswith("GET") and text.lower().startswith("<!doctype html>"):
            # A GET without a query gets the GraphiQL page: static, it holds no data.
            self.codes[f"{kind}:GraphiQL page"] += 1
            return None
        if status not in statuses:
            self.faults.append(f"HTTP {status} for {where}: {text[:300]}")
        if not text and (status == 304 or kind == "HEAD"):
            return None
        try:
            body = json.loads(text)
        except ValueError:
            self.faults.append(f"not JSON for {where}: {text[:300]}")
            return None
        if not isinstance(body, dict):
            self.faults.append(f"not a JSON object for {where}: {text[:300]}")
            return None
        for error in body.get("errors") or []:
            message = re.sub(r"'[^']*'|\"[^\"]*\"|\d+", "…", str(error.get("message")))
            self.messages[message[:100]] += 1
        for code in error_codes(body):
            self.codes[f"{kind}:{code}"] += 1
            if code not in codes:
                self.faults.append(f"code {code} for {where}: {text[:600]}")
        shown = internal_values({k: v for k, v in body.items() if k != "errors"}, visible)
        if shown:
            self.leaks.append(f"{shown} in the data for {where}: {text[:600]}")
        return body

    async def twin(
        self,
        persona: str,
        request: str,
        answer: Answer,
        again: Callable[[], Awaitable[Answer]],
        twin_request: str,
        twin: Callable[[], Awaitable[Answer]],
        **check: Any,
    ) -> None:
        """Check the answer to a request's twin, and that it is the original answer's twin.

        Some answers are not the same on every send: when resolvers fail, which of their errors
        are reported depends on which finished first. So before two differing answers count as a
        leak, both requests are sent again, and any answer of one that is the twin of any answer
        of the other clears them.
        """
        self.twins[persona] += 1
        twin_answer = await twin()
        self.check(persona, twin_request, twin_answer, **check)
        ours, theirs = {self.twin_view(answer)}, {self.comparable(twin_answer)}
        for _ in range(RESENDS if ours.isdisjoint(theirs) else 0):
            self.unsteady[persona] += 1
            ours.add(self.twin_view(await again()))
            retwin = await twin()
            self.check(persona, twin_request, retwin, **check)
            theirs.add(self.comparable(retwin))
            if not ours.isdisjoint(theirs):
                break
        if ours.isdisjoint(theirs):
            self.leaks.append(
                f"{persona}: the answer to {request!r} is not the answer to its twin "
                f"{twin_request!r} (internal slugs swapped for absent ones) on {RESENDS + 1} "
                f"sends of each: {sorted(ours)} != {sorted(theirs)}"
            )

    def twin_view(self, answer: Answer) -> Any:
        return twin_view(answer)

    def comparable(self, answer: Answer) -> Any:
        return comparable(answer)

    def outcome(self, persona: str, body: dict[str, Any] | None) -> None:
        self.sent[persona] += 1
        if body is None:
            found = "no JSON"
        elif body.get("data") and body.get("errors"):
            found = "data and errors"
        elif body.get("data"):
            found = "data"
        elif body.get("errors"):
            found = "refused " + ",".join(sorted(set(error_codes(body))))
        else:
            found = "empty"
        self.outcomes[(persona, found)] += 1


def canaries_in(text: str, request: str, canaries: Sequence[str] = CANARIES) -> list[str]:
    """Return the canaries in `text` that the request did not itself send."""
    low, asked = text.lower(), request.lower()
    return [c for c in canaries if c.lower() in low and c.lower() not in asked]


def internal_values(value: Any, visible: Collection[str] = EXEC_SLUGS, key: str = "") -> list[str]:
    """Return the places in `data` that show an internal visibility or a slug not `visible`."""
    found: list[str] = []
    if isinstance(value, dict):
        for k, v in value.items():
            found += internal_values(v, visible, k)
    elif isinstance(value, list):
        for v in value:
            found += internal_values(v, visible, key)
    elif (
        value == "INTERNAL"
        or (key == "visibility" and str(value).upper() == "INTERNAL")
        or (key in ("slug", "kpiSlug") and value not in visible)
    ):
        found.append(f"{key}={value!r}")
    return found


def twin_of(request: str) -> str | None:
    """Return the request with every internal slug replaced by its absent twin, if it names one."""
    if not TWIN_PATTERN.search(request):
        return None
    return as_twin(request)


TWIN_PATTERN = re.compile("|".join(map(re.escape, TWINS)), re.IGNORECASE)


def as_twin(text: str) -> str:
    """Swap every internal slug for its twin, in any case (`MTTA` becomes `MXXA`)."""

    def swap(match: re.Match[str]) -> str:
        found = match.group(0)
        twin = TWINS[found.lower()]
        return "".join(t.upper() if f.isupper() else t for f, t in zip(found, twin, strict=True))

    return TWIN_PATTERN.sub(swap, text)


def error_codes(body: dict[str, Any]) -> list[str]:
    return [str((e.get("extensions") or {}).get("code")) for e in body.get("errors") or []]


async def at_most(width: int, jobs: Iterable[Callable[[], Awaitable[None]]]) -> None:
    """Run the jobs, `width` at a time, on this event loop."""
    pending = iter(jobs)

    async def worker() -> None:
        for job in pending:
            await job()

    await asyncio.gather(*(worker() for _ in range(width)))


QUERY_STATUSES = frozenset({200})
GET_STATUSES = frozenset({200, 400})
REST_STATUSES = frozenset({200, 304, 400, 404, 405})


async def send_graphql(
    client: TestClient,
    findings: Findings,
    token: str,
    persona: str,
    request: Request,
    *,
    by_get: bool,
    codes: frozenset[str],
    twin: bool = True,
) -> dict[str, Any] | None:
    """Send one request by POST or GET, and (if `twin`) its twin when it names an internal slug."""

    async def send(sent: Request) -> Answer:
        if by_get:
            return await exchange(client, "GET", "/graphql", token, params=sent.get_params)
        return await exchange(client, "POST", "/graphql", token, body=sent.body())

    text = request.text() + (str(request.get_params) if by_get else "")
    check = {
        "statuses": GET_STATUSES if by_get or request.mutation else QUERY_STATUSES,
        "codes": codes,
        "kind": ("GET " if by_get else "") + ("mutation" if request.mutation else "query"),
    }
    answer = await send(request)
    body = findings.check(persona, text, answer, **check)
    findings.outcome(persona, body)
    if twin and twin_of(text) is not None:
        other = request.mapped(as_twin)
        other_text = other.text() + (str(other.get_params) if by_get else "")
        await findings.twin(
            persona,
            text,
            answer,
            lambda: send(request),
            other_text,
            lambda: send(other),
            **check,
        )
    return body


def fail_on(findings: Findings) -> None:
    assert findings.faults == [], "\n".join(findings.faults[:10])
    assert findings.leaks == [], "\n".join(findings.leaks[:10])


def reaches_goal(findings: Findings, kind: str) -> None:
    """At full size, every exec-only persona got at least the goal's number of requests."""
    if SIZE_NAME == "full" and SCALE >= 1:
        short = {p: findings.sent[p] for p in EXEC_ONLY if findings.sent[p] < GOALS[kind]}
        assert not short, f"{kind}: {short} is short of the goal of {GOALS[kind]} per persona"


def unique(documents: list[str]) -> list[str]:
    return list(dict.fromkeys(documents))


async def snapshot() -> dict[str, list[str]]:
    return {t._meta.tablename: sorted(map(repr, await t.select())) for t in TABLES}


def tokens_for(*personas: str) -> dict[str, str]:
    return {p: make_token(p, sub="leak-probe") for p in personas}


# --- generated operations ------------------------------------------------------------------------


async def test_generated_queries_by_post_and_get_show_exec_only_tokens_no_internal_kpi(
    client: TestClient, record_property: Callable[[str, object], None], figure: Any
) -> None:
    """Each request goes by POST and by GET, as each exec-only persona, one after the other (so
    the service's caches of parsed documents and plans are shared between them, as they would
    be), and every n-th is sent first by an admin, whose answer must show the canaries."""
    await seed_world(client)
    started = time.monotonic()
    marks = await world_marks(client)
    requests = [in_world(r, marks) for r in query_requests()]
    by_post, by_get = Findings("generated queries by POST"), Findings("the same by GET")
    by_post.seconds["generating"] = time.monotonic() - started
    tokens = tokens_for(*EXEC_ONLY, "admin")
    codes = frozenset({"BAD_USER_INPUT"})

    def job(index: int, request: Request) -> Callable[[], Awaitable[None]]:
        async def run() -> None:
            by_post.fields.update(request.fields)
            by_get.fields.update(request.fields)
            if index % SIZE.control_every == 0:
                await admin_reads(client, tokens["admin"], request, by_post)
            for n, persona in enumerate(EXEC_ONLY):
                for found, get in ((by_post, False), (by_get, True)):
                    # The twin of two sends in four, one per persona and one per method.
                    twin = (index + n + get) % 2 == 0
                    await send_graphql(
                        client, found, tokens[persona], persona, request,
                        by_get=get, codes=codes, twin=twin,
                    )  # fmt: skip

        return run

    sending = time.monotonic()
    await at_most(IN_FLIGHT, (job(i, r) for i, r in enumerate(requests)))
    by_post.seconds["sending, both"] = time.monotonic() - sending
    for found, kind in ((by_post, "generated queries"), (by_get, "GET requests")):
        print("\n" + found.report())
        record_property(found.title, found.report())
        found.count(kind, figure)
    for found, kind, share in ((by_post, "generated queries", 0.7), (by_get, "GET requests", 0.65)):
        assert set(found.fields) == set(QUERY_FIELDS)
        fail_on(found)
        honest(found, "data", at_least=share)
        reaches_goal(found, kind)
    assert by_post.control["showed a canary"] > 0, by_post.control


async def admin_reads(client: TestClient, token: str, request: Request, findings: Findings) -> None:
    """The control: the same request does reach the internal KPIs for an admin token."""
    status, text, _ = await exchange(client, "POST", "/graphql", token, body=request.body())
    findings.control["sent"] += 1
    findings.control["showed a canary"] += bool(canaries_in(text, request.text()))
    try:
        codes = set(error_codes(json.loads(text)))
    except ValueError:
        codes = {"not JSON"}
    if status != 200 or not codes <= {"BAD_USER_INPUT"}:
        findings.faults.append(f"admin answer {status} {text[:300]} to {request!r}")


def honest(findings: Findings, outcome: str, *, at_least: float) -> None:
    """The generated requests mostly reach the resolvers: a generator whose every request is
    refused before it runs proves nothing."""
    for persona in EXEC_ONLY:
        share = findings.share(persona, outcome)
        assert share >= at_least, f"{persona}: only {share:.1%} answered {outcome}"


async def test_generated_mutations_are_forbidden_to_exec_only_tokens_and_leak_nothing(
    client: TestClient, record_property: Callable[[str, object], None], figure: Any
) -> None:
    await seed_world(client)
    started = time.monotonic()
    marks = await world_marks(client)
    requests = [in_world(r, marks) for r in mutation_requests()]
    findings = Findings("generated mutations by POST")
    beside = Findings("queries drawn with them by POST, and the mutations by GET")
    findings.seconds["generating"] = time.monotonic() - started
    tokens = tokens_for(*EXEC_ONLY, "admin")
    refused = frozenset({"FORBIDDEN", "BAD_USER_INPUT"})
    before, moved = await snapshot(), await generation.current()

    def job(index: int, request: Request) -> Callable[[], Awaitable[None]]:
        async def run() -> None:
            for n, persona in enumerate(EXEC_ONLY):
                token = tokens[persona]
                twin = (index + n) % 2 == 0  # the twin for one persona in turn
                if not request.mutation:
                    beside.fields.update(request.fields)
                    await send_graphql(
                        client, beside, token, persona, request, by_get=False,
                        codes=frozenset({"BAD_USER_INPUT"}), twin=twin,
                    )  # fmt: skip
                    continue
                findings.fields.update(request.fields)
                # FORBIDDEN, or refused before it runs (e.g. over the cost cap): nothing runs.
                body = await send_graphql(
                    client, findings, token, persona, request,
                    by_get=False, codes=refused, twin=twin,
                )  # fmt: skip
                if body is not None and ran(body):
                    findings.faults.append(f"a mutation ran for {persona}: {request!r}")
                if index % 4 == 0:  # by GET too: refused before anything runs
                    await send_graphql(
                        client, beside, token, persona, request,
                        by_get=True, codes=refused, twin=not twin,
                    )  # fmt: skip

        return run

    sending = time.monotonic()
    await at_most(IN_FLIGHT, (job(i, r) for i, r in enumerate(requests)))
    findings.seconds["sending"] = time.monotonic() - sending
    assert await generation.current() == moved, "a refused mutation moved the data generation"
    assert await snapshot() == before, "a refused mutation wrote something"

    # The control: the same mutations, sent by an admin, do write (one at a time: replayable).
    writing = time.monotonic()
    for request in requests:
        if request.mutation:
            await admin_writes(client, tokens["admin"], request, findings)
    findings.seconds["admin writing"] = time.monotonic() - writing
    assert await generation.current() != moved, "the admin's mutations wrote nothing"
    # After all those writes, an exec-only token still sees exactly the exec KPIs.
    await exec_view_is_the_admins_exec_part(client, tokens, beside)

    for found in (findings, beside):
        print("\n" + found.report())
        record_property(found.title, found.report())
    findings.count("generated mutations", figure)
    beside.count("requests beside the mutations", figure)
    COUNTS["leak: admin control mutations, wrote"] += findings.control["wrote"]
    COUNTS["leak: admin control mutations, refused"] += findings.control["refused"]
    assert set(MUTATION_FIELDS) <= set(findings.fields)
    fail_on(findings)
    fail_on(beside)
    honest(findings, "refused FORBIDDEN", at_least=0.8)
    wrote = findings.control["wrote"] / max(findings.control["sent"], 1)
    assert wrote >= 0.3, f"only {wrote:.1%} of the mutations wrote for an admin"
    reaches_goal(findings, "generated mutations")


def ran(body: dict[str, Any]) -> bool:
    """Whether a root field of an operation answered (a field it skipped did not run)."""
    return any(value is not None for value in (body.get("data") or {}).values())


async def admin_writes(
    client: TestClient, token: str, request: Request, findings: Findings
) -> None:
    """Send a mutation as an admin; count whether it wrote."""
    status, text, _ = await exchange(client, "POST", "/graphql", token, body=request.body())
    body = json.loads(text)
    wrote = status == 200 and ran(body)
    findings.control["sent"] += 1
    findings.control["wrote" if wrote else "refused"] += 1
    for code in set(error_codes(body)):
        findings.control[f"refused {code}"] += 1


VIEW = """{
  kpis(includeRetired: true) { slug visibility name }
  incidents(first: 100) { edges { node { id kpis { value kpi { slug visibility } } } } }
}"""


async def exec_view_is_the_admins_exec_part(
    client: TestClient, tokens: dict[str, str], findings: Findings
) -> None:
    """Check that each exec-only persona sees the exec KPIs the admin sees, and nothing else."""
    admin = await ok(client, "admin", VIEW)
    exec_slugs = sorted(k["slug"] for k in admin["kpis"] if k["visibility"] == "EXEC")
    hidden = [k["slug"] for k in admin["kpis"] if k["visibility"] != "EXEC"]
    incidents = [e["node"]["id"] for e in admin["incidents"]["edges"]]
    check = {
        "statuses": REST_STATUSES,
        "codes": frozenset({"NOT_FOUND"}),
        "kind": "after writes",
        "visible": exec_slugs,
    }
    for persona in EXEC_ONLY:
        token = tokens[persona]
        answer = await exchange(client, "POST", "/graphql", token, body={"query": VIEW})
        body = findings.check(persona, VIEW, answer, **check) or {}
        data = body.get("data") or {"kpis": [], "incidents": {"edges": []}}
        assert sorted(k["slug"] for k in data["kpis"]) == exec_slugs, (persona, data["kpis"])
        for edge in data["incidents"]["edges"]:
            shown = {o["kpi"]["slug"] for o in edge["node"]["kpis"]}
            assert shown <= set(exec_slugs), (persona, edge)
        every = [("includeRetired", "true")]
        answer = await exchange(client, "GET", "/kpis", token, params=every)
        body = findings.check(persona, "/kpis", answer, **check) or {}
        assert sorted(k["slug"] for k in body.get("kpis", [])) == exec_slugs, (persona, body)
        for incident in incidents:
            path = f"/incidents/{quote(incident, safe='')}/kpis"
            body = findings.check(
                persona, path, await exchange(client, "GET", path, token), **check
            )
            shown = {o["kpiSlug"] for o in (body or {}).get("kpis", [])}
            assert shown <= set(exec_slugs), (persona, path, body)
        for slug in hidden:
            query = f'{{ kpi(slug: "{slug}") {{ slug }} }}'
            answer = await exchange(client, "POST", "/graphql", token, body={"query": query})
            assert findings.check(persona, query, answer, **check) == {"data": {"kpi": None}}
            path = f"/kpis/{quote(slug, safe='')}"
            answer = await exchange(client, "GET", path, token)
            findings.check(persona, path, answer, **check)
            assert answer[0] == 404, (persona, slug, answer)
        findings.control[f"{persona} views checked after writes"] += 1


async def test_generated_rest_requests_show_exec_only_tokens_no_internal_kpi(
    client: TestClient, record_property: Callable[[str, object], None], figure: Any
) -> None:
    await seed_world(client)
    findings = Findings("generated REST requests")
    tokens = tokens_for(*EXEC_ONLY)
    codes = frozenset({"BAD_USER_INPUT", "NOT_FOUND", "METHOD_NOT_ALLOWED"})

    async def send(token: str, request: RestRequest) -> Answer:
        return await exchange(
            client, request.method, request.path, token,
            params=request.params, headers=request.headers,
        )  # fmt: skip

    def job(index: int, request: RestRequest) -> Callable[[], Awaitable[None]]:
        async def run() -> None:
            text = request.text()
            kind = "HEAD" if request.method == "HEAD" else "REST"
            check = {"statuses": REST_STATUSES, "codes": codes, "kind": kind}
            findings.fields[request.path.split("/")[1] or "/"] += 1
            for n, persona in enumerate(EXEC_ONLY):
                token = tokens[persona]
                answer = await send(token, request)
                findings.check(persona, text, answer, **check)
                findings.sent[persona] += 1
                findings.outcomes[(persona, f"HTTP {answer[0]}")] += 1
                if (index + n) % 2 == 0 and twin_of(text) is not None:  # one persona in turn
                    twin = request.mapped(as_twin)
                    await findings.twin(
                        persona,
                        text,
                        answer,
                        functools.partial(send, token, request),
                        twin.text(),
                        functools.partial(send, token, twin),
                        **check,
                    )

        return run

    started = time.monotonic()
    await at_most(IN_FLIGHT, (job(i, r) for i, r in enumerate(rest_requests())))
    findings.seconds["sending"] = time.monotonic() - started
    print("\n" + findings.report())
    record_property(findings.title, findings.report())
    findings.count("REST requests", figure)
    fail_on(findings)
    # Every route answered, with data as well as refusals.
    for persona in EXEC_ONLY:
        assert findings.share(persona, "HTTP 200") >= 0.3, findings.report()
        assert findings.outcomes[(persona, "HTTP 404")] > 0, findings.report()
    assert {"kpis", "incidents"} <= set(findings.fields)
    reaches_goal(findings, "REST requests")


# --- page requests -------------------------------------------------------------------------------

# The numbers as a page prints them (`987,654 min`): grouped, rounded, so none of CANARIES' forms.
PAGE_CANARIES = (
    *CANARIES,
    *(
        page_format.number(value)
        for value in (
            SENTINEL,
            MTTA_SENTINEL,
            MTTA_COMPUTED,
            MTTA_COMPUTED * 60,
            CANARY_THRESHOLD,
            CANARY_PERSONA_THRESHOLD,
        )
    ),
)
PAGE_STATUSES = frozenset({200, 303, 304, 400, 404, 405})
# Stand-ins for what only a session knows (its form token, the persona's token) and for cursors
# that the world issues and then are spoiled; replaced per persona when the request is sent.
SESSION_CSRF, OTHER_CSRF = "session-csrf-mark", "other-csrf-mark"
OWN_TOKEN, EXPIRED_TOKEN = "own-token-mark", "expired-token-mark"
PAGE_CURSOR = "page-cursor-mark"  # the next-page link of an admin's incident list
TAMPERED_MARKS = tuple(f"tampered-cursor-{n}" for n in range(4))
# An id no session has: the request meets the sign-in redirect, which names it in `next`.
STALE_SESSION = "S" * 43
# Extra incidents, so that an incident list has a next page (25 to a page) whose cursor an admin's
# page hands out.
PAGED_INCIDENTS = 27
# Every n-th request is also sent with an admin's session, whose answer must show the canaries.
PAGE_CONTROL_EVERY = 8


@dataclass(frozen=True)
class PageRequest:
    """One generated request to the pages under /ui/ (or next to them), sent with a session."""

    route: str  # what it aims at, for the report
    method: str
    path: str  # percent-encoded, and sent as it is: dot segments and all
    params: tuple[tuple[str, str], ...]
    form: tuple[tuple[str, str], ...] | None  # a form's fields, for a POST
    headers: tuple[tuple[str, str], ...]
    cookies: tuple[tuple[str, str], ...]  # beside the session's
    session: str  # "own"; "fresh": one signed in for this request alone (it may end it); "stale"

    def target(self) -> str:
        query = urlencode(self.params, quote_via=quote)
        return self.path + (f"?{query}" if query else "")

    def sent(self) -> str:
        return f"{self.method} {self.target()} {self.form} {self.headers} {self.cookies}"

    def text(self) -> str:
        """What the request sends, and the same percent-decoded: what an answer may echo."""
        return f"{self.sent()}\n{decoded(self.sent())}"

    def twins_cleanly(self) -> bool:
        """Whether swapping the internal slugs for their twins reaches every slug it names: not
        when one is percent-encoded (`%6D%74%74%61`, which the server reads as `mtta`)."""
        return as_twin(decoded(self.sent())) == decoded(as_twin(self.sent()))

    def mapped(self, change: Callable[[str], str]) -> PageRequest:
        def pairs(items: tuple[tuple[str, str], ...]) -> tuple[tuple[str, str], ...]:
            return tuple((k, change(v)) for k, v in items)

        return replace(
            self,
            path=change(self.path),
            params=pairs(self.params),
            form=None if self.form is None else pairs(self.form),
            headers=pairs(self.headers),
            cookies=pairs(self.cookies),
        )


def decoded(text: str) -> str:
    """Return `text` percent-decoded until it stops changing (at most three times)."""
    for _ in range(3):
        plain = unquote(text)
        if plain == text:
            break
        text = plain
    return text


class PageValues(RestValues):
    """Paths, parameters, forms and headers for the pages, invalid ones included."""

    def page_slug(self) -> str:
        """A slug path segment: as for the REST mirror, and in other cases now and then."""
        if self.rng.random() < 0.08:
            cased = ("MTTA", "Mtta", CANARY_SLUG.upper(), "Zz-Canary-Formerly", "MTTR", "Mttr")
            return self.segment(self.rng.choice(cased))
        return self.slug_segment()

    def severity(self, valid: Sequence[str]) -> str:
        if self.rng.random() < 0.82:
            return self.rng.choice(valid)
        odd = ("p1", "ALL", "All", "P5", "", " P1", "P1 ", "P1,P2", "P0", *INTERNAL_SLUGS)
        return self.rng.choice(odd) if self.rng.random() < 0.7 else self.text()

    def after(self) -> str:
        roll = self.rng.random()
        if roll < 0.4:
            return self.rng.choice(CURSOR_MARKS)
        if roll < 0.55:
            return PAGE_CURSOR
        if roll < 0.75:
            return self.rng.choice(TAMPERED_MARKS)
        odd = ("", "null", "0", "a" * 200, "bXR0YQ", "enotY2FuYXJ5LWludGVybmFs", "%", "====")
        return self.rng.choice(odd) if self.rng.random() < 0.5 else self.text()

    def next_target(self) -> str:
        """Where to go after sign-in: pages, internal ones too, and other places."""
        rng, slug = self.rng, self.rng.choice((*INTERNAL_SLUGS, *EXEC_SLUGS, UNKNOWN_SLUG))
        return rng.choice(
            (
                f"/ui/kpis/{slug}",
                f"/ui/kpis/{slug}?severity={rng.choice(('P1', 'P2', 'all', 'P9'))}",
                f"/ui/kpis/{quote(slug, safe='')}",
                f"/ui/kpis/{''.join(f'%{ord(c):02X}' for c in slug)}",
                f"/ui/incidents?severity=P1&after={rng.choice(CURSOR_MARKS)}",
                f"/ui/incidents/{rng.choice(INCIDENT_IDS)}",
                "/ui/kpis",
                "/ui/login",
                "/static/mim/ui.css",
                f'/ui/../graphql?query={{kpi(slug:"{slug}"){{name}}}}',
                f"https://evil.example/ui/kpis/{slug}",
                f"//evil.example/ui/kpis/{slug}",
                f"/\\evil.example/{slug}",
                f"javascript:alert('{slug}')",
                f"/graphql?slug={slug}",
                f"/kpis/{slug}",
                self.text(),
            )
        )

    def login_form(self, cookies: list[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
        """A sign-in form: mostly with a CSRF token matching its cookie, as a browser sends."""
        rng, fields = self.rng, []
        csrf = "".join(rng.choices(TOKEN_ALPHABET, k=rng.choice((20, 32, 43, 64))))
        roll = rng.random()
        if roll < 0.65:
            cookies.append((page_session.LOGIN_CSRF_COOKIE, csrf))
            fields.append(("csrf", csrf))
        elif roll < 0.8:
            fields.append(("csrf", csrf))  # no cookie: refused
        elif roll < 0.9:
            cookies.append((page_session.LOGIN_CSRF_COOKIE, csrf))
            fields.append(("csrf", rng.choice((SESSION_CSRF, "", csrf[::-1], self.text()))))
        tokens = (OWN_TOKEN, OWN_TOKEN, OWN_TOKEN, EXPIRED_TOKEN, "", "not-a-token", self.text())
        if rng.random() < 0.95:
            fields.append(("token", rng.choice(tokens)))
        for _ in range(rng.choice((0, 1, 1, 1, 2))):
            fields.append(("next", self.next_target()))
        rng.shuffle(fields)
        return tuple(fields)

    def logout_form(self) -> tuple[tuple[str, str], ...]:
        roll = self.rng.random()
        if roll < 0.35:
            return (("csrf", SESSION_CSRF),)
        if roll < 0.5:
            return ()
        return (("csrf", self.rng.choice((OTHER_CSRF, "", SESSION_CSRF[::-1], self.text()))),)

    def odd_path(self) -> str:
        """A path under /ui/ that no route takes as it is: slashes, dot segments, case, suffixes."""
        slug, incident = self.page_slug(), self.incident_segment()
        return self.rng.choice(
            (
                f"/ui/kpis/{slug}/",
                f"/ui/KPIS/{slug}",
                f"/ui/Kpis/{slug}",
                f"/ui/kpis/{slug}/../{slug}",
                f"/ui/kpis/../kpis/{slug}",
                f"/ui/./kpis/{slug}",
                f"/ui//kpis/{slug}",
                f"/ui/kpis//{slug}",
                f"/ui/kpis/{slug}/revisions",
                f"/ui/kpis/{slug}.json",
                f"/ui/kpis/{slug};severity=P1",
                f"/ui/kpis%2F{slug}",
                f"/ui/%6Bpis/{slug}",
                f"/ui/{slug}",
                f"/ui/static/{slug}",
                f"/ui/static/../kpis/{slug}",
                f"/ui/static/ui.css/../../kpis/{slug}",
                f"/ui/incidents/{incident}/",
                f"/ui/incidents/{incident}/kpis/{slug}",
                f"/ui/incidents/{incident}/../../kpis/{slug}",
                "/ui/kpis/",
                "/ui/incidents/",
                "/ui/login/",
                "/ui/LOGIN",
                "/ui/static/",
                "/ui/nope",
            )
        )

    def request(self, route: str | None = None) -> PageRequest:
        """A request to one of PAGE_ROUTES drawn by weight, by any method; or a GET (a form's
        POST) to `route` with the persona's own session."""
        rng, drawn = self.rng, route is None
        params: list[tuple[str, str]] = []
        cookies: list[tuple[str, str]] = []
        form: tuple[tuple[str, str], ...] | None = None
        session = "own"
        methods = ("GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS")
        method = rng.choices(methods, (84, 10, 3, 1, 1, 1))[0] if drawn else "GET"
        route = route or rng.choices(list(PAGE_ROUTES), list(PAGE_ROUTES.values()))[0]
        if route == "catalogue":
            path = "/ui/kpis"
        elif route == "kpi":
            path = f"/ui/kpis/{self.page_slug()}"
            for _ in range(rng.choice((0, 1, 1, 1, 2))):
                params.append(("severity", self.severity(("P1", "P2", "all"))))
        elif route == "incidents":
            path = "/ui/incidents"
            for _ in range(rng.choice((0, 1, 1, 1, 2))):
                params.append(("severity", self.severity(("all", "P1", "P2", "P3", "P4"))))
            for _ in range(rng.choice((0, 1, 1, 2))):
                params.append(("after", self.after()))
        elif route == "incident":
            path = f"/ui/incidents/{self.incident_segment()}"
        elif route == "sign-in form":
            path = page_session.LOGIN_PATH
            for _ in range(rng.choice((0, 1, 1, 1, 2))):
                params.append(("next", self.next_target()))
        elif route == "sign-in":
            path, method = page_session.LOGIN_PATH, "POST"
            form = self.login_form(cookies)
        elif route == "sign-out":
            path, method = "/ui/logout", "POST"
            form = self.logout_form()
            session = "fresh" if form == (("csrf", SESSION_CSRF),) else "own"
        elif route == "static":
            path = rng.choice(("/static/mim/ui.css", "/static/mim/favicon.svg"))
            if rng.random() < 0.5:
                params.append(("v", rng.choice(("0123456789abcdef", *INTERNAL_SLUGS))))
        elif route == "home":
            path = rng.choice(("/ui", "/ui/"))
        else:
            path = self.odd_path()
        if rng.random() < 0.12:
            name = rng.choice(("slug", "kpi", "next", "after", "severity", "id", "q", "v"))
            params.append((name, rng.choice((*INTERNAL_SLUGS, self.slug(), self.text()))))
        rng.shuffle(params)
        if method == "POST" and form is None and rng.random() < 0.7:
            form = (("csrf", SESSION_CSRF), ("slug", self.slug()))
        if session == "own" and drawn and rng.random() < 0.02:
            session = "stale"
        return PageRequest(
            route, method, path, tuple(params), form, self.page_headers(), tuple(cookies), session
        )

    def page_headers(self) -> tuple[tuple[str, str], ...]:
        rng = self.rng
        headers: list[tuple[str, str]] = []
        if rng.random() < 0.25:
            accept = (
                "text/html",
                "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
                "application/json",
                "*/*",
                "image/svg+xml",
                self.token(),
            )
            headers.append(("Accept", rng.choice(accept)))
        if rng.random() < 0.08:
            tag = ('"0123456789abcdef0123456789abcdef01234567"', "*", 'W/"x"', self.token())
            headers.append(("If-None-Match", rng.choice(tag)))
        # Without the header, aiohttp's client asks for gzip itself; bodies are read decompressed.
        if rng.random() < 0.5:
            codings = ("gzip", "gzip, deflate, br", "identity", "gzip;q=0", "*", "br", "x-gzip")
            headers.append(("Accept-Encoding", rng.choice(codings)))
        if rng.random() < 0.05:
            slug = rng.choice((*INTERNAL_SLUGS, *EXEC_SLUGS))
            headers.append(("Referer", f"http://127.0.0.1/ui/kpis/{slug}"))
        if rng.random() < 0.03:
            headers.append(("Origin", rng.choice(("https://evil.example", "null"))))
        return tuple(headers)


TOKEN_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
# What the requests aim at, and how often (in percent).
PAGE_ROUTES = {
    "catalogue": 12,
    "kpi": 30,
    "incidents": 18,
    "incident": 14,
    "sign-in form": 7,
    "sign-in": 5,
    "sign-out": 3,
    "static": 3,
    "home": 2,
    "odd path": 6,
}


@functools.cache
def page_requests() -> list[PageRequest]:
    """The run's page requests: the first to each route in turn (the catalogue first, so that
    the first admin control shows the canaries), the others to routes drawn by weight."""
    values = PageValues(random.Random(SEED * 1000 + 5))
    routes = list(PAGE_ROUTES)
    return [values.request(routes[i] if i < len(routes) else None) for i in range(SIZE.pages)]


# --- a browser: sessions opened through the sign-in form -----------------------------------------


@dataclass(frozen=True)
class Signed:
    """A session opened through the form: its cookie and the CSRF token its forms carry."""

    persona: str
    cookie: str
    csrf: str


class Browser:
    """Sends page requests as a browser would, but keeps no cookies: each request carries the
    session it is given, so personas' sessions never mix on the one connection pool."""

    def __init__(self, http: aiohttp.ClientSession, base: str) -> None:
        self.http, self.base = http, base.rstrip("/")

    async def send(self, request: PageRequest, cookie: str | None) -> Answer:
        cookies = [*([(page_session.SESSION_COOKIE, cookie)] if cookie else []), *request.cookies]
        headers = list(request.headers)
        if cookies:
            headers.append(("Cookie", "; ".join(f"{k}={v}" for k, v in cookies)))
        async with self.http.request(
            request.method,
            URL(self.base + request.target(), encoded=True),
            headers=headers,
            data=None if request.form is None else list(request.form),
            allow_redirects=False,
        ) as response:
            text = (await response.read()).decode("utf-8", "replace")
            return response.status, text, tuple(response.headers.items())

    async def sign_in(self, persona: str) -> Signed:
        """Fill in the sign-in form with the persona's token; return the session it opened."""
        async with self.http.get(f"{self.base}{page_session.LOGIN_PATH}") as form:
            login_csrf = form.cookies[page_session.LOGIN_CSRF_COOKIE].value
            assert form_field(await form.text(), "csrf") == login_csrf
        async with self.http.post(
            f"{self.base}{page_session.LOGIN_PATH}",
            data={
                "token": make_token(persona, sub="leak-probe"),
                "csrf": login_csrf,
                "next": page_session.HOME,
            },
            headers={"Cookie": f"{page_session.LOGIN_CSRF_COOKIE}={login_csrf}"},
            allow_redirects=False,
        ) as posted:
            assert posted.status == 303, await posted.text()
            cookie = posted.cookies[page_session.SESSION_COOKIE].value
        # The smallest page that shows the session's form token: the one for no such page.
        async with self.http.get(
            f"{self.base}/ui/nope", headers={"Cookie": f"{page_session.SESSION_COOKIE}={cookie}"}
        ) as page:
            text = await page.text()
            assert page.status == 404 and "leak-probe" in text, text
        return Signed(persona, cookie, form_field(text, "csrf"))


class _Links(HTMLParser):
    """The link targets of a page: every URL an attribute names."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.fields: dict[str, str] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        for name in ("href", "src", "action", "formaction", "xlink:href", "srcset", "poster"):
            if found.get(name):
                self.urls.append(str(found[name]))
        if tag == "input" and found.get("name"):
            self.fields.setdefault(str(found["name"]), str(found.get("value") or ""))


def parsed(text: str) -> _Links:
    links = _Links()
    links.feed(text)
    links.close()
    return links


def form_field(text: str, name: str) -> str:
    value = parsed(text).fields.get(name)
    assert value, f"no {name} field in {text[:300]}"
    return value


# --- checking one page ---------------------------------------------------------------------------

# secrets.token_urlsafe(32): a session id or a CSRF token, random: left out of the canary search
# (as an opaque hash is) and of the comparison with a twin.
RANDOM_TOKEN = "[A-Za-z0-9_-]{43}"
CSRF_FIELD = re.compile(f'(name="csrf" value="){RANDOM_TOKEN}"')
COOKIE_VALUE = re.compile(
    f"^((?:{page_session.SESSION_COOKIE}|{page_session.LOGIN_CSRF_COOKIE})=){RANDOM_TOKEN}(?=;|$)"
)
COOKIE_TIMES = re.compile(r"((?:expires|max-age)=)[^;]*", re.IGNORECASE)
KPI_LINK = re.compile(r"/ui/kpis/([^/?#]+)")


def without_random(answer: Answer) -> Answer:
    status, text, headers = answer
    return (
        status,
        CSRF_FIELD.sub(r'\1…"', text),
        tuple(
            (name, COOKIE_VALUE.sub(r"\1…", value) if name.lower() == "set-cookie" else value)
            for name, value in headers
        ),
    )


def page_comparable(answer: Answer) -> Answer:
    """Return a page's answer as two answers that reveal the same must compare: the random
    tokens, and the times a cookie is set for, reduced to their presence."""
    status, text, headers = comparable(without_random(answer))
    return (
        status,
        text,
        tuple(
            (name, COOKIE_TIMES.sub(r"\1…", value) if name == "set-cookie" else value)
            for name, value in headers
        ),
    )


class PageFindings(Findings):
    """Findings for the pages: HTML bodies, their link targets, redirects and cookies."""

    def __init__(self, title: str) -> None:
        super().__init__(title)
        self.bodies: Counter[str] = Counter()  # content types, and whether gzipped

    def twin_view(self, answer: Answer) -> Any:
        status, text, headers = page_comparable(answer)
        return status, as_twin(text), tuple((name, as_twin(value)) for name, value in headers)

    def comparable(self, answer: Answer) -> Any:
        return page_comparable(answer)

    def check(
        self,
        persona: str,
        request: str,
        answer: Answer,
        *,
        statuses: frozenset[int],
        **_: Any,
    ) -> None:
        """Record what is wrong with one answer to an exec-only session.

        `request` is PageRequest.text(): its first line starts with the method and the target.
        """
        status, text, headers = answer
        where = f"{persona}: {request.splitlines()[0]!r}"
        self.statuses[status] += 1
        if status not in statuses:
            self.faults.append(f"HTTP {status} for {where}: {text[:300]}")
        shown = {name.lower(): value for name, value in headers}
        gzipped = shown.get("content-encoding") == "gzip"
        self.bodies[
            shown.get("content-type", "none").split(";")[0] + (", gzip" if gzipped else "")
        ] += 1
        html = shown.get("content-type", "").startswith("text/html")
        if html and text and not text.startswith("<!doctype html>"):
            # e.g. a compressed body read as it came: it would hide whatever it holds.
            self.faults.append(f"not a page for {where}: {text[:100]!r}")
        targets = parsed(text).urls if html else []
        if "location" in shown:
            targets.append(shown["location"])
        base = "http://127.0.0.1" + request.split(" ", 2)[1]
        resolved = [decoded(urljoin(base, target)) for target in targets]
        searched = "\n".join([searchable(without_random(answer)), *resolved])
        leaked = canaries_in(searched, request, PAGE_CANARIES)
        if leaked:
            self.leaks.append(f"{leaked} in the answer to {where}: {searched[:800]}")
        asked = request.lower()
        for url in resolved:
            found = KPI_LINK.match(urlsplit(url).path)
            if found and found[1] not in EXEC_SLUGS and found[1].lower() not in asked:
                self.leaks.append(f"a link to {url!r} in the answer to {where}")

    def report(self) -> str:
        return f"{super().report()}\n  bodies: {dict(sorted(self.bodies.items()))}"


# --- the pages, generated -------------------------------------------------------------------------


async def page_world(client: TestClient, browser: Browser, admin: Signed) -> dict[str, str]:
    """Add incidents enough for a second page; return the cursors the stand-ins stand for: one
    from the next-page link of an admin's incident list, others the API issued, spoiled ones."""
    upserts = [
        f'i{n}: upsertIncident(input: {{id: "INC-PAGED-{n}", title: "Paged {n}", '
        f'severity: P{n % 4 + 1}, detectedAt: "2026-05-{n + 1:02d}T10:00:00Z"}}) {{ id }}'
        for n in range(PAGED_INCIDENTS)
    ]
    for start in range(0, len(upserts), 10):  # within the cap on aliases
        await ok(client, "ingest", f"mutation {{ {' '.join(upserts[start : start + 10])} }}")
    listing = PageRequest("incidents", "GET", "/ui/incidents", (), None, (), (), "own")
    status, text, _ = await browser.send(listing, admin.cookie)
    pager = [u for u in parsed(text).urls if "after=" in u]
    assert status == 200 and len(pager) == 1, pager
    (page_cursor,) = parse_qs(urlsplit(pager[0]).query)["after"]
    data = await ok(client, "admin", "{ incidents(first: 100) { edges { cursor } } }")
    issued = [e["cursor"] for e in data["incidents"]["edges"]]
    assert page_cursor in issued
    step = len(issued) // len(CURSOR_MARKS)
    picked = issued[::step][: len(CURSOR_MARKS)]
    tampered = [
        picked[0][:9] + ("A" if picked[0][9] != "A" else "B") + picked[0][10:],  # a changed byte
        picked[1][:-1],  # cut short
        picked[2] + "=",  # padded: another spelling of the same bytes
        picked[3].swapcase(),
    ]
    return (
        dict(zip(CURSOR_MARKS, picked, strict=True))
        | dict(zip(TAMPERED_MARKS, tampered, strict=True))
        | {PAGE_CURSOR: page_cursor}
    )


async def test_generated_page_requests_show_exec_only_sessions_no_internal_kpi(
    client: TestClient, record_property: Callable[[str, object], None], figure: Any
) -> None:
    """Each exec-only persona signs in through the form; every generated request then goes with
    its session, and every n-th with an admin's too, whose answer must show the canaries."""
    await seed_world(client)
    started = time.monotonic()
    findings = PageFindings("generated page requests")
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
        browser = Browser(http, str(client.make_url("/")))
        signed = {p: await browser.sign_in(p) for p in (*EXEC_ONLY, "admin")}
        cursors = await page_world(client, browser, signed["admin"])
        # The control: the pages do print the canaries, in the forms searched for, to an admin.
        control = PageRequest(
            "kpi", "GET", f"/ui/kpis/{CANARY_SLUG}", (("severity", "all"),), None, (), (), "own"
        )
        status, text, _ = await browser.send(control, signed["admin"].cookie)
        assert status == 200 and page_format.number(SENTINEL) in text and TAG in text, text

        def marks(persona: str, session: Signed) -> dict[str, str]:
            other = signed[next(p for p in EXEC_ONLY if p != persona)]
            return cursors | {
                SESSION_CSRF: session.csrf,
                OTHER_CSRF: other.csrf,
                OWN_TOKEN: make_token(persona, sub="leak-probe"),
                EXPIRED_TOKEN: make_token(persona, sub="leak-probe", ttl=-120),
            }

        async def session_for(persona: str, request: PageRequest) -> Signed:
            if request.session == "fresh":
                return await browser.sign_in(persona)
            if request.session == "stale":
                return Signed(persona, STALE_SESSION, "")
            return signed[persona]

        def job(index: int, request: PageRequest) -> Callable[[], Awaitable[None]]:
            async def run() -> None:
                check = {"statuses": PAGE_STATUSES}
                findings.fields[request.route] += 1
                if index % PAGE_CONTROL_EVERY == 0 and request.session == "own":
                    admin = signed["admin"]
                    sent = in_world(request, marks("admin", admin))
                    answer = await browser.send(sent, admin.cookie)
                    findings.control["sent"] += 1
                    shown = canaries_in(searchable(answer), sent.text(), PAGE_CANARIES)
                    findings.control["showed a canary"] += bool(shown)
                    if answer[0] not in PAGE_STATUSES:
                        findings.faults.append(f"admin answer {answer[0]} to {sent.sent()!r}")
                for n, persona in enumerate(EXEC_ONLY):
                    session = await session_for(persona, request)
                    persona_marks = marks(persona, session)
                    sent = in_world(request, persona_marks)
                    answer = await browser.send(sent, session.cookie)
                    findings.check(persona, sent.text(), answer, **check)
                    findings.sent[persona] += 1
                    findings.outcomes[(persona, f"HTTP {answer[0]}")] += 1
                    twin = (index + n) % 2 == 0 and request.session == "own"  # one persona in turn
                    if twin and twin_of(request.sent()) is not None and request.twins_cleanly():
                        other = in_world(request.mapped(as_twin), persona_marks)
                        await findings.twin(
                            persona,
                            sent.text(),
                            answer,
                            functools.partial(browser.send, sent, session.cookie),
                            other.text(),
                            functools.partial(browser.send, other, session.cookie),
                            **check,
                        )

            return run

        findings.seconds["signing in, seeding"] = time.monotonic() - started
        sending = time.monotonic()
        await at_most(IN_FLIGHT, (job(i, r) for i, r in enumerate(page_requests())))
        findings.seconds["sending"] = time.monotonic() - sending
    print("\n" + findings.report())
    record_property(findings.title, findings.report())
    findings.count("page requests", figure)
    fail_on(findings)
    # Every route answered, pages as well as refusals, compressed and not, and the twins ran.
    for persona in EXEC_ONLY:
        assert findings.share(persona, "HTTP 200") >= 0.3, findings.report()
        for status in (303, 400, 404, 405):
            assert findings.outcomes[(persona, f"HTTP {status}")] > 0, (status, findings.report())
    assert set(findings.fields) == set(PAGE_ROUTES), findings.report()
    assert findings.bodies["text/html, gzip"] > 0 and findings.bodies["text/html"] > 0
    assert sum(findings.twins.values()) > 0, findings.report()
    assert findings.control["showed a canary"] > 0, findings.control
    reaches_goal(findings, "page requests")


# --- an internal slug reads as one that does not exist --------------------------------------------

KPI_FULL = """
query ($slug: String!) {
  kpi(slug: $slug) {
    slug name description formula expression units owner visibility dataSources
    targets { severity persona comparison threshold }
    revisions { version note changes { field before after } }
    summary { count value target { threshold } meetsTarget }
    series(bucket: MONTH, from: "2026-01-01T00:00:00Z", to: "2026-06-01T00:00:00Z") { count mean }
  }
}"""
INCIDENT_KPIS = """
query ($id: ID!, $slugs: [String!]) {
  incident(id: $id) { id kpis(slugs: $slugs) { value kpi { slug } } }
}"""
REFUSED_WITH_SLUG = {
    "updateKpiDefinition": """mutation ($slug: String!) {
      updateKpiDefinition(slug: $slug, input: {name: "x"}) { slug } }""",
    "markKpiReviewed": "mutation ($slug: String!) { markKpiReviewed(slug: $slug) { slug } }",
    "backfillKpi": "mutation ($slug: String!) { backfillKpi(slug: $slug) { kpiSlug } }",
    "recordObservation": """mutation ($slug: String!) {
      recordObservation(input: {kpiSlug: $slug, incidentId: "INC-LEAK-1",
        timestamp: "2026-05-01T00:00:00Z", value: 1.5, source: "import"}) { value } }""",
}


async def every_slug_answer(client: TestClient, token: str, slug: str) -> list[tuple[int, str]]:
    """Return the answer of every path that takes a KPI slug, for one slug."""
    literal = f'{{ kpi(slug: "{slug}") {{ slug name owner visibility }} }}'
    answers = [
        await post(client, token, KPI_FULL, {"slug": slug}),
        await post(client, token, literal),
        await get(client, token, "/graphql", query=literal),
        await post(client, token, INCIDENT_KPIS, {"id": "INC-LEAK-1", "slugs": [slug]}),
        await post(client, token, INCIDENT_KPIS, {"id": "INC-LEAK-3", "slugs": [slug, "mttr"]}),
    ]
    for mutation in REFUSED_WITH_SLUG.values():
        answers.append(await post(client, token, mutation, {"slug": slug}))
    for incident, kpis in (("INC-LEAK-1", [slug]), ("INC-LEAK-3", [slug, "mttr"])):
        response = await client.get(
            f"/incidents/{incident}/kpis", params=[("kpi", k) for k in kpis], headers=bearer(token)
        )
        answers.append((response.status, await response.text()))
    response = await client.get(f"/kpis/{quote(slug, safe='')}", headers=bearer(token))
    answers.append((response.status, f"{response.content_type} {await response.text()}"))
    return answers


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.mark.parametrize("persona", EXEC_ONLY)
async def test_exec_only_answer_for_an_internal_slug_is_byte_identical_to_an_unknown_one(
    client: TestClient, persona: str
) -> None:
    await seed_world(client)
    token = make_token(persona)
    unknown = await every_slug_answer(client, token, UNKNOWN_SLUG)
    assert unknown[0] == (200, '{"data":{"kpi":null}}')
    assert unknown[-1][0] == 404 and '"NOT_FOUND"' in unknown[-1][1]
    for slug in INTERNAL_SLUGS:
        answers = await every_slug_answer(client, token, slug)
        assert answers == unknown, slug
    # The control: a responder does get the internal KPIs on the same paths.
    responder = await every_slug_answer(client, make_token("responder"), CANARY_SLUG)
    assert responder[0][1] != unknown[0][1] and TAG in responder[0][1]
    assert responder[-1][0] == 200 and TAG in responder[-1][1]
    assert str(SENTINEL) in responder[-3][1]  # GET /incidents/INC-LEAK-1/kpis?kpi=<canary>


AS_OF = """query ($slug: String!, $asOf: DateTime) {
  kpi(slug: $slug, asOf: $asOf) { slug name visibility version revisions { note } }
}"""


@pytest.mark.parametrize("persona", EXEC_ONLY)
async def test_exec_only_answer_for_a_kpi_made_internal_is_null_as_of_every_date(
    client: TestClient, persona: str
) -> None:
    await seed_world(client)
    marks = await world_marks(client)
    created, made_internal = (marks[mark] for mark in HISTORY_MARKS)
    token = make_token(persona)
    moments = [created, made_internal, "2026-01-01T00:00:00Z", "2199-12-31T00:00:00Z", None]
    for moment in moments:
        for slug in INTERNAL_SLUGS:
            answer = await post(client, token, AS_OF, {"slug": slug, "asOf": moment})
            twin = await post(client, token, AS_OF, {"slug": as_twin(slug), "asOf": moment})
            assert answer == twin == (200, '{"data":{"kpi":null}}'), (slug, moment, answer)
    # The control: as it stood when created, a responder sees it as an exec KPI.
    status, text = await post(
        client, make_token("responder"), AS_OF, {"slug": FORMER_SLUG, "asOf": created}
    )
    assert status == 200 and '"visibility":"EXEC"' in text and TAG in text, text


@pytest.mark.parametrize("persona", EXEC_ONLY)
async def test_exec_only_answer_for_any_generated_slug_it_may_not_see_is_that_of_an_unknown_one(
    client: TestClient, persona: str
) -> None:
    await seed_world(client)
    token = make_token(persona)
    kpi_query = "query ($slug: String!) { kpi(slug: $slug) { slug name } }"
    slug_like = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=70)
    generated = st.one_of(slug_like, garbage(), st.sampled_from(INTERNAL_SLUGS))
    slugs = unique([*INTERNAL_SLUGS, *draw(generated, 150, 400)])
    unknown_graphql = await post(client, token, kpi_query, {"slug": UNKNOWN_SLUG})
    unknown_rest = await get(client, token, f"/kpis/{UNKNOWN_SLUG}")
    checked = 0
    for slug in slugs:
        if slug in EXEC_SLUGS:
            continue
        assert await post(client, token, kpi_query, {"slug": slug}) == unknown_graphql, slug
        if slug_like_path(slug):
            assert await get(client, token, f"/kpis/{quote(slug, safe='')}") == unknown_rest, slug
        checked += 1
    print(f"\n{persona}: {checked} slugs it may not see answered as {UNKNOWN_SLUG!r}")
    assert checked > 100


def slug_like_path(slug: str) -> bool:
    """Whether /kpis/{slug} reaches the KPI handler (and not the router's own 404 or redirect)."""
    return (
        slug.strip() != ""
        and all(c.isalnum() or c in "-_." for c in slug)
        and slug
        not in (
            ".",
            "..",
        )
    )


# --- DataLoader caches live for one request ------------------------------------------------------

LOADERS_QUERY = """
query ($slug: String!, $id: ID!) {
  kpi(slug: $slug) { slug name owner revisions { version note } summary { count value } }
  incident(id: $id) {
    id alerts { issueTime } timeline { phase } milestones { name } surveyResponses { score }
    kpis { value source meetsTarget kpi { slug name visibility } incident { id } }
  }
  kpis { slug visibility summary { count value } revisions { version } }
  incidents(first: 5) { totalCount edges { node { id kpis { value kpi { slug } } } } }
}"""


async def test_dataloader_caches_never_cross_requests(client: TestClient) -> None:
    await seed_world(client)
    personas = ("admin", "exec", "stakeholder", "responder")
    tokens = tokens_for(*personas)
    variables = [
        {"slug": slug, "id": incident}
        for slug in ("mtta", CANARY_SLUG, "mttr")
        for incident in ("INC-LEAK-1", "INC-LEAK-3")
    ]

    async def ask(persona: str, index: int) -> tuple[int, str]:
        return await post(client, tokens[persona], LOADERS_QUERY, variables[index])

    # Each persona alone, in a fresh order: the answers every later request must repeat exactly.
    alone = {(p, i): await ask(p, i) for i in range(len(variables)) for p in reversed(personas)}
    for (persona, i), (status, text) in alone.items():
        assert status == 200 and "errors" not in json.loads(text), text
        shown = canaries_in(text, "")
        if persona in EXEC_ONLY:
            assert shown == [], (persona, variables[i], shown)
        elif variables[i]["slug"] != "mttr":
            assert TAG in text or "Mean Time to Acknowledge" in text, text  # the control

    # One after the other, admin then exec and exec then admin, on one client.
    for i in range(len(variables)):
        for first, second in (("admin", "exec"), ("exec", "admin"), ("responder", "stakeholder")):
            assert await ask(first, i) == alone[(first, i)]
            assert await ask(second, i) == alone[(second, i)]

    # All at once: requests of every persona interleaved on the event loop, 32 in flight (more
    # than a worker admits by default: the tests raise MIM_MAX_INFLIGHT so that none is shed).
    order = [(p, i) for p in personas for i in range(len(variables))] * 3
    random.Random(SEED).shuffle(order)
    gate = asyncio.Semaphore(32)

    async def admitted(persona: str, index: int) -> tuple[int, str]:
        async with gate:
            return await ask(persona, index)

    answers = await asyncio.gather(*(admitted(p, i) for p, i in order))
    mixed = [key for key, answer in zip(order, answers, strict=True) if answer != alone[key]]
    assert mixed == [], mixed

    # A write between two requests shows in the next one: nothing was kept from an earlier request.
    await ok(client, "ingest", FRESH_ROWS)
    rename = """mutation { updateKpiDefinition(slug: "mttr", input: {name: "Renamed Resolve"},
      note: "fresh revision") { version } }"""
    await ok(client, "admin", rename)
    stale = []
    for (persona, i), (_, before) in alone.items():
        status, text = await ask(persona, i)
        fresh = ["Renamed Resolve", "fresh revision" if variables[i]["slug"] == "mttr" else ""]
        if variables[i]["id"] == "INC-LEAK-1":
            fresh += ["61.25", "fresh milestone", "2026-03-02T13:00:00+00:00", '"score":2']
        if text == before or not all(f in text for f in fresh):
            stale.append((persona, variables[i], [f for f in fresh if f not in text]))
        if persona in EXEC_ONLY:
            assert canaries_in(text, "") == [], (persona, variables[i], text)
    assert stale == [], stale


FRESH_ROWS = """mutation {
  recordObservation(input: {kpiSlug: "mttr", incidentId: "INC-LEAK-1",
    timestamp: "2026-03-02T12:00:00Z", value: 61.25, source: "import"}) { value }
  internal: recordObservation(input: {kpiSlug: "mtta", incidentId: "INC-LEAK-1",
    timestamp: "2026-03-02T12:00:00.424242Z", value: 876543.125, source: "import"}) { value }
  recordAlert(input: {incidentId: "INC-LEAK-1", issueTime: "2026-03-02T13:00:00Z"}) { id }
  recordMilestone(input: {incidentId: "INC-LEAK-1", name: "fresh milestone",
    committedEta: "2026-03-02T14:00:00Z"}) { name }
  recordSurveyResponse(input: {incidentId: "INC-LEAK-1", score: 2,
    submittedAt: "2026-03-04T00:00:00Z"}) { score }
}"""


# --- counts and summaries are over exec-visible rows only --------------------------------------

SUMMARIES = """
query ($from: DateTime, $to: DateTime, $severity: Severity) {
  kpis { slug summary(from: $from, to: $to, severity: $severity) { count value } }
}"""
SERIES = """
query ($bucket: Bucket!, $from: DateTime!, $to: DateTime!, $severity: Severity) {
  kpis {
    slug
    series(bucket: $bucket, from: $from, to: $to, severity: $severity) { start count mean }
  }
}"""
TOTALS = """
query ($severity: Severity, $from: DateTime, $to: DateTime) {
  incidents(first: 100, severity: $severity, detectedFrom: $from, detectedTo: $to) { totalCount }
}"""


def parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(UTC)


def expected_summary(
    rows: list[dict[str, Any]], slug: str, window: dict[str, Any]
) -> dict[str, Any]:
    """Return count and mean of the observations of `slug` in a window, from the admin's rows."""
    values = [
        o["value"]
        for o in rows
        if o["kpi"]["slug"] == slug
        and (window["from"] is None or parse_time(o["timestamp"]) >= parse_time(window["from"]))
        and (window["to"] is None or parse_time(o["timestamp"]) < parse_time(window["to"]))
        and window["severity"] in (None, o["severity"])
    ]
    return {"count": len(values), "value": sum(values) / len(values) if values else None}


def same_summary(found: dict[str, Any], expected: dict[str, Any]) -> bool:
    if found["count"] != expected["count"]:
        return False
    if expected["value"] is None:
        return found["value"] is None
    return found["value"] == pytest.approx(expected["value"], rel=1e-9)


async def test_exec_counts_and_summaries_are_over_exec_visible_rows_only(
    client: TestClient,
) -> None:
    await seed_world(client)
    tokens = tokens_for("admin", *EXEC_ONLY)
    rows = observations_of(await ok(client, "admin", ALL_OBSERVATIONS))
    exec_rows = [o for o in rows if o["kpi"]["visibility"] == "EXEC"]
    assert len(exec_rows) < len(rows)

    # Unwindowed: the exec summaries add up to the exec KPIs' rows in the database, no more.
    stored = await KpiObservation.count().where(KpiObservation.kpi._.visibility == "exec")
    for persona in EXEC_ONLY:
        kpis = json.loads((await post(client, tokens[persona], SUMMARIES))[1])["data"]["kpis"]
        assert [k["slug"] for k in kpis] == list(EXEC_SLUGS)
        assert sum(k["summary"]["count"] for k in kpis) == stored == len(exec_rows)

    windows = draw(
        st.fixed_dictionaries(
            {
                "from": st.none() | DATETIMES,
                "to": st.none() | DATETIMES,
                "severity": st.none() | st.sampled_from(["P1", "P2", "P3", "P4"]),
            }
        ),
        60,
        500,
    )
    checked = 0
    for window in unique_windows(windows):
        admin = summaries_by_slug(await post(client, tokens["admin"], SUMMARIES, window))
        for persona in EXEC_ONLY:
            found = summaries_by_slug(await post(client, tokens[persona], SUMMARIES, window))
            assert sorted(found) == sorted(EXEC_SLUGS), window
            for slug in EXEC_SLUGS:
                assert found[slug] == admin[slug], (persona, slug, window)
                expected = expected_summary(exec_rows, slug, window)
                assert same_summary(found[slug], expected), (persona, slug, window, expected)
        totals = {p: await post(client, tokens[p], TOTALS, window) for p in ("admin", *EXEC_ONLY)}
        assert totals["exec"] == totals["stakeholder"] == totals["admin"], (window, totals)
        checked += 1
    print(f"\nsummaries and totals checked for {checked} generated windows")

    for bucket, start, end in (
        ("DAY", "2026-03-01T00:00:00Z", "2026-04-20T00:00:00Z"),
        ("WEEK", "2026-02-23T00:00:00Z", "2026-05-04T00:00:00Z"),
        ("MONTH", "2026-01-01T00:00:00Z", "2026-07-01T00:00:00Z"),
    ):
        variables = {"bucket": bucket, "from": start, "to": end}
        admin = series_by_slug(await post(client, tokens["admin"], SERIES, variables))
        for persona in EXEC_ONLY:
            found = series_by_slug(await post(client, tokens[persona], SERIES, variables))
            assert found == {slug: admin[slug] for slug in EXEC_SLUGS}, (persona, bucket)
            counted = sum(p["count"] for points in found.values() for p in points)
            window = {"from": start, "to": end, "severity": None}
            assert counted == sum(
                expected_summary(exec_rows, slug, window)["count"] for slug in EXEC_SLUGS
            )

    # More internal rows change nothing an exec-only token reads.
    before = {p: await post(client, tokens[p], SUMMARIES) for p in (*EXEC_ONLY, "admin")}
    extra = [
        {"kpiSlug": slug, "incidentId": incident, "timestamp": stamp, "value": value, "source": "x"}
        for slug, value in ((CANARY_SLUG, SENTINEL), ("mtta", MTTA_SENTINEL))
        for incident, stamp in (
            ("INC-LEAK-2", f"2026-03-09T16:00:00.{CANARY_MICROS}Z"),
            ("INC-LEAK-4", f"2026-04-16T00:00:00.{CANARY_MICROS}Z"),
        )
    ]
    record = """mutation ($inputs: [RecordObservationInput!]!) {
      recordObservations(inputs: $inputs) { value } }"""
    await ok(client, "ingest", record, {"inputs": extra})
    after = {p: await post(client, tokens[p], SUMMARIES) for p in (*EXEC_ONLY, "admin")}
    for persona in EXEC_ONLY:
        assert after[persona] == before[persona]
    assert after["admin"] != before["admin"]  # the control: the rows were written


def unique_windows(windows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Return the distinct windows, `from` before `to` (a backwards window is BAD_USER_INPUT)."""
    distinct = [json.loads(w) for w in unique([json.dumps(w, sort_keys=True) for w in windows])]
    return [
        w
        for w in distinct
        if not (w["from"] and w["to"] and instant(w["to"]) <= instant(w["from"]))
    ]


def instant(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def summaries_by_slug(answer: tuple[int, str]) -> dict[str, dict[str, Any]]:
    status, text = answer
    body = json.loads(text)
    assert status == 200 and "errors" not in body, text
    return {k["slug"]: k["summary"] for k in body["data"]["kpis"]}


def series_by_slug(answer: tuple[int, str]) -> dict[str, list[dict[str, Any]]]:
    status, text = answer
    body = json.loads(text)
    assert status == 200 and "errors" not in body, text
    return {k["slug"]: k["series"] for k in body["data"]["kpis"]}
