"""The fast path answers every request exactly as the standard executor does, and serves its share.

Two apps run side by side on one database: one with compiled plans in front of the executor (the
default) and one with MIM_FAST_PATH=0. Every request goes to both over real HTTP with a real
signed token, and the two answers must have the same status and the same body, byte for byte.
The FastPath counters say which path answered each request on the first app, so every case also
asserts that the fast path served what it should and passed on what it must (mutations, uncovered
fields, and any request that would produce an error).

hypothesis-graphql draws queries from `schema.graphql`, and from a copy without the fields plans
do not cover, so that a good share of them is served. It neither declares variables nor writes
fragments or directives, so each drawn document is rewritten, deterministically by its text: some
arguments become variables (sometimes with a default, a null, or a value of the wrong type), and
some selections gain `__typename`, aliases, inline and named fragments, and literal or variable
@skip/@include. FAST_PATH_SEED replays one run's documents, FAST_PATH_SCALE=5 draws five times as
many.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import random
import time
import zlib
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import graphql
import pytest
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import strategies as st
from hypothesis_graphql import nodes, queries

from schema import MAX_ALIASES, MAX_TOKENS
from schema.fast_path import FastPath
from server import demo
from server.app import FAST_PATH, create_app
from server.config import Settings
from tests.conftest import (
    ENV,
    EXEC_ONLY,
    PERSONAS,
    StatementCounter,
    draw_examples,
    make_token,
    run_seed,
)

SCHEMA_SDL = (Path(__file__).resolve().parents[2] / "schema.graphql").read_text()
SCHEMA = graphql.build_schema(SCHEMA_SDL)
# KpiDefinition fields plans leave to the standard executor.
UNCOVERED = frozenset({"revisions"})

# FAST_PATH_SEED replays one run's documents; FAST_PATH_SCALE multiplies them (a long soak).
SEED = run_seed("FAST_PATH_SEED")
SCALE = float(os.environ.get("FAST_PATH_SCALE", "1"))
# How many documents to draw: per root field and mixed from the schema without the uncovered
# fields (most can be served), and mixed from the whole schema (many must be passed on).
COVERED_PER_ROOT = {
    root: int(count * SCALE)
    for root, count in {"incidents": 20, "incident": 40, "kpis": 25, "kpi": 20, "viewer": 8}.items()
}
PAGES = int(40 * SCALE)  # incidents, without totalCount
COVERED_MIXED = int(30 * SCALE)
ANY_MIXED = int(50 * SCALE)
# An unknown persona's token authenticates, but may read nothing.
UNKNOWN_PERSONA = "auditor"
ALL_PERSONAS = (*PERSONAS, UNKNOWN_PERSONA)

# The benchmark queries.
Q1 = "{ kpis { slug name units visibility targets { severity persona comparison threshold } } }"
Q2 = (
    "{ incidents(first: 50) { edges { node { id title severity"
    " kpis { value timestamp kpi { slug name } } } } } }"
)
Q3 = "query($id: ID!) { incident(id: $id) { id title kpis { value timestamp kpi { slug name } } } }"

# --- the world -----------------------------------------------------------------------------------

NOW = datetime(2026, 6, 1, tzinfo=UTC)
INTERNAL_SLUG = "zz-fast-internal"
PERSONA_SLUG = "zz-fast-persona"  # an exec KPI whose targets differ by persona
INTERNAL_SLUGS = ("mtta", INTERNAL_SLUG)
EXEC_SLUGS = ("cadence-adherence", "mttr", "stakeholder-satisfaction", PERSONA_SLUG)
DEFINITIONS = [
    {
        "slug": INTERNAL_SLUG,
        "name": "Fast path internal",
        "description": "Alerts per incident, for responders only.",
        "formula": "count(alerts) * 1.5",
        "expression": "count(alerts) * 1.5",
        "units": "alerts",
        "targets": [
            {"severity": "P1", "comparison": "AT_MOST", "threshold": 2},
            {"persona": "RESPONDER", "comparison": "AT_MOST", "threshold": 3.5},
        ],
        "dataSources": ["alert.issue_time", "pager"],
        "visibility": "INTERNAL",
        "owner": "MIM Lead",
        "reviewCadence": "P30D",
    },
    {
        "slug": PERSONA_SLUG,
        "name": "Milestones per incident",
        "description": "Milestones committed, judged differently by each audience.",
        "formula": "count(milestones)",
        "expression": "count(milestones)",
        "units": "milestones",
        "targets": [
            {"comparison": "AT_LEAST", "threshold": 2},
            {"persona": "EXEC", "comparison": "AT_LEAST", "threshold": 3},
            {"persona": "STAKEHOLDER", "severity": "P2", "comparison": "AT_MOST", "threshold": 2.5},
            {"severity": "P1", "comparison": "AT_LEAST", "threshold": 4},
        ],
        "dataSources": [],
        "visibility": "EXEC",
        "owner": "Comms Lead",
        "reviewCadence": "P7D",
    },
]
# Incidents of our own next to the demo ones: two detected at the same instant (the cursor's tie
# break), and one with no data at all, never resolved, and a title that is not ASCII.
EXTRA_INCIDENTS = [
    {"id": "INC-FAST-1", "title": "Twin A", "severity": "P2", "detectedAt": "2026-05-10T12:00:00Z"},
    {"id": "INC-FAST-2", "title": "Twin B", "severity": "P1", "detectedAt": "2026-05-10T12:00:00Z"},
    {"id": "INC-FAST-3", "title": "Bare, still open: paiement refusé, 支付失败", "severity": "P4",
     "detectedAt": "2026-05-20T08:30:00+02:00"},
]  # fmt: skip
MISSING_ID = "INC-9999"
INVALID_ID = "not an id!"


@dataclass
class World:
    """What the seeded database holds that requests can name."""

    ids: list[str]
    cursors: list[str]
    instants: list[str]


@dataclass
class Answer:
    """One request's answers from both apps."""

    status: int
    body: dict[str, Any]
    served: bool
    fast_text: str
    standard_text: str


async def post(
    client: TestClient,
    token: str,
    query: str,
    variables: Any = None,
    operation_name: str | None = None,
    method: str = "POST",
) -> tuple[int, str]:
    """Send a request as a JSON body, or with method="GET" in the query string."""
    headers = {"Authorization": f"Bearer {token}"}
    if method == "GET":
        params = {"query": query}
        if variables is not None:
            params["variables"] = json.dumps(variables)
        if operation_name is not None:
            params["operationName"] = operation_name
        response = await client.get("/graphql", params=params, headers=headers)
        return response.status, await response.text()
    payload: dict[str, Any] = {"query": query, "variables": variables}
    if operation_name is not None:
        payload["operationName"] = operation_name
    response = await client.post("/graphql", json=payload, headers=headers)
    return response.status, await response.text()


def fast_path(client: TestClient) -> FastPath:
    """Return the fast path of an app with one, whose counters say which path answered."""
    assert client.app is not None
    return client.app[FAST_PATH]


async def compare(
    fast: TestClient,
    standard: TestClient,
    token: str,
    query: str,
    variables: Any = None,
    operation_name: str | None = None,
    method: str = "POST",
) -> tuple[Answer, str | None]:
    """Send one request to both apps; return the answers and what differs (None if nothing)."""
    counters = fast_path(fast)
    served_before = counters.served
    asked = (token, query, variables, operation_name, method)
    fast_status, fast_text = await post(fast, *asked)
    served = counters.served > served_before
    standard_status, standard_text = await post(standard, *asked)
    answer = Answer(
        status=standard_status,
        body=json.loads(standard_text),
        served=served,
        fast_text=fast_text,
        standard_text=standard_text,
    )
    if (fast_status, fast_text) == (standard_status, standard_text):
        return answer, None
    if not served and fast_status == standard_status and racing_errors(fast_text, standard_text):
        return answer, None
    path = "fast app (served)" if served else "fast app (not served)"
    return answer, (
        f"{path}: HTTP {fast_status} {fast_text[:800]}\n"
        f"   standard: HTTP {standard_status} {standard_text[:800]}"
    )


def racing_errors(one: str, other: str) -> bool:
    """Return whether two standard-executor answers differ only in which errors they report.

    When a field error nulls the whole response, the executor cancels the fields still running,
    so another failing field reports its error only if it failed first: which ones are listed
    depends on timing. Both answers then come from the same executor (the fast path passed the
    request on), and hold the same data.
    """
    first, second = json.loads(one), json.loads(other)
    if first.get("data") != second.get("data") or not first.get("errors"):
        return False
    errors = [
        {json.dumps(e, sort_keys=True) for e in b.get("errors") or []} for b in (first, second)
    ]
    return bool(errors[0] and errors[1]) and (errors[0] <= errors[1] or errors[1] <= errors[0])


async def same(
    fast: TestClient,
    standard: TestClient,
    persona: str | list[str],
    query: str,
    variables: Any = None,
    *,
    served: bool,
    operation_name: str | None = None,
) -> dict[str, Any]:
    """Assert both apps answer alike and the fast path served (or passed on); return the body."""
    answer, difference = await compare(
        fast, standard, make_token(persona), query, variables, operation_name
    )
    assert difference is None, f"{persona}: {query} {variables}\n{difference}"
    assert answer.served is served, f"{persona}: served={answer.served}: {query} {variables}"
    assert answer.status == 200 or not served
    return answer.body


async def ok(client: TestClient, persona: str, query: str, variables: Any = None) -> Any:
    status, text = await post(client, make_token(persona), query, variables)
    body = json.loads(text)
    assert status == 200 and "errors" not in body, text
    return body["data"]


@pytest.fixture
async def fast(settings: Settings) -> AsyncIterator[TestClient]:
    assert settings.fast_path
    async with TestClient(TestServer(create_app(settings))) as client:
        yield client


@pytest.fixture
async def standard() -> AsyncIterator[TestClient]:
    settings = Settings.from_env({**ENV, "MIM_FAST_PATH": "0"})
    async with TestClient(TestServer(create_app(settings))) as client:
        assert client.app is not None and FAST_PATH not in client.app
        yield client


@pytest.fixture(autouse=True)
def no_fault_logged(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Fail a test whose requests logged an error: a fault the fast path hid by passing on."""
    yield
    faults = [r.getMessage() for r in caplog.get_records("call") if r.levelno >= logging.ERROR]
    assert faults == [], faults


async def seed_world(client: TestClient, *, count: int = 30) -> World:
    """Demo incidents with every kind of data, our KPIs, and ingested observations of all KPIs."""
    define = """mutation ($input: CreateKpiDefinitionInput!) {
      createKpiDefinition(input: $input) { slug } }"""
    for definition in DEFINITIONS:
        await ok(client, "admin", define, {"input": definition})
    await ok(
        client,
        "admin",
        """mutation { markKpiReviewed(slug: "mtta", note: "checked") { version }
          updateKpiDefinition(slug: "mttr", input: {dataSources: []}) { version } }""",
    )
    upsert = "mutation ($input: IncidentInput!) { upsertIncident(input: $input) { id } }"
    for incident in EXTRA_INCIDENTS:
        await ok(client, "ingest", upsert, {"input": incident})
    await demo.load(count=count, seed=2041, now=NOW)  # computes every KPI with an expression

    data = await ok(client, "admin", "{ incidents(first: 100) { edges { cursor node { id } } } }")
    edges = data["incidents"]["edges"]
    ids = [e["node"]["id"] for e in edges]
    # Ingested rows of internal and exec KPIs, on some incidents only (the others have none).
    observations = [
        {
            "kpiSlug": slug,
            "incidentId": incident,
            "timestamp": (NOW - timedelta(days=n + 1, microseconds=4242)).isoformat(),
            "value": 10.25 * (n + 1) + index,
            "source": "import",
            "confidence": 0.5,
        }
        for n, incident in enumerate(ids[::4])
        for index, slug in enumerate((*INTERNAL_SLUGS, "mttr"))
    ]
    record = """mutation ($inputs: [RecordObservationInput!]!) {
      recordObservations(inputs: $inputs) { value } }"""
    await ok(client, "ingest", record, {"inputs": observations})
    instants = sorted(
        {
            "2026-05-10T12:00:00Z",
            "2026-05-10T12:00:00.000001Z",
            (NOW - timedelta(days=30)).isoformat(),
            (NOW - timedelta(days=90)).isoformat().replace("+00:00", "Z"),
            "2026-04-01T00:00:00+05:30",
        }
    )
    return World(ids=ids, cursors=[e["cursor"] for e in edges], instants=instants)


@pytest.fixture
async def world(standard: TestClient) -> World:
    return await seed_world(standard)


# --- generated documents -------------------------------------------------------------------------


def pruned_schema(drop: dict[str, frozenset[str]]) -> graphql.GraphQLSchema:
    """Return the schema without some fields of some object types."""
    document = graphql.parse(SCHEMA_SDL)
    definitions = []
    for definition in document.definitions:
        if isinstance(definition, graphql.ObjectTypeDefinitionNode):
            dropped = drop.get(definition.name.value, frozenset())
            kept = tuple(f for f in definition.fields or () if f.name.value not in dropped)
            definition = dataclasses.replace(definition, fields=kept)
        definitions.append(definition)
    return graphql.build_ast_schema(graphql.DocumentNode(definitions=tuple(definitions)))


def scalar_strategies(world: World) -> dict[str, st.SearchStrategy[graphql.ValueNode]]:
    """Arguments: real slugs, ids and cursors (internal ones too), near misses, and garbage."""
    strings = st.one_of(
        st.sampled_from([*INTERNAL_SLUGS, *EXEC_SLUGS, "does-not-exist"]),
        st.sampled_from([*world.ids, MISSING_ID, INVALID_ID]),
        st.sampled_from(world.cursors),
        st.sampled_from(["", " ", "MTTR", "mttr ", "%", "'; --", "null", "\x00"]),
        st.text(max_size=12),
    )
    return {
        "String": strings.map(nodes.String),
        "ID": st.one_of(
            st.sampled_from(world.ids).map(nodes.String),
            strings.map(nodes.String),
            st.integers(-3, 3).map(nodes.Int),
        ),
        "Int": st.one_of(
            st.integers(1, 100), st.integers(1, 6), st.sampled_from([0, -1, 101, 2**31 - 1])
        ).map(nodes.Int),
        "DateTime": st.one_of(
            st.sampled_from(world.instants),
            st.datetimes(min_value=datetime(2025, 11, 1), max_value=datetime(2026, 7, 1)).map(
                lambda d: d.replace(microsecond=0).isoformat() + "Z"
            ),
        ).map(nodes.String),
    }


@dataclass
class Request:
    """One generated GraphQL request."""

    query: str
    variables: dict[str, Any] | None
    operation_name: str | None


@dataclass
class _Rewriter:
    """Rewrites one drawn document; every choice depends only on the document's text."""

    cursors: frozenset[str]
    rng: random.Random
    variables: dict[str, Any] = field(default_factory=dict)
    definitions: list[graphql.VariableDefinitionNode] = field(default_factory=list)
    fragments: list[graphql.FragmentDefinitionNode] = field(default_factory=list)
    # Whether @skip/@include may take a variable here: one such directive passes the document on.
    variable_directives: bool = False

    def request(self, document: graphql.DocumentNode) -> Request:
        (operation,) = document.definitions
        assert isinstance(operation, graphql.OperationDefinitionNode)
        assert SCHEMA.query_type is not None
        self.variable_directives = self.rng.random() < 0.15
        selection_set = self.selections(operation.selection_set, SCHEMA.query_type)
        name = "Drawn" if self.rng.random() < 0.25 else None
        rewritten = graphql.OperationDefinitionNode(
            operation=graphql.OperationType.QUERY,
            name=graphql.NameNode(value=name) if name else None,
            variable_definitions=tuple(self.definitions),
            directives=(),
            selection_set=selection_set,
        )
        text = graphql.print_ast(graphql.DocumentNode(definitions=(rewritten, *self.fragments)))
        variables = self.variables if self.definitions or self.rng.random() < 0.5 else None
        return Request(text, variables, name if self.rng.random() < 0.5 else None)

    def selections(
        self, selection_set: graphql.SelectionSetNode, parent: graphql.GraphQLObjectType
    ) -> graphql.SelectionSetNode:
        rng = self.rng
        chosen: list[graphql.SelectionNode] = []
        for selection in selection_set.selections:
            assert isinstance(selection, graphql.FieldNode)
            chosen.append(self.field(selection, parent))
        if rng.random() < 0.15:
            typename = graphql.FieldNode(
                name=graphql.NameNode(value="__typename"),
                alias=graphql.NameNode(value="typename_") if rng.random() < 0.3 else None,
                arguments=(),
                directives=(),
            )
            chosen.insert(rng.randrange(len(chosen) + 1), typename)
        if len(chosen) > 1 and rng.random() < 0.15:
            start = rng.randrange(len(chosen))
            end = rng.randrange(start, len(chosen)) + 1
            condition = (
                graphql.NamedTypeNode(name=graphql.NameNode(value=parent.name))
                if rng.random() < 0.5
                else None
            )
            inline = graphql.InlineFragmentNode(
                type_condition=condition,
                directives=(),
                selection_set=graphql.SelectionSetNode(selections=tuple(chosen[start:end])),
            )
            chosen[start:end] = [inline]
        if rng.random() < 0.1:
            name = f"F{len(self.fragments)}"
            self.fragments.append(
                graphql.FragmentDefinitionNode(
                    name=graphql.NameNode(value=name),
                    type_condition=graphql.NamedTypeNode(name=graphql.NameNode(value=parent.name)),
                    directives=(),
                    selection_set=graphql.SelectionSetNode(selections=tuple(chosen)),
                )
            )
            spread = graphql.FragmentSpreadNode(name=graphql.NameNode(value=name), directives=())
            chosen = [spread, spread] if rng.random() < 0.3 else [spread]
        return graphql.SelectionSetNode(selections=tuple(chosen))

    def field(
        self, node: graphql.FieldNode, parent: graphql.GraphQLObjectType
    ) -> graphql.FieldNode:
        definition = parent.fields[node.name.value]
        drawn = [
            argument
            for argument in node.arguments or ()
            # kpi(asOf:) is the executor's by design (rebuilt from revisions): kept in a few
            # queries, so that most of the comparison still reaches the compiled plans.
            if argument.name.value != "asOf" or self.rng.random() < 0.2
        ]
        given = {argument.name.value for argument in drawn}
        if given & FORWARD and given & BACKWARD and self.rng.random() < 0.85:
            # Drawn freely, most pages would mix first/after with last/before (refused): keep
            # one direction mostly, so that most pages reach the data.
            dropped = FORWARD if self.rng.random() < 0.5 else BACKWARD
            drawn = [argument for argument in drawn if argument.name.value not in dropped]
        arguments = tuple(
            self.argument(argument, definition.args[argument.name.value].type) for argument in drawn
        )
        selection_set = None
        if node.selection_set is not None:
            child = graphql.get_named_type(definition.type)
            assert isinstance(child, graphql.GraphQLObjectType)
            selection_set = self.selections(node.selection_set, child)
        alias = graphql.NameNode(value=f"{node.name.value}_") if self.rng.random() < 0.08 else None
        return graphql.FieldNode(
            alias=alias,
            name=node.name,
            arguments=arguments,
            directives=self.directives(),
            selection_set=selection_set,
        )

    def directives(self) -> tuple[graphql.DirectiveNode, ...]:
        roll = self.rng.random()
        if roll > 0.12:
            return ()
        name = self.rng.choice(["skip", "include"])
        if self.variable_directives and roll < 0.06:
            value: graphql.ValueNode = self.variable(
                "Boolean!", graphql.BooleanValueNode(value=self.rng.random() < 0.5)
            )
        else:
            # Mostly keep the field; sometimes drop it (possibly every field of a selection).
            keep = self.rng.random() < 0.75
            value = graphql.BooleanValueNode(value=keep if name == "include" else not keep)
        argument = graphql.ArgumentNode(name=graphql.NameNode(value="if"), value=value)
        return (graphql.DirectiveNode(name=graphql.NameNode(value=name), arguments=(argument,)),)

    def argument(
        self, node: graphql.ArgumentNode, type_: graphql.GraphQLInputType
    ) -> graphql.ArgumentNode:
        value = node.value
        if (
            node.name.value in ("after", "before")
            and isinstance(value, graphql.StringValueNode)
            and value.value not in self.cursors
            and self.rng.random() < 0.75
        ):
            value = nodes.Null  # most drawn cursor values are no cursor; reach the data too
        if self.rng.random() < 0.35:
            value = self.variable(str(type_), value)
        return graphql.ArgumentNode(name=node.name, value=value)

    def variable(self, type_: str, literal: graphql.ValueNode) -> graphql.VariableNode:
        """Declare a variable standing for a literal; return the variable."""
        name = f"v{len(self.definitions)}"
        value = graphql.value_from_ast_untyped(literal)
        default: graphql.ConstValueNode | None = None
        roll = self.rng.random()
        if roll < 0.15 and not type_.endswith("!") and value is not None:
            default = cast(graphql.ConstValueNode, literal)  # declared with a default, not sent
        elif roll < 0.25:
            # A null, or a value of no input type: refused when the type is non-null, or always.
            self.variables[name] = None if roll < 0.2 else {"not": "a value"}
        else:
            self.variables[name] = value
        self.definitions.append(
            graphql.VariableDefinitionNode(
                variable=graphql.VariableNode(name=graphql.NameNode(value=name)),
                type=graphql.parse_type(type_),
                default_value=default,
                directives=(),
            )
        )
        return graphql.VariableNode(name=graphql.NameNode(value=name))


# incidents' arguments of each paging direction.
FORWARD = frozenset({"first", "after"})
BACKWARD = frozenset({"last", "before"})


def rewritten(cursors: list[str]) -> Callable[[graphql.DocumentNode], Request]:
    known = frozenset(cursors)

    def rewrite(document: graphql.DocumentNode) -> Request:
        text = graphql.print_ast(document)
        return _Rewriter(known, random.Random(zlib.crc32(text.encode()))).request(document)

    return rewrite


def draw(strategy: st.SearchStrategy[Any], count: int, salt: int) -> list[Any]:
    """Return `count` examples of `strategy`, drawn under this module's seed plus `salt`."""
    return draw_examples(strategy, count, SEED + salt)


def draw_requests(world: World) -> list[Request]:
    """Return distinct requests: per root field and mixed, mostly over the covered fields."""
    scalars, rewrite = scalar_strategies(world), rewritten(world.cursors)
    covered = pruned_schema({"KpiDefinition": UNCOVERED})
    # Drawn freely, a page is nearly always its totalCount alone: without it, edges and pageInfo.
    pages = pruned_schema(
        {"KpiDefinition": UNCOVERED, "IncidentConnection": frozenset({"totalCount"})}
    )
    drawn: list[Request] = []
    for salt, (root, count) in enumerate(COVERED_PER_ROOT.items()):
        strategy = queries(covered, fields=[root], custom_scalars=scalars, print_ast=rewrite)
        drawn += draw(strategy, count, salt)
    strategies = (
        (queries(pages, fields=["incidents"], custom_scalars=scalars, print_ast=rewrite), PAGES),
        (queries(covered, custom_scalars=scalars, print_ast=rewrite), COVERED_MIXED),
        (queries(SCHEMA_SDL, custom_scalars=scalars, print_ast=rewrite), ANY_MIXED),
    )
    for salt, (strategy, count) in enumerate(strategies, start=10):
        drawn += draw(strategy, count, salt)
    unique = {json.dumps([r.query, r.variables, r.operation_name]): r for r in drawn}
    return list(unique.values())


def strings_in(data: Any) -> set[str]:
    """Return every string value in a response body (keys, which may be aliases, aside)."""
    if isinstance(data, dict):
        return set().union(*(strings_in(v) for v in data.values()))
    if isinstance(data, list):
        return set().union(*(strings_in(v) for v in data))
    return {data} if isinstance(data, str) else set()


async def test_generated_queries_answer_the_same_on_both_paths_for_every_persona(
    fast: TestClient, standard: TestClient, world: World
) -> None:
    started = time.monotonic()
    requests = draw_requests(world)
    drawing = time.monotonic() - started
    tokens = {p: make_token(p, sub="differential") for p in ALL_PERSONAS}
    served: Counter[str] = Counter()
    sent: Counter[str] = Counter()
    codes: Counter[str] = Counter()
    differences: list[str] = []
    leaks: list[str] = []
    for index, request in enumerate(requests):
        method = "GET" if index % 4 == 3 else "POST"  # a GET carries it in the query string
        for persona, token in tokens.items():
            answer, difference = await compare(
                fast,
                standard,
                token,
                request.query,
                request.variables,
                request.operation_name,
                method=method,
            )
            sent[persona] += 1
            served[persona] += answer.served
            codes.update(str(e["extensions"]["code"]) for e in answer.body.get("errors") or [])
            where = (
                f"{persona} {method} (FAST_PATH_SEED={SEED}): {request.query!r} "
                f"variables={request.variables!r} operationName={request.operation_name!r}"
            )
            if difference is not None:
                differences.append(f"{where}\n   {difference}")
            if persona in EXEC_ONLY and answer.served:
                shown = strings_in(json.loads(answer.fast_text)) & set(INTERNAL_SLUGS)
                if shown:
                    leaks.append(f"{where}: {shown}")
    share = sum(served.values()) / sum(sent.values())
    print(
        f"\n{len(requests)} distinct generated requests x {len(tokens)} personas "
        f"(FAST_PATH_SEED={SEED}): served {share:.0%} "
        f"{ {p: f'{served[p] / sent[p]:.0%}' for p in sent} }; error codes {dict(codes)}; "
        f"drawing {drawing:.1f} s, sending {time.monotonic() - started - drawing:.1f} s"
    )
    assert differences == [], f"{len(differences)} differ:\n" + "\n".join(differences[:5])
    assert leaks == [], "\n".join(leaks[:5])
    # Otherwise the comparison proves little: most answers would come from the one executor.
    assert share > 0.35, share  # measured: 38-47% over seeds since last/before (52-63% before)
    # Measured per persona: 62-75% on 2026-11-27; 46-62% on 2026-12-03 (more error cases drawn).
    assert all(served[p] / sent[p] > 0.40 for p in PERSONAS), served


# --- hand-written cases: served, and the same answer ---------------------------------------------


async def test_benchmark_queries_are_served_with_the_standard_answer_for_every_persona(
    fast: TestClient, standard: TestClient, world: World
) -> None:
    for persona in PERSONAS:
        kpis = (await same(fast, standard, persona, Q1, served=True))["data"]["kpis"]
        assert {k["slug"] for k in kpis} >= {"mttr", PERSONA_SLUG}
        page = await same(fast, standard, persona, Q2, served=True)
        edges = page["data"]["incidents"]["edges"]
        assert len(edges) == len(world.ids) and any(e["node"]["kpis"] for e in edges)
        for incident in world.ids[::5]:
            body = await same(fast, standard, persona, Q3, {"id": incident}, served=True)
            assert body["data"]["incident"]["id"] == incident
        for incident in (MISSING_ID, INVALID_ID, ""):
            body = await same(fast, standard, persona, Q3, {"id": incident}, served=True)
            assert body == {"data": {"incident": None}}


async def test_one_incident_read_with_its_observations_gives_the_standard_answer(
    fast: TestClient, standard: TestClient, world: World
) -> None:
    query = (
        "query($id: ID!, $slugs: [String!]) { incident(id: $id) { id severity "
        "kpis(slugs: $slugs) { value meetsTarget incident { id } kpi { slug targets { threshold } "
        "reviewDueAt } } } }"
    )
    slug_lists = (None, [], ["mttr"], ["mttr", "mttr", "not a slug!"], [PERSONA_SLUG], ["nope"])
    for persona in PERSONAS:
        for incident in world.ids[::7]:
            for slugs in slug_lists:
                variables = {"id": incident, "slugs": slugs}
                body = await same(fast, standard, persona, query, variables, served=True)
                assert body["data"]["incident"]["id"] == incident


async def test_benchmark_queries_are_passed_on_and_forbidden_for_an_unknown_persona(
    fast: TestClient, standard: TestClient, world: World
) -> None:
    for query, variables in ((Q1, None), (Q2, None), (Q3, {"id": world.ids[0]})):
        body = await same(fast, standard, UNKNOWN_PERSONA, query, variables, served=False)
        assert [e["extensions"]["code"] for e in body["errors"]] == ["FORBIDDEN"]


async def test_tokens_with_several_personas_are_served_with_the_standard_answer(
    fast: TestClient, standard: TestClient, world: World
) -> None:
    query = """query ($id: ID!) {
      viewer { subject personas visibilities }
      kpis { slug targets { persona threshold } }
      incident(id: $id) { kpis { meetsTarget kpi { slug } } }
    }"""
    for personas in (["stakeholder", "exec"], ["exec", "responder"], ["admin", "nobody"]):
        for incident in world.ids[:8]:
            await same(fast, standard, personas, query, {"id": incident}, served=True)


FRAGMENTS = """
query {
  kpis { name ...Definition slug }
  incidents(first: 4) {
    edges { ...Edge ...Edge node { ... on Incident { severity ...Incident } title } }
  }
  viewer { ... { subject } ... on Viewer { personas } }
}
fragment Definition on KpiDefinition {
  slug
  ... on KpiDefinition { units targets { ...Target } }
  targets { severity }
}
fragment Target on KpiTarget { threshold comparison }
fragment Incident on Incident {
  id
  kpis { value kpi { ...Definition } incident { ...Bare } }
}
fragment Bare on Incident { id detectedAt }
fragment Edge on IncidentEdge { cursor node { id ...Bare } }
"""


async def test_named_inline_nested_and_repeated_fragments_are_served_with_the_standard_answer(
    fast: TestClient, standard: TestClient, world: World
) -> None:
    for persona in ("exec", "admin"):
        body = await same(fast, standard, persona, FRAGMENTS, served=True)
        # Response keys come in first-seen order: the fragment adds slug before the field does.
        assert list(body["data"]["kpis"][0]) == ["name", "slug", "units", "targets"]
        node = body["data"]["incidents"]["edges"][0]["node"]
        assert list(node) == ["id", "detectedAt", "severity", "kpis", "title"]


ALIASES = """
query ($id: ID!) {
  exec: kpis(visibility: EXEC) { slug }
  all: kpis { key: slug slug label: name }
  internal: kpis(visibility: INTERNAL) { slug }
  mttr: kpi(slug: "mttr") { name }
  mtta: kpi(slug: "mtta") { name }
  incident(id: $id) {
    mttrOnly: kpis(slugs: ["mttr"]) { value kpi { slug } }
    kpis { value kpi { slug } }
    nothing: kpis(slugs: []) { value }
    internals: kpis(slugs: ["mtta", "zz-fast-internal", "no such slug"]) { value kpi { slug } }
    when: detectedAt
  }
  p1: incidents(first: 3, severity: P1) { totalCount edges { node { id } } }
  p2: incidents(first: 3, severity: P2) { totalCount edges { node { id } } }
}
"""


async def test_aliases_of_one_field_with_different_arguments_are_served_with_the_standard_answer(
    fast: TestClient, standard: TestClient, world: World
) -> None:
    for persona in PERSONAS:
        for incident in world.ids[::4]:
            body = await same(fast, standard, persona, ALIASES, {"id": incident}, served=True)
            assert list(body["data"]) == [
                "exec", "all", "internal", "mttr", "mtta", "incident", "p1", "p2"
            ]  # fmt: skip


TYPENAMES = """
{
  __typename
  viewer { __typename subject }
  kpis { __typename targets { __typename } t: __typename }
  kpi(slug: "mttr") { __typename }
  incidents(first: 3) {
    __typename
    pageInfo { __typename }
    edges {
      __typename
      node {
        __typename
        alerts { __typename } timeline { __typename }
        milestones { __typename } surveyResponses { __typename }
        kpis { __typename kpi { __typename } incident { __typename } }
      }
    }
  }
  incident(id: "INC-FAST-1") { __typename }
}
"""


async def test_typename_at_every_level_is_served_with_the_standard_answer(
    fast: TestClient, standard: TestClient, world: World
) -> None:
    for persona in ("stakeholder", "responder"):
        body = await same(fast, standard, persona, TYPENAMES, served=True)
        assert body["data"]["__typename"] == "Query"
        assert body["data"]["incidents"]["edges"][0]["node"]["__typename"] == "Incident"
    for persona in ("admin", UNKNOWN_PERSONA):  # nothing to read: served to anyone
        body = await same(fast, standard, persona, "{ __typename t: __typename }", served=True)
        assert body == {"data": {"__typename": "Query", "t": "Query"}}


LITERAL_DIRECTIVES = """
{
  kpis {
    slug @include(if: true)
    name @include(if: false)
    units @skip(if: false)
    owner @skip(if: true)
    ... @skip(if: true) { version }
    ... on KpiDefinition @include(if: true) { visibility }
    ...Late @include(if: false)
    ...Early
  }
  hidden: incidents @skip(if: true) { totalCount }
  incidents(first: 2) @include(if: true) {
    edges { node {
      id @skip(if: true) @include(if: true)
      title @skip(if: false) @include(if: true)
    } }
  }
  viewer @skip(if: false) { subject @skip(if: true) }
}
fragment Late on KpiDefinition { createdAt }
fragment Early on KpiDefinition { updatedAt }
"""


async def test_skip_and_include_with_literals_are_served_with_the_standard_answer(
    fast: TestClient, standard: TestClient, world: World
) -> None:
    for persona in ("exec", "ingest"):
        body = await same(fast, standard, persona, LITERAL_DIRECTIVES, served=True)
        assert list(body["data"]["kpis"][0]) == ["slug", "units", "visibility", "updatedAt"]
        assert body["data"]["viewer"] == {}  # every field skipped: an empty object
        assert list(body["data"]["incidents"]["edges"][0]["node"]) == ["title"]
        nothing = "{ kpis @skip(if: true) { slug } viewer @include(if: false) { subject } }"
        assert await same(fast, standard, persona, nothing, served=True) == {"data": {}}


VARIABLE_DIRECTIVES = """
query ($yes: Boolean!, $no: Boolean = false) {
  kpis { slug name @include(if: $yes) units @skip(if: $no) }
  incidents(first: 2) { edges { node { id title @skip(if: $yes) } } }
}
"""


async def test_skip_and_include_with_variables_are_passed_on_with_the_same_answer(
    fast: TestClient, standard: TestClient, world: World
) -> None:
    for persona in ("stakeholder", "admin"):
        for variables in ({"yes": True}, {"yes": False, "no": True}, {"yes": False}):
            await same(fast, standard, persona, VARIABLE_DIRECTIVES, variables, served=False)
        body = await same(fast, standard, persona, VARIABLE_DIRECTIVES, {}, served=False)
        assert [e["extensions"]["code"] for e in body["errors"]] == ["BAD_USER_INPUT"]


# A null sent for a directive variable that has a default (`$no: Boolean = false` in
# `@skip(if: $no)` below the root) makes graphql-core raise during execution, with a path: the
# client's mistake, not a fault of the service.
async def test_a_null_for_a_defaulted_directive_variable_is_bad_user_input_on_both_paths(
    fast: TestClient, standard: TestClient, world: World, caplog: pytest.LogCaptureFixture
) -> None:
    variables = {"yes": True, "no": None}
    body = await same(fast, standard, "admin", VARIABLE_DIRECTIVES, variables, served=False)
    codes = [e["extensions"]["code"] for e in body["errors"]]
    logged = [r.getMessage() for r in caplog.get_records("call") if r.levelno >= logging.ERROR]
    caplog.clear()  # reported here, not again by no_fault_logged
    assert (codes, logged) == (["BAD_USER_INPUT"], []), body


CHILD_LISTS = """
query ($first: Int) {
  incidents(first: $first) {
    edges { node {
      id resolvedAt
      alerts { id issueTime source }
      timeline { kind phase occurredAt note }
      milestones { name committedEta deliveredAt }
      surveyResponses { score submittedAt }
    } }
  }
  bare: incident(id: "INC-FAST-3") {
    alerts { id } timeline { kind } milestones { name } surveyResponses { score } resolvedAt
  }
}
"""


async def test_every_incident_child_list_is_served_with_the_standard_answer(
    fast: TestClient, standard: TestClient, world: World
) -> None:
    for persona in ("exec", "responder"):
        body = await same(fast, standard, persona, CHILD_LISTS, {"first": 100}, served=True)
        nodes_ = [e["node"] for e in body["data"]["incidents"]["edges"]]
        for name in ("alerts", "timeline", "milestones", "surveyResponses"):
            assert any(n[name] for n in nodes_), name  # the data set has rows of every kind
        empty: dict[str, Any] = {
            k: [] for k in ("alerts", "timeline", "milestones", "surveyResponses")
        }
        assert body["data"]["bare"] == {**empty, "resolvedAt": None}


OBSERVATIONS = """
{
  incidents(first: 40) { edges { node {
    id severity
    kpis {
      value timestamp source confidence definitionVersion meetsTarget
      kpi { slug visibility targets { severity persona comparison threshold } }
      incident { id severity kpis(slugs: ["mttr", "zz-fast-persona"]) {
        meetsTarget incident { id title }
      } }
    }
  } } }
}
"""


async def test_observation_incident_and_meets_target_are_served_with_the_standard_answer(
    fast: TestClient, standard: TestClient, world: World
) -> None:
    for persona in PERSONAS:
        body = await same(fast, standard, persona, OBSERVATIONS, served=True)
        observations = [o for e in body["data"]["incidents"]["edges"] for o in e["node"]["kpis"]]
        assert {o["meetsTarget"] for o in observations} == {True, False, None}
        assert {o["source"] for o in observations} == {"computed", "import"}


PAGE = """
query ($first: Int, $after: String, $severity: Severity, $from: DateTime, $to: DateTime) {
  incidents(first: $first, after: $after, severity: $severity, detectedFrom: $from,
            detectedTo: $to) {
    totalCount
    pageInfo { hasNextPage endCursor }
    edges { cursor node { id severity detectedAt } }
  }
}
"""
FILTERS = [
    {},
    {"severity": "P2"},
    {"from": "2026-03-01T00:00:00Z"},
    {"to": "2026-05-10T12:00:00Z"},
    {"from": "2026-02-01T00:00:00+01:00", "to": "2026-05-10T12:00:00.000001Z", "severity": "P3"},
    {"from": "2026-05-10T12:00:00Z", "to": "2026-05-10T12:00:01Z"},  # the two twins only
    {"from": "2030-01-01T00:00:00Z"},  # nothing
]


async def test_pages_followed_by_their_end_cursor_are_served_with_the_standard_answer(
    fast: TestClient, standard: TestClient, world: World
) -> None:
    for persona in ("exec", "admin"):
        for where in FILTERS:
            seen: list[str] = []
            after = None
            while True:
                variables = {**where, "first": 4, "after": after}
                body = await same(fast, standard, persona, PAGE, variables, served=True)
                page = body["data"]["incidents"]
                seen += [e["node"]["id"] for e in page["edges"]]
                if not page["pageInfo"]["hasNextPage"]:
                    break
                after = page["pageInfo"]["endCursor"]
                assert after == page["edges"][-1]["cursor"]
            assert len(seen) == len(set(seen)) == page["totalCount"], where
    literal = """{ incidents(first: 1, severity: P1, detectedFrom: "2026-05-10T12:00:00Z")
      { totalCount pageInfo { endCursor hasNextPage } edges { node { id } } } }"""
    twins = await same(fast, standard, "stakeholder", literal, served=True)
    assert [e["node"]["id"] for e in twins["data"]["incidents"]["edges"]] == ["INC-FAST-2"]


INTERNAL_KPI = """query ($slug: String!) {
  kpi(slug: $slug) { slug name visibility owner dataSources lastReviewedAt reviewDueAt version
    createdAt updatedAt description formula expression reviewCadence targets { persona } }
}"""


async def test_an_internal_kpi_by_slug_is_null_for_exec_only_tokens_and_shown_to_admin(
    fast: TestClient, standard: TestClient, world: World
) -> None:
    for slug in INTERNAL_SLUGS:
        for persona in EXEC_ONLY:
            body = await same(fast, standard, persona, INTERNAL_KPI, {"slug": slug}, served=True)
            assert body == {"data": {"kpi": None}}
        body = await same(fast, standard, "admin", INTERNAL_KPI, {"slug": slug}, served=True)
        assert body["data"]["kpi"]["visibility"] == "INTERNAL"
    reviewed = await same(fast, standard, "responder", INTERNAL_KPI, {"slug": "mtta"}, served=True)
    assert reviewed["data"]["kpi"]["lastReviewedAt"] is not None


async def test_viewer_is_served_with_the_standard_answer_for_every_persona(
    fast: TestClient, standard: TestClient
) -> None:
    query = "{ viewer { subject personas visibilities } }"
    for persona in PERSONAS:
        body = await same(fast, standard, persona, query, served=True)
        assert body["data"]["viewer"]["personas"] == [persona.upper()]
    await same(fast, standard, UNKNOWN_PERSONA, query, served=False)


async def test_exec_only_tokens_never_see_an_internal_kpi_slug_on_the_fast_path(
    fast: TestClient, standard: TestClient, world: World
) -> None:
    asked = [
        (Q1, None),
        (Q2.replace("first: 50", "first: 100"), None),
        ("{ kpis(visibility: INTERNAL) { slug } }", None),
        (INTERNAL_KPI, {"slug": INTERNAL_SLUG}),
        (ALIASES, {"id": world.ids[0]}),
        (OBSERVATIONS, None),
        *((Q3, {"id": incident}) for incident in world.ids),
    ]
    for persona in EXEC_ONLY:
        token = make_token(persona)
        for query, variables in asked:
            answer, difference = await compare(fast, standard, token, query, variables)
            assert difference is None and answer.served, (query, variables, difference)
            shown = strings_in(json.loads(answer.fast_text)) & set(INTERNAL_SLUGS)
            assert shown == set(), (persona, query, variables, answer.fast_text[:400])
    # The control: the same requests do show them to a responder.
    answer, _ = await compare(fast, standard, make_token("responder"), Q2, None)
    assert strings_in(json.loads(answer.fast_text)) >= set(INTERNAL_SLUGS)


async def test_concurrent_requests_of_every_persona_get_the_answers_they_get_alone(
    fast: TestClient, standard: TestClient, world: World
) -> None:
    asked = [(OBSERVATIONS, None), (ALIASES, {"id": world.ids[4]}), (Q3, {"id": world.ids[0]})]
    tokens = {p: make_token(p) for p in PERSONAS}
    alone = {
        (persona, n): await post(fast, token, query, variables)
        for persona, token in tokens.items()
        for n, (query, variables) in enumerate(asked)
    }
    order = list(alone) * 3
    random.Random(SEED).shuffle(order)
    counters = fast_path(fast)
    served_before = counters.served
    answers = await asyncio.gather(
        *(post(fast, tokens[persona], *asked[n]) for persona, n in order)
    )
    assert counters.served == served_before + len(order)
    mixed = [key for key, answer in zip(order, answers, strict=True) if answer != alone[key]]
    assert mixed == []
    # ... and alone, each is the standard executor's answer.
    for (persona, n), (status, text) in alone.items():
        standard_status, standard_text = await post(standard, tokens[persona], *asked[n])
        assert (status, text) == (standard_status, standard_text)


# --- requests the fast path must pass on, answered the same ------------------------------------

DEEP = "{ incidents { edges { node { " + "kpis { incident { " * 4 + "id" + " }" * 11 + " }"
COSTLY = """{ incidents(first: 100) { edges { node { kpis { incident { kpis { incident {
  kpis { value } } } } } } } } }"""
ALIASED = "{ " + " ".join(f"a{n}: viewer {{ subject }}" for n in range(MAX_ALIASES + 1)) + " }"
LONG = "{ kpis { " + "slug " * MAX_TOKENS + "} }"
FORBIDDEN = "not allowed"
PASSED_ON: dict[str, tuple[str, str, Any, str | None, str | None]] = {
    # what: (persona, query, variables, operationName, in the first error's message)
    "first 0": ("exec", "{ incidents(first: 0) { totalCount } }", None, None, "first must be"),
    "first 101": (
        "admin", "{ incidents(first: 101) { edges { cursor } } }", None, None, "first must be"
    ),
    "first -1 in a variable": (
        "admin", "query ($n: Int) { incidents(first: $n) { totalCount } }", {"n": -1}, None,
        "first must be",
    ),
    "a bad after cursor": (
        "responder", '{ incidents(after: "bm90IGEgY3Vyc29y") { edges { cursor } } }', None, None,
        "not a cursor",
    ),
    "a bad after cursor in a variable": (
        "exec", PAGE, {"after": "INC-1000", "first": 3}, None, "not a cursor"
    ),
    "a date-time without an offset": (
        "exec", PAGE, {"from": "2026-01-01T00:00:00"}, None, "Variable '$from'"
    ),
    "a variable of the wrong type": ("admin", PAGE, {"first": "ten"}, None, "Variable '$first'"),
    "an enum variable of an unknown value": (
        "admin", PAGE, {"severity": "P9"}, None, "Variable '$severity'"
    ),
    "a list variable holding a null": (
        "admin",
        'query ($s: [String!]) { incident(id: "INC-FAST-1") { kpis(slugs: $s) { value } } }',
        {"s": ["mttr", None]}, None, "Variable '$s'",
    ),
    "a missing required variable": ("admin", Q3, {}, None, "to be provided"),
    "a null required variable": ("exec", Q3, {"id": None}, None, "not to be None"),
    "variables that are not an object": (
        "admin", Q3, ["INC-1000"], None, "must be an object"
    ),
    "a query over the depth limit": ("admin", DEEP, None, None, "exceeds maximum operation depth"),
    "a query over the alias limit": ("admin", ALIASED, None, None, "aliases found"),
    "a query over the token limit": ("admin", LONG, None, None, "more than 1000 tokens"),
    "a query over the cost limit": ("admin", COSTLY, None, None, "too expensive"),
    "a syntax error": ("admin", "{ kpis { slug }", None, None, "Syntax Error"),
    "an unknown field": ("exec", "{ kpis { slug nickname } }", None, None, "Cannot query field"),
    "an operationName that does not exist": (
        "admin", "query Known { viewer { subject } }", None, "Unknown", "Unknown operation"
    ),
    "an operationName naming a mutation": (
        "exec",
        'query Q { viewer { subject } } mutation M { backfillKpi(slug: "mttr") { skipped } }',
        None, "M", FORBIDDEN,
    ),
    "covered and uncovered fields together": (
        "exec", "{ kpis { slug revisions { version } } }", None, None, None
    ),
    "revisions": (
        "admin", '{ kpi(slug: "mtta") { slug revisions { version note } } }', None, None, None
    ),
    "a series whose to is not after from": (
        "exec",
        """{ kpis { series(bucket: DAY, from: "2026-03-01T00:00:00Z",
          to: "2026-03-01T00:00:00Z") { count } } }""",
        None, None, "to must be after from",
    ),
    "a series of more than 1000 points": (
        "exec",
        """{ kpi(slug: "mttr") { series(bucket: DAY, from: "2020-01-01T00:00:00Z",
          to: "2026-01-01T00:00:00Z") { count } } }""",
        None, None, "at most 1000 points",
    ),
    "a summary whose to is before from": (
        "stakeholder",
        """{ kpis { summary(from: "2026-03-02T00:00:00Z", to: "2026-03-01T00:00:00Z") {
          count } } }""",
        None, None, "to must be after from",
    ),
    "an unknown persona on the kpis": (UNKNOWN_PERSONA, Q1, None, None, FORBIDDEN),
    "an unknown persona on a page": (UNKNOWN_PERSONA, Q2, None, None, FORBIDDEN),
    "an unknown persona on an incident": (
        UNKNOWN_PERSONA, Q3, {"id": "INC-1000"}, None, FORBIDDEN
    ),
    "an unknown persona on a missing incident": (
        UNKNOWN_PERSONA, Q3, {"id": MISSING_ID}, None, FORBIDDEN
    ),
    "an unknown persona on the viewer": (
        UNKNOWN_PERSONA, "{ viewer { subject } }", None, None, FORBIDDEN
    ),
    "a forbidden mutation": (
        "exec", 'mutation { markKpiReviewed(slug: "mttr") { version } }', None, None, FORBIDDEN
    ),
    "an idempotent mutation": (
        "ingest",
        """mutation { upsertIncident(input: {id: "INC-FAST-1", title: "Twin A", severity: P2,
          detectedAt: "2026-05-10T12:00:00Z"}) { id title severity detectedAt } }""",
        None, None, None,
    ),
}  # fmt: skip


async def test_requests_plans_do_not_answer_are_passed_on_with_the_same_answer(
    fast: TestClient, standard: TestClient, world: World
) -> None:
    counters = fast_path(fast)
    wrong: list[str] = []
    for what, (persona, query, variables, operation_name, error) in PASSED_ON.items():
        passed_before = counters.passed_on
        answer, difference = await compare(
            fast, standard, make_token(persona), query, variables, operation_name
        )
        if difference is not None or answer.served or counters.passed_on != passed_before + 1:
            wrong.append(f"{what}: served={answer.served} {difference}")
        messages = [e["message"] for e in answer.body.get("errors") or []]
        meant = error in messages[0] if error and messages else error is None and not messages
        if not meant:
            wrong.append(f"{what}: not the case meant: {messages}")
    assert wrong == [], "\n".join(wrong)


async def test_get_requests_are_served_with_the_answer_to_the_same_post(
    fast: TestClient, standard: TestClient, world: World
) -> None:
    for persona in PERSONAS:
        token = make_token(persona)
        for query, variables in ((Q1, None), (Q2, None), (Q3, {"id": world.ids[0]})):
            answer, difference = await compare(
                fast, standard, token, query, variables, method="GET"
            )
            assert difference is None and answer.served, (persona, query, difference)
            assert (answer.status, answer.fast_text) == await post(fast, token, query, variables)


async def test_get_requests_plans_do_not_answer_are_passed_on_with_the_same_answer(
    fast: TestClient, standard: TestClient, world: World
) -> None:
    wrong = []
    for what, (persona, query, variables, operation_name, _) in PASSED_ON.items():
        answer, difference = await compare(
            fast, standard, make_token(persona), query, variables, operation_name, method="GET"
        )
        if difference is not None or answer.served:
            wrong.append(f"{what}: served={answer.served} {difference}")
    assert wrong == [], "\n".join(wrong)


ODD_QUERY_STRINGS = {
    "the query twice": [("query", "{ viewer { subject } }"), ("query", Q1)],
    "operationName twice": [("query", "query A { viewer { subject } }"), ("operationName", "A"),
                            ("operationName", "A")],
    "variables twice": [("query", Q3), ("variables", '{"id": "INC-1000"}'),
                        ("variables", '{"id": "INC-1000"}')],
    "variables that are not JSON": [("query", Q3), ("variables", "{id: INC-1000}")],
    "empty variables": [("query", Q3), ("variables", "")],
    "variables that are a list": [("query", Q3), ("variables", '["INC-1000"]')],
    "a mutation": [("query", 'mutation { markKpiReviewed(slug: "mttr") { version } }')],
    "an empty query": [("query", "")],
}  # fmt: skip


@pytest.mark.parametrize("params", ODD_QUERY_STRINGS.values(), ids=ODD_QUERY_STRINGS.keys())
async def test_odd_get_query_strings_are_left_to_the_executor_and_answered_alike(
    fast: TestClient, standard: TestClient, params: list[tuple[str, str]]
) -> None:
    counters = fast_path(fast)
    served_before = counters.served
    answers = []
    for client in (fast, standard):
        response = await client.get(
            "/graphql", params=params, headers={"Authorization": f"Bearer {make_token()}"}
        )
        answers.append((response.status, await response.text()))
    assert answers[0] == answers[1]
    assert counters.served == served_before
    assert "errors" in json.loads(answers[0][1]) or answers[0][0] == 200


# Plans once read a root field's arguments before asking whether they cover it: `__schema` and
# `__type` raised KeyError while compiling, and the request was answered 500 INTERNAL.
INTROSPECTION = {
    "__schema": "{ __schema { queryType { name } } }",
    "__type": '{ __type(name: "Incident") { name kind } }',
    "__typename and __schema": "{ __typename __schema { queryType { name } } }",
}


@pytest.mark.parametrize("query", INTROSPECTION.values(), ids=INTROSPECTION.keys())
async def test_introspection_is_passed_on_with_the_same_answer(
    fast: TestClient, standard: TestClient, query: str
) -> None:
    body = await same(fast, standard, "exec", query, served=False)
    assert "errors" not in body


async def test_with_introspection_off_both_paths_refuse_it_alike_and_the_rest_is_served() -> None:
    settings = {
        flag: Settings.from_env({**ENV, "MIM_INTROSPECTION": "0", "MIM_FAST_PATH": flag})
        for flag in ("1", "0")
    }
    async with (
        TestClient(TestServer(create_app(settings["1"]))) as fast,
        TestClient(TestServer(create_app(settings["0"]))) as standard,
    ):
        for query in INTROSPECTION.values():
            body = await same(fast, standard, "admin", query, served=False)
            assert "data" not in body
        await same(fast, standard, "admin", "{ kpis { slugg } }", served=False)  # no suggestion
        await same(fast, standard, "exec", Q1, served=True)
        await same(fast, standard, "exec", "{ __typename }", served=True)


# --- dashboards: summaries and series from the rollups -------------------------------------------

DASHBOARD = """query ($severity: Severity, $from: DateTime, $to: DateTime) {
  kpis { slug name units
    summary(severity: $severity, from: $from, to: $to) {
      count value target { comparison threshold severity persona } meetsTarget asOf }
    all: summary { count value asOf __typename }
  }
}"""
SERIES = """query ($severity: Severity) {
  kpis { slug
    series(bucket: BUCKET, from: "FROM", to: "TO", severity: $severity) {
      start count mean p50 p90 target { threshold persona } meetsTarget asOf }
  }
  one: kpi(slug: "mttr") { weekly: series(bucket: WEEK, from: "FROM", to: "TO") { start p90 } }
}"""


def series_query(bucket: str, start: str, end: str) -> str:
    """The series query for a bucket and bounds written in it (so its cost counts the buckets)."""
    return SERIES.replace("BUCKET", bucket).replace("FROM", start).replace("TO", end)


WINDOWS = [
    (None, None),
    ("2026-03-01T00:00:00Z", "2026-06-01T00:00:00Z"),  # whole months
    ("2026-02-17T09:30:00Z", "2026-05-03T17:45:10+02:00"),  # cut days, weeks and months
    ("2026-05-10T11:00:00Z", "2026-05-10T13:00:00Z"),  # within one day
    ("2026-04-01T00:00:00Z", None),
    (None, "2026-04-15T06:00:00Z"),
]


async def test_dashboards_are_served_with_the_standard_answer_for_every_persona(
    fast: TestClient, standard: TestClient, world: World
) -> None:
    seen_values = 0
    for persona in ALL_PERSONAS:
        for severity in (None, "P1", "P3"):
            for start, end in WINDOWS:
                variables = {"severity": severity, "from": start, "to": end}
                served = persona != UNKNOWN_PERSONA
                body = await same(fast, standard, persona, DASHBOARD, variables, served=served)
                if not served:
                    continue
                kpis = body["data"]["kpis"]
                slugs = {k["slug"] for k in kpis}
                assert slugs.isdisjoint(INTERNAL_SLUGS) or persona not in EXEC_ONLY
                seen_values += sum(k["summary"]["value"] is not None for k in kpis)
    assert seen_values > 50  # the windows hold data: the comparison is not of empty answers


async def test_series_are_served_with_the_standard_answer_for_every_persona(
    fast: TestClient, standard: TestClient, world: World
) -> None:
    counts = 0
    windows = {
        "DAY": (WINDOWS[3], ("2026-05-01T00:00:00Z", "2026-05-20T06:00:00Z")),
        "WEEK": (WINDOWS[1], WINDOWS[2]),
        "MONTH": (WINDOWS[1], WINDOWS[2]),
    }
    for persona in PERSONAS:
        for bucket, bounds in windows.items():
            for start, end in bounds:
                query = series_query(bucket, start, end)
                body = await same(fast, standard, persona, query, {"severity": None}, served=True)
                counts += sum(p["count"] for k in body["data"]["kpis"] for p in k["series"])
        query = series_query("WEEK", *WINDOWS[2])
        await same(fast, standard, persona, query, {"severity": "P2"}, served=True)
    assert counts > 100


# --- statements per request ----------------------------------------------------------------------


@pytest.fixture
async def hundred_incidents() -> None:
    await demo.load(count=120, seed=7, now=NOW)


async def statements_for(
    fast: TestClient, sql_statements: StatementCounter, query: str, variables: Any = None
) -> list[str]:
    """Return the statements one request runs, asserting that the fast path served it."""
    counters = fast_path(fast)
    served_before = counters.served
    sql_statements.statements.clear()
    status, text = await post(fast, make_token("admin"), query, variables)
    assert status == 200 and "errors" not in json.loads(text), text
    assert counters.served == served_before + 1, query
    return list(sql_statements.statements)


async def test_the_kpi_list_costs_one_statement_on_the_fast_path(
    fast: TestClient, hundred_incidents: None, sql_statements: StatementCounter
) -> None:
    statements = await statements_for(fast, sql_statements, Q1)
    assert len(statements) == 1, statements


async def test_the_dashboard_costs_two_statements_whatever_the_history(
    fast: TestClient, hundred_incidents: None, sql_statements: StatementCounter
) -> None:
    query = "{ kpis { slug summary(severity: P1) { count value meetsTarget asOf } } }"
    statements = await statements_for(fast, sql_statements, query)
    # The KPI list, then every summary from the rollups in one statement: no raw row is read.
    assert len(statements) == 2, statements
    assert "kpi_rollup" in statements[1] and "kpi_observation" not in statements[1]


async def test_series_for_every_kpi_cost_two_statements_once_their_groups_are_summarized(
    fast: TestClient, hundred_incidents: None, sql_statements: StatementCounter
) -> None:
    query = """{ kpis { slug series(bucket: WEEK, from: "2026-03-02T00:00:00Z",
      to: "2026-06-01T00:00:00Z") { count mean p50 p90 } } }"""
    first = await statements_for(fast, sql_statements, query)
    # The KPI list, the rollups, and the raw values of the groups not yet summarized.
    assert len(first) == 3 and "kpi_observation" in first[2], first
    again = await statements_for(fast, sql_statements, query)
    assert len(again) == 2 and "kpi_observation" not in again[1], again


async def test_a_page_costs_two_statements_on_the_fast_path_whatever_its_size(
    fast: TestClient, hundred_incidents: None, sql_statements: StatementCounter
) -> None:
    small = await statements_for(fast, sql_statements, Q2.replace("first: 50", "first: 5"))
    large = await statements_for(fast, sql_statements, Q2.replace("first: 50", "first: 100"))
    # The page, then the observations of all its incidents with their definitions joined.
    assert len(small) == len(large) == 2, large


async def test_one_incident_and_its_observations_cost_one_statement_on_the_fast_path(
    fast: TestClient, hundred_incidents: None, sql_statements: StatementCounter
) -> None:
    for incident in ("INC-1000", "INC-1119", MISSING_ID):
        statements = await statements_for(fast, sql_statements, Q3, {"id": incident})
        assert len(statements) == 1, statements


async def test_one_incident_with_two_lists_costs_a_statement_per_list_more(
    fast: TestClient, hundred_incidents: None, sql_statements: StatementCounter
) -> None:
    query = "query($id: ID!) { incident(id: $id) { id kpis { value } alerts { id } } }"
    statements = await statements_for(fast, sql_statements, query, {"id": "INC-1000"})
    assert len(statements) == 3, statements
