"""Generated queries never show an exec-only token an internal KPI, on any path, errors included.

hypothesis-graphql builds thousands of valid operations over the exported `schema.graphql`: every
Query root field and every Mutation root field, with arguments that are sometimes the internal
slugs, real incident ids and cursors, and sometimes garbage. Each is sent over real HTTP with real
exec and stakeholder tokens, into a world seeded with canaries: an internal KPI whose every text
field carries a marker, sentinel values on the observations of both internal KPIs (ingested and
computed), and the seeded internal `mtta`, whose slug, name and owner are canaries too.

The raw text of every answer is searched for every canary. Where the request itself names an
internal slug (and an error could echo it), the answer is compared byte for byte with the answer to
the same request naming an absent slug of the same length instead. Hypothesis cannot drive an async
test, so each test first draws its operations with a synchronous `@given` function that collects
them, then sends them all.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import graphql
import pytest
from aiohttp.test_utils import TestClient
from hypothesis import strategies as st
from hypothesis_graphql import from_schema, mutations, nodes, queries

from registry.tables import TABLES, KpiObservation
from tests.conftest import COUNTS, draw_examples, make_token, run_seed

pytestmark = pytest.mark.security

SCHEMA_SDL = (Path(__file__).resolve().parents[2] / "schema.graphql").read_text()
SCHEMA = graphql.build_schema(SCHEMA_SDL)
QUERY_FIELDS = sorted(SCHEMA.query_type.fields) if SCHEMA.query_type else []
MUTATION_FIELDS = sorted(SCHEMA.mutation_type.fields) if SCHEMA.mutation_type else []

# How many operations to draw. LEAK_SCALE multiplies them (e.g. LEAK_SCALE=5 for a long soak);
# LEAK_SEED replays one run's operations exactly.
SCALE = float(os.environ.get("LEAK_SCALE", "1"))
SEED = run_seed("LEAK_SEED")
QUERIES_PER_FIELD = int(260 * SCALE)
VIEWER_QUERIES = int(30 * SCALE)  # `viewer` takes no arguments: a few dozen documents are all
MIXED_QUERIES = int(260 * SCALE)
MUTATIONS_PER_FIELD = int(25 * SCALE)

EXEC_ONLY = ("exec", "stakeholder")
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

# Matched case-insensitively against the raw text of every answer to an exec-only token.
CANARIES = (
    CANARY_SLUG,
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
TWINS = {CANARY_SLUG: "zz-absent-internal", "mtta": "mxxa"}
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
    assert {slug for slug, _, _ in values} == {CANARY_SLUG, "mtta", *EXEC_SLUGS}


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


DATETIMES = st.one_of(
    st.sampled_from(INSTANTS),
    st.builds(
        _iso,
        st.datetimes(min_value=datetime(2026, 1, 1), max_value=datetime(2026, 12, 31)).map(
            lambda d: d.replace(microsecond=0)
        ),
        st.sampled_from(["Z", "Z", "Z", "+00:00", "+05:30", "-08:00"]),
    ),
)


def garbage() -> st.SearchStrategy[str]:
    return st.one_of(
        st.text(max_size=24),
        st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=24),
        st.sampled_from(["", " ", "\x00", "MTTA", "mtta ", "%", "'; --", "INC-NOPE", "null"]),
    )


def scalar_strategies(cursors: list[str]) -> dict[str, st.SearchStrategy[graphql.ValueNode]]:
    """Arguments: the internal slugs, real ids and cursors, exec slugs, and garbage."""
    strings = st.one_of(
        st.sampled_from([CANARY_SLUG, "mtta"]),
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

    Every nullable argument is always present in a generated document, so most `after` values
    are not cursors and most `from`/`to` pairs are backwards, and most `incidents` and `series`
    selections would stop at BAD_USER_INPUT. Three in four of those are made valid here; which
    ones depends only on the value (crc32), so a seed still replays the same documents.
    """

    def __init__(self, cursors: list[str]) -> None:
        super().__init__()
        self.cursors = set(cursors)

    def enter_field(self, node: graphql.FieldNode, *_: Any) -> graphql.FieldNode | None:
        args = {a.name.value: a for a in node.arguments or ()}
        changed = dict(args)
        after = args.get("after")
        if (
            after is not None
            and isinstance(after.value, graphql.StringValueNode)
            and after.value.value not in self.cursors
            and zlib.crc32(after.value.value.encode()) % 4
        ):
            changed["after"] = graphql.ArgumentNode(name=after.name, value=nodes.Null)
        start, end = args.get("from"), args.get("to")
        if (
            start is not None
            and end is not None
            and isinstance(start.value, graphql.StringValueNode)
            and isinstance(end.value, graphql.StringValueNode)
            and parse_time(start.value.value) >= parse_time(end.value.value)
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


def steered(cursors: list[str]) -> Callable[[graphql.DocumentNode], str]:
    steer = _Steer(cursors)
    return lambda document: graphql.print_ast(graphql.visit(document, steer))


def root_fields(document: str) -> list[str]:
    operation = graphql.parse(document).definitions[0]
    assert isinstance(operation, graphql.OperationDefinitionNode)
    return [
        s.name.value for s in operation.selection_set.selections if isinstance(s, graphql.FieldNode)
    ]


# --- checking one answer -------------------------------------------------------------------------


class Findings:
    """Everything the generated requests showed, to assert on and to report."""

    def __init__(self) -> None:
        self.drawn = 0
        self.sent: Counter[str] = Counter()
        self.fields: Counter[str] = Counter()
        self.statuses: Counter[int] = Counter()
        self.codes: Counter[str] = Counter()
        self.messages: Counter[str] = Counter()
        self.seconds: dict[str, float] = {}
        self.with_data: Counter[str] = Counter()
        self.twins: Counter[str] = Counter()
        self.leaks: list[str] = []
        self.faults: list[str] = []

    def report(self, title: str) -> str:
        return "\n".join(
            [
                f"{title} (LEAK_SEED={SEED}): {self.drawn} drawn, "
                f"{sum(self.fields.values())} root selections",
                f"  sent per persona: {dict(self.sent)}; "
                f"replayed with an absent twin slug: {dict(self.twins)}",
                f"  root fields: {dict(sorted(self.fields.items()))}",
                f"  answers with data: {dict(self.with_data)}; HTTP: {dict(self.statuses)}",
                f"  error codes: {dict(sorted(self.codes.items()))}",
                f"  commonest errors: {self.messages.most_common(4)}",
                "  seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in self.seconds.items()),
                f"  leaks: {len(self.leaks)}; faults: {len(self.faults)}",
            ]
        )


def canaries_in(text: str, request: str) -> list[str]:
    """Return the canaries in `text` that the request did not itself send."""
    low, asked = text.lower(), request.lower()
    return [c for c in CANARIES if c.lower() in low and c.lower() not in asked]


def internal_values(value: Any, key: str = "") -> list[str]:
    """Return the places in `data` that show an internal visibility or an internal slug."""
    found: list[str] = []
    if isinstance(value, dict):
        for k, v in value.items():
            found += internal_values(v, k)
    elif isinstance(value, list):
        for v in value:
            found += internal_values(v, key)
    elif value == "INTERNAL" or (key in ("slug", "kpiSlug") and value not in EXEC_SLUGS):
        found.append(f"{key}={value!r}")
    return found


def twin_of(request: str) -> str | None:
    """Return the request with every internal slug replaced by its absent twin, if it names one."""
    if not any(slug in request for slug in TWINS):
        return None
    return as_twin(request)


def as_twin(text: str) -> str:
    for slug, twin in TWINS.items():
        text = text.replace(slug, twin)
    return text


def error_codes(body: dict[str, Any]) -> list[str]:
    return [str((e.get("extensions") or {}).get("code")) for e in body.get("errors") or []]


def check_answer(
    findings: Findings,
    persona: str,
    request: str,
    status: int,
    text: str,
    *,
    allowed_codes: frozenset[str],
    kind: str,
) -> dict[str, Any] | None:
    """Record what is wrong with one answer to an exec-only token; return its JSON body."""
    where = f"{persona}: {request!r}"
    if status != 200:
        findings.faults.append(f"HTTP {status} for {where}: {text[:300]}")
    leaked = canaries_in(text, request)
    if leaked:
        findings.leaks.append(f"{leaked} in the answer to {where}: {text[:600]}")
    try:
        body: dict[str, Any] = json.loads(text)
    except ValueError:
        findings.faults.append(f"not JSON for {where}: {text[:300]}")
        return None
    for error in body.get("errors") or []:
        findings.messages[re.sub(r"'[^']*'|\"[^\"]*\"|\d+", "…", str(error.get("message")))] += 1
    for code in error_codes(body):
        findings.codes[f"{kind}:{code}"] += 1
        if code not in allowed_codes:
            findings.faults.append(f"code {code} for {where}: {text[:600]}")
    if body.get("data"):
        shown = internal_values(body["data"])
        if shown:
            findings.leaks.append(f"{shown} in the data for {where}: {text[:600]}")
    return body


async def send_checked(
    client: TestClient,
    findings: Findings,
    tokens: dict[str, str],
    request: str,
    *,
    allowed_codes: frozenset[str],
    kind: str = "query",
) -> list[dict[str, Any] | None]:
    """Send one generated request as each exec-only persona, and its twin when it has one."""
    twin = twin_of(request)
    bodies = []
    for persona in EXEC_ONLY:
        findings.sent[persona] += 1
        status, text = await post(client, tokens[persona], request)
        findings.statuses[status] += 1
        body = check_answer(
            findings, persona, request, status, text, allowed_codes=allowed_codes, kind=kind
        )
        findings.with_data[persona] += bool(body and body.get("data"))
        bodies.append(body)
        if twin is None:
            continue
        findings.twins[persona] += 1
        twin_status, twin_text = await post(client, tokens[persona], twin)
        check_answer(
            findings, persona, twin, twin_status, twin_text, allowed_codes=allowed_codes, kind=kind
        )
        if (status, as_twin(text)) != (twin_status, twin_text):
            findings.leaks.append(
                f"{persona}: the answer to {request!r} is not the answer to its twin {twin!r} "
                f"(internal slugs swapped for absent ones): {text[:400]} != {twin_text[:400]}"
            )
    return bodies


def fail_on(findings: Findings) -> None:
    assert findings.faults == [], "\n".join(findings.faults[:10])
    assert findings.leaks == [], "\n".join(findings.leaks[:10])


def unique(documents: list[str]) -> list[str]:
    return list(dict.fromkeys(documents))


async def snapshot() -> dict[str, list[str]]:
    return {t._meta.tablename: sorted(map(repr, await t.select())) for t in TABLES}


async def cursors(client: TestClient) -> list[str]:
    data = await ok(client, "admin", "{ incidents(first: 100) { edges { cursor } } }")
    return [e["cursor"] for e in data["incidents"]["edges"]]


def tokens_for(*personas: str) -> dict[str, str]:
    return {p: make_token(p, sub="leak-probe") for p in personas}


# --- generated operations ------------------------------------------------------------------------


async def test_generated_queries_show_exec_only_tokens_no_internal_kpi(
    client: TestClient, record_property: Callable[[str, object], None]
) -> None:
    await seed_world(client)
    issued = await cursors(client)
    scalars, steer = scalar_strategies(issued), steered(issued)
    started = time.monotonic()
    drawn: list[str] = []
    for salt, field in enumerate(QUERY_FIELDS):
        strategy = queries(SCHEMA_SDL, fields=[field], custom_scalars=scalars, print_ast=steer)
        drawn += draw(strategy, VIEWER_QUERIES if field == "viewer" else QUERIES_PER_FIELD, salt)
    drawn += draw(queries(SCHEMA_SDL, custom_scalars=scalars, print_ast=steer), MIXED_QUERIES, 100)
    documents = unique(drawn)

    findings = Findings()
    findings.drawn = len(drawn)
    findings.seconds["drawing"] = time.monotonic() - started
    tokens = tokens_for(*EXEC_ONLY, "admin")
    control: Counter[str] = Counter()
    for index, document in enumerate(documents):
        findings.fields.update(root_fields(document))
        await send_checked(
            client, findings, tokens, document, allowed_codes=frozenset({"BAD_USER_INPUT"})
        )
        if index % 3 == 0:
            # The control: the same requests do reach the internal KPIs for an admin token.
            status, text = await post(client, tokens["admin"], document)
            codes = error_codes(json.loads(text))
            assert status == 200 and set(codes) <= {"BAD_USER_INPUT"}, (document, text)
            control["sent"] += 1
            control["showed a canary"] += bool(canaries_in(text, document))
    findings.seconds["sending"] = time.monotonic() - started - findings.seconds["drawing"]

    summary = findings.report("generated queries") + (
        f"\n  distinct documents sent: {len(documents)}; admin control: {dict(control)}"
    )
    print("\n" + summary)
    record_property("leak_generation_queries", summary)
    record_property("leak_generation_queries_per_persona", dict(findings.sent))
    record_property("leak_generation_queries_leaks", len(findings.leaks))
    COUNTS["generated queries sent (exec, stakeholder)"] += sum(findings.sent.values())
    COUNTS["leaks found"] += len(findings.leaks)
    assert set(findings.fields) == set(QUERY_FIELDS)
    assert control["showed a canary"] > 0
    fail_on(findings)


async def test_generated_mutations_are_forbidden_to_exec_only_tokens_and_leak_nothing(
    client: TestClient, record_property: Callable[[str, object], None]
) -> None:
    await seed_world(client)
    issued = await cursors(client)
    scalars, steer = scalar_strategies(issued), steered(issued)
    started = time.monotonic()
    drawn: list[str] = []
    for salt, field in enumerate(MUTATION_FIELDS):
        strategy = mutations(SCHEMA_SDL, fields=[field], custom_scalars=scalars, print_ast=steer)
        drawn += draw(strategy, MUTATIONS_PER_FIELD, 200 + salt)
    # Queries and mutations from one strategy, as from_schema draws them.
    drawn += draw(
        from_schema(SCHEMA_SDL, custom_scalars=scalars, print_ast=steer),
        MUTATIONS_PER_FIELD * 4,
        300,
    )
    documents = unique(drawn)

    findings = Findings()
    findings.drawn = len(drawn)
    findings.seconds["drawing"] = time.monotonic() - started
    tokens = tokens_for(*EXEC_ONLY)
    before = await snapshot()
    for document in documents:
        findings.fields.update(root_fields(document))
        if not document.startswith("mutation"):
            await send_checked(
                client, findings, tokens, document, allowed_codes=frozenset({"BAD_USER_INPUT"})
            )
            continue
        bodies = await send_checked(
            client,
            findings,
            tokens,
            document,
            # FORBIDDEN, or refused before it runs (e.g. over the cost cap): nothing runs.
            allowed_codes=frozenset({"FORBIDDEN", "BAD_USER_INPUT"}),
            kind="mutation",
        )
        for body in bodies:
            if body is not None and (body.get("data") is not None or not body.get("errors")):
                findings.faults.append(f"a mutation ran for an exec-only token: {document!r}")
    findings.seconds["sending"] = time.monotonic() - started - findings.seconds["drawing"]
    assert await snapshot() == before, "a refused mutation wrote something"

    summary = findings.report("generated mutations")
    print("\n" + summary)
    record_property("leak_generation_mutations", summary)
    record_property("leak_generation_mutations_per_persona", dict(findings.sent))
    record_property("leak_generation_mutations_leaks", len(findings.leaks))
    COUNTS["generated mutations sent (exec, stakeholder)"] += sum(findings.sent.values())
    COUNTS["leaks found"] += len(findings.leaks)
    assert set(MUTATION_FIELDS) <= set(findings.fields)
    fail_on(findings)


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
    for slug in ("mtta", CANARY_SLUG):
        answers = await every_slug_answer(client, token, slug)
        assert answers == unknown, slug
    # The control: a responder does get the internal KPIs on the same paths.
    responder = await every_slug_answer(client, make_token("responder"), CANARY_SLUG)
    assert responder[0][1] != unknown[0][1] and TAG in responder[0][1]
    assert responder[-1][0] == 200 and TAG in responder[-1][1]
    assert str(SENTINEL) in responder[-3][1]  # GET /incidents/INC-LEAK-1/kpis?kpi=<canary>


@pytest.mark.parametrize("persona", EXEC_ONLY)
async def test_exec_only_answer_for_any_generated_slug_it_may_not_see_is_that_of_an_unknown_one(
    client: TestClient, persona: str
) -> None:
    await seed_world(client)
    token = make_token(persona)
    kpi_query = "query ($slug: String!) { kpi(slug: $slug) { slug name } }"
    slug_like = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=70)
    generated = st.one_of(slug_like, garbage(), st.sampled_from(["mtta", CANARY_SLUG]))
    slugs = unique([CANARY_SLUG, "mtta", *draw(generated, 150, 400)])
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

    # All at once: requests of every persona interleaved on the event loop.
    order = [(p, i) for p in personas for i in range(len(variables))] * 3
    random.Random(SEED).shuffle(order)
    answers = await asyncio.gather(*(ask(p, i) for p, i in order))
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
