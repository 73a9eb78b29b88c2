"""Compiled plans: the hot read shapes answered straight from rows.

The standard executor resolves a response field by field, which costs more Python per request
than a whole scorecard's SQL. A plan is compiled once per validated (document, operation): it
knows, for every response key, which column of which row it reads and how the scalar
serializes, and it fetches one batch of rows per level through the same domain reads the
resolvers use (so the visibility policy applies in the same SQL). Each object shape becomes one
generated function that builds the object from its row (see Shape.seal). Whatever a plan does not
cover raises NotCovered at compile time; whatever a request needs that a plan cannot answer
exactly as the standard executor would (an error of any kind) raises Fallback at run time. In
both cases the standard executor answers; tests/schema/test_fast_path.py holds the two to the same
responses.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from graphql import (
    BooleanValueNode,
    DocumentNode,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLEnumType,
    GraphQLField,
    GraphQLFloat,
    GraphQLObjectType,
    GraphQLSchema,
    InlineFragmentNode,
    OperationDefinitionNode,
    OperationType,
    SelectionSetNode,
    Visitor,
    get_named_type,
    visit,
)
from graphql.error import GraphQLError
from graphql.execution.values import VariableValues, get_argument_values, get_variable_values
from graphql.utilities import get_operation_ast

from registry import incidents, kpis, observations, policy, targets, trends
from registry.model import KpiRef, Persona, Severity, Target, Viewer, Visibility
from registry.rows import target_list
from schema.fields import FromRow, declaration_of

Row = Mapping[str, Any]
Getter = Callable[[Any, "Run"], Any]


class NotCovered(Exception):
    """The document asks for something plans do not cover."""


class Fallback(Exception):
    """This request must be answered by the standard executor."""


@dataclass(slots=True)
class Run:
    """One request's state: who asks, its variables, and the rows fetched so far."""

    viewer: Viewer
    variables: VariableValues
    children: dict[int, dict[int, list[Row]]] = field(default_factory=dict)
    incidents: dict[int, Row] = field(default_factory=dict)
    # Summaries and series by field (see _Compiler.aggregate), then by KPI slug.
    aggregates: dict[int, dict[str, Any]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Column:
    """A field read straight from a column of the row (`float`: as the Float scalar writes)."""

    name: str
    float: bool = False


@dataclass(frozen=True, slots=True)
class Constant:
    """A field with the same value in every object (`__typename`)."""

    value: Any


@dataclass(frozen=True, slots=True)
class Inline:
    """An object field built from the same row (an observation's `kpi`)."""

    shape: Shape


Field = Getter | Column | Constant | Inline


class Shape:
    """How to build one object of the response from its row.

    Once its fields are known, `seal()` turns them into one generated function that builds the
    whole object (inline objects included) with no call per field: the plan's hot loop.
    """

    def __init__(self, prefetches: Sequence[Callable[[Sequence[Any], Run], Awaitable[None]]] = ()):
        self.fields: list[tuple[str, Field]] = []
        # Fetches that must run, once per level, before objects of this shape are built.
        self.prefetches = list(prefetches)
        self.batches: list[Batch] = []  # the nested lists among them
        self.build: Callable[[Any, Run], dict[str, Any]] = _unsealed

    def seal(self) -> Shape:
        """Generate the builder; return the shape."""
        self.build = _builder(self.fields)
        return self

    async def prefetch(self, rows: Sequence[Any], run: Run) -> None:
        """Fetch what the objects for these rows need, one statement per nested list."""
        for fetch in self.prefetches:
            await fetch(rows, run)


def _unsealed(row: Any, run: Run) -> dict[str, Any]:
    raise RuntimeError("a shape was used before it was sealed")


def _builder(fields: Sequence[tuple[str, Field]]) -> Callable[[Any, Run], dict[str, Any]]:
    """Return `build(row, run)` for these fields, as generated source.

    Only trusted text reaches the source: response keys and column names are written as Python
    string literals (repr), and every value or function is passed in the namespace by name.
    """
    namespace: dict[str, Any] = {}
    source = f"def build(row, run):\n    return {_object_source(fields, namespace)}\n"
    exec(compile(source, "<plan>", "exec"), namespace)
    built: Callable[[Any, Run], dict[str, Any]] = namespace["build"]
    return built


def _object_source(fields: Sequence[tuple[str, Field]], namespace: dict[str, Any]) -> str:
    items = (f"{key!r}: {_value_source(get, namespace)}" for key, get in fields)
    return "{" + ", ".join(items) + "}"


def _value_source(get: Field, namespace: dict[str, Any]) -> str:
    if isinstance(get, Column):
        read = f"row[{get.name!r}]"
        return f"float({read})" if get.float else read
    if isinstance(get, Inline):
        return _object_source(get.shape.fields, namespace)
    name = f"_{len(namespace)}"
    if isinstance(get, Constant):
        namespace[name] = get.value
        return name
    namespace[name] = get
    return f"{name}(row, run)"


@dataclass(frozen=True, slots=True)
class Plan:
    """A compiled operation: run it for a viewer and variables to get the response's data."""

    schema: GraphQLSchema
    operation: OperationDefinitionNode
    roots: list[tuple[str, Callable[[Run], Awaitable[Any]]]]

    async def run(self, viewer: Viewer, variables: dict[str, Any]) -> dict[str, Any]:
        """Return the `data` of the response, or raise Fallback."""
        values = get_variable_values(
            self.schema, self.operation.variable_definitions or (), variables
        )
        if isinstance(values, list):
            raise Fallback("variables")
        run = Run(viewer=viewer, variables=values)
        return {key: await resolve(run) for key, resolve in self.roots}


def compile_plan(schema: GraphQLSchema, document: DocumentNode, operation_name: str | None) -> Plan:
    """Return the plan of a validated document's operation, or raise NotCovered."""
    operation = get_operation_ast(document, operation_name)
    if operation is None or operation.operation is not OperationType.QUERY:
        raise NotCovered("not a query")
    fragments = {
        d.name.value: d for d in document.definitions if isinstance(d, FragmentDefinitionNode)
    }
    compiler = _Compiler(schema, fragments)
    query_type = schema.query_type
    assert query_type is not None
    roots = []
    for key, nodes in compiler.collect(query_type, [operation.selection_set]).items():
        roots.append((key, compiler.root(query_type, nodes)))
    return Plan(schema=schema, operation=operation, roots=roots)


# --- scalars, serialized as the schema's scalars and enums serialize them -------------------


# Date-times stay datetime objects: the response encoder writes them as the DateTime scalar
# does (ISO 8601; the database returns them in UTC).


def _name(member: Any) -> str | None:
    return None if member is None else str(member.name)


# --- field getters ---------------------------------------------------------------------------


def _row_getters(type_: GraphQLObjectType) -> dict[str, Field]:
    """Return the getters of every field a type declares on its row (from plain rows)."""
    return {
        name: _row_getter(field, declaration, "")
        for name, field in type_.fields.items()
        if (declaration := declaration_of(field)) is not None
    }


def _is_enum_class(value: Any) -> bool:
    return isinstance(value, type) and issubclass(value, enum.Enum)


def _row_getter(field: GraphQLField, declaration: FromRow, prefix: str) -> Field:
    """Return the getter of a field declared on its type's row (schema/fields.py)."""
    named = get_named_type(field.type)
    convert, (first, *more) = declaration.value, declaration.columns
    column = prefix + first
    # The common shapes become a plain column read or a dict lookup in the generated builder.
    if convert is None or (convert is float and named is GraphQLFloat):
        return Column(column, float=named is GraphQLFloat)
    if isinstance(named, GraphQLEnumType) and not more and _is_enum_class(convert):
        names = {member.value: member.name for member in cast(type[enum.Enum], convert)}
        return lambda row, run: None if row[column] is None else names[row[column]]
    read = declaration.read
    if isinstance(named, GraphQLEnumType):
        return lambda row, run: _name(read(row, prefix))
    return lambda row, run: read(row, prefix)


TARGET_SCALARS: dict[str, Getter] = {
    "severity": lambda target, run: _name(target.severity),
    "persona": lambda target, run: _name(target.persona),
    "comparison": lambda target, run: target.comparison.name,
    "threshold": lambda target, run: float(target.threshold),
}

# A KPI's summary (registry.model.Summary) and a series' points (registry.trends.Point); their
# `target` is built by a nested shape.
SUMMARY_FIELDS: dict[str, Getter] = {
    "count": lambda summary, run: summary.count,
    "value": lambda summary, run: summary.value,
    "meetsTarget": lambda summary, run: summary.meets_target,
    "asOf": lambda summary, run: summary.as_of,
}
POINT_FIELDS: dict[str, Getter] = {
    "start": lambda point, run: point.start,
    "count": lambda point, run: point.count,
    "mean": lambda point, run: point.mean,
    "p50": lambda point, run: point.p50,
    "p90": lambda point, run: point.p90,
    "meetsTarget": lambda point, run: point.meets_target,
    "asOf": lambda point, run: point.as_of,
}

CHILD_KINDS = {
    "alerts": "alerts",
    "timeline": "timeline",
    "milestones": "milestones",
    "surveyResponses": "survey_responses",
}

Arguments = Callable[[Run], dict[str, Any]]


class _Compiler:
    def __init__(self, schema: GraphQLSchema, fragments: dict[str, FragmentDefinitionNode]):
        self.schema = schema
        self.fragments = fragments
        self.slots: list[str] = []  # the summary and series fields, in compiling order

    # --- field collection, as the executor does it (skip/include with literals only) -------

    def collect(
        self, parent: GraphQLObjectType, selection_sets: Sequence[SelectionSetNode | None]
    ) -> dict[str, list[FieldNode]]:
        """Return the fields selected on `parent`, by response key, in response order."""
        fields: dict[str, list[FieldNode]] = {}
        visited: set[str] = set()

        def walk(selection_set: SelectionSetNode) -> None:
            for selection in selection_set.selections:
                if not _included(selection):
                    continue
                if isinstance(selection, FieldNode):
                    key = selection.alias.value if selection.alias else selection.name.value
                    fields.setdefault(key, []).append(selection)
                elif isinstance(selection, InlineFragmentNode):
                    if _applies(selection.type_condition, parent):
                        walk(selection.selection_set)
                elif isinstance(selection, FragmentSpreadNode):
                    name = selection.name.value
                    if name in visited:
                        continue
                    visited.add(name)
                    fragment = self.fragments[name]
                    if _applies(fragment.type_condition, parent):
                        walk(fragment.selection_set)

        for selection_set in selection_sets:
            if selection_set is not None:
                walk(selection_set)
        return fields

    def subfields(
        self, parent_name: str, nodes: Sequence[FieldNode]
    ) -> tuple[GraphQLObjectType, dict[str, list[FieldNode]]]:
        """Return the object type of a field and the fields selected on it."""
        type_ = self.schema.get_type(parent_name)
        assert isinstance(type_, GraphQLObjectType)
        return type_, self.collect(type_, [n.selection_set for n in nodes])

    def arguments(self, parent: GraphQLObjectType, nodes: Sequence[FieldNode]) -> Arguments:
        """Return a function of the request giving the field's coerced arguments."""
        node = nodes[0]  # validation guarantees merged fields have the same arguments
        definition: GraphQLField = parent.fields[node.name.value]
        if not _uses_variables(node):
            try:
                fixed = get_argument_values(definition, node, None)
            except GraphQLError:
                raise NotCovered("arguments") from None
            return lambda run: fixed

        def coerce(run: Run) -> dict[str, Any]:
            try:
                return get_argument_values(definition, node, run.variables)
            except GraphQLError:
                raise Fallback("arguments") from None

        return coerce

    # --- the root ---------------------------------------------------------------------------

    def root(
        self, query_type: GraphQLObjectType, nodes: list[FieldNode]
    ) -> Callable[[Run], Awaitable[Any]]:
        name = nodes[0].name.value
        if name == "__typename":
            return _constant(query_type.name)
        if name.startswith("__"):
            raise NotCovered("introspection")
        args = self.arguments(query_type, nodes)
        if name == "kpis":
            return self._kpis(nodes, args)
        if name == "kpi":
            if any(a.name.value == "asOf" for node in nodes for a in node.arguments or ()):
                raise NotCovered("kpi(asOf:)")  # rebuilt from revisions by the executor
            return self._kpi(nodes, args)
        if name == "incidents":
            return self._incidents(nodes, args)
        if name == "incident":
            return self._incident(nodes, args)
        if name == "viewer":
            return self._viewer(nodes)
        raise NotCovered(name)

    def _kpis(self, nodes: list[FieldNode], args: Arguments) -> Callable[[Run], Awaitable[Any]]:
        shape, columns = self.definition("", nodes)

        async def resolve(run: Run) -> Any:
            given = args(run)
            visibility = given.get("visibility")
            rows = await kpis.definition_rows(
                viewer=run.viewer,
                columns=columns,
                visibility=None if visibility is None else Visibility(visibility),
                include_retired=bool(given.get("includeRetired")),
            )
            await shape.prefetch(rows, run)
            return [shape.build(row, run) for row in rows]

        return resolve

    def _kpi(self, nodes: list[FieldNode], args: Arguments) -> Callable[[Run], Awaitable[Any]]:
        shape, columns = self.definition("", nodes)

        async def resolve(run: Run) -> Any:
            slug = args(run)["slug"]
            rows = await kpis.definition_rows(viewer=run.viewer, columns=columns, slugs=[slug])
            found = [row for row in rows if row["slug"] == slug]
            if not found:
                return None
            await shape.prefetch(found, run)
            return shape.build(found[0], run)

        return resolve

    def _incident(self, nodes: list[FieldNode], args: Arguments) -> Callable[[Run], Awaitable[Any]]:
        shape = self.incident(nodes)
        if len(shape.batches) == 1 and shape.batches[0].with_parent is not None:
            return _incident_with_its_list(shape, shape.batches[0], args)

        async def resolve(run: Run) -> Any:
            row = await incidents.key_row(viewer=run.viewer, key=str(args(run)["id"]))
            if row is None:
                return None
            await shape.prefetch([row], run)
            return shape.build(row, run)

        return resolve

    def _incidents(
        self, nodes: list[FieldNode], args: Arguments
    ) -> Callable[[Run], Awaitable[Any]]:
        connection, fields = self.subfields("IncidentConnection", nodes)
        plan: list[tuple[str, str, Any]] = []  # (key, field, compiled part)
        node_shapes: list[Shape] = []
        wanted: set[str] = set()  # the PageInfo fields asked for
        for key, subnodes in fields.items():
            name = subnodes[0].name.value
            if name == "edges":
                edge = self.edges(subnodes)
                node_shapes.extend(edge.node_shapes)
                plan.append((key, name, edge.shape))
            elif name == "pageInfo":
                page_info, asked = self.page_info(subnodes)
                plan.append((key, name, page_info))
                wanted.update(asked)
            elif name in ("totalCount", "__typename"):
                plan.append((key, name, None))
            else:
                raise NotCovered(name)

        async def resolve(run: Run) -> Any:
            given = args(run)
            where = incidents.IncidentFilter(
                severity=None if given.get("severity") is None else Severity(given["severity"]),
                detected_from=given.get("detectedFrom"),
                detected_to=given.get("detectedTo"),
            )
            window = incidents.Window(
                first=given.get("first"),
                after=given.get("after"),
                last=given.get("last"),
                before=given.get("before"),
            )
            rows, more = await incidents.page_rows(viewer=run.viewer, window=window, where=where)
            # The cursor's side of the page costs a statement: read only when asked for.
            behind = "hasNextPage" if window.backward else "hasPreviousPage"
            beyond = behind in wanted and await incidents.behind_cursor(
                viewer=run.viewer, window=window, where=where
            )
            page = (rows, beyond, more) if window.backward else (rows, more, beyond)
            for shape in node_shapes:
                await shape.prefetch(rows, run)
            result: dict[str, Any] = {}
            for key, name, part in plan:
                if name == "edges":
                    result[key] = [part.build(row, run) for row in rows]
                elif name == "pageInfo":
                    result[key] = part.build(page, run)
                elif name == "totalCount":
                    result[key] = await incidents.count(viewer=run.viewer, where=where)
                else:
                    result[key] = connection.name
            return result

        return resolve

    def _viewer(self, nodes: list[FieldNode]) -> Callable[[Run], Awaitable[Any]]:
        type_, fields = self.subfields("Viewer", nodes)
        getters: dict[str, Getter] = {
            "subject": lambda viewer, run: viewer.subject,
            "personas": lambda viewer, run: [
                p.name for p in sorted(viewer.personas, key=list(Persona).index)
            ],
            "visibilities": lambda viewer, run: [
                v.name for v in sorted(policy.visibilities(viewer), key=list(Visibility).index)
            ],
        }
        shape = self.scalars(type_, fields, getters)

        async def resolve(run: Run) -> Any:
            policy.require(run.viewer, policy.Action.READ)
            return shape.build(run.viewer, run)

        return resolve

    # --- object types -----------------------------------------------------------------------

    def scalars(
        self,
        type_: GraphQLObjectType,
        fields: dict[str, list[FieldNode]],
        getters: Mapping[str, Field],
    ) -> Shape:
        """Return the shape of a type whose selected fields are all plain getters."""
        shape = Shape()
        for key, subnodes in fields.items():
            name = subnodes[0].name.value
            if name == "__typename":
                shape.fields.append((key, _typename(type_.name)))
            elif name in getters:
                shape.fields.append((key, getters[name]))
            else:
                raise NotCovered(name)
        return shape.seal()

    def definition(self, prefix: str, nodes: Sequence[FieldNode]) -> tuple[Shape, list[str]]:
        """Return the shape of KpiDefinition objects and the columns it reads."""
        type_, fields = self.subfields("KpiDefinition", nodes)
        shape = Shape()
        columns: dict[str, None] = {"slug": None}
        for key, subnodes in fields.items():
            name = subnodes[0].name.value
            if name == "__typename":
                shape.fields.append((key, _typename(type_.name)))
            elif (declaration := declaration_of(type_.fields[name])) is not None:
                columns.update(dict.fromkeys(declaration.columns))
                shape.fields.append((key, _row_getter(type_.fields[name], declaration, prefix)))
            elif name == "targets":
                target_type, target_fields = self.subfields("KpiTarget", subnodes)
                target = self.scalars(target_type, target_fields, TARGET_SCALARS)
                columns["targets"] = None
                shape.fields.append((key, _targets(prefix + "targets", target)))
            elif name in ("summary", "series") and not prefix:
                columns.update(dict.fromkeys(("targets", "created_at")))
                fetch, get = self.aggregate(type_, name, subnodes)
                shape.prefetches.append(fetch)
                shape.fields.append((key, get))
            else:
                raise NotCovered(name)  # revisions, recompute: the standard executor
        return shape.seal(), list(columns)

    def aggregate(
        self, parent: GraphQLObjectType, name: str, nodes: Sequence[FieldNode]
    ) -> tuple[Callable[[Sequence[Row], Run], Awaitable[None]], Getter]:
        """Return the fetch (once for every KPI of the level) and the getter of a KPI's
        `summary` or `series`, read through the same domain calls as the resolvers."""
        args = self.arguments(parent, nodes)
        slot = len(self.slots)
        self.slots.append(name)
        type_, fields = self.subfields("KpiSummary" if name == "summary" else "KpiPoint", nodes)
        getters = SUMMARY_FIELDS if name == "summary" else POINT_FIELDS
        item = Shape()
        for key, subnodes in fields.items():
            field_name = subnodes[0].name.value
            if field_name == "__typename":
                item.fields.append((key, _typename(type_.name)))
            elif field_name == "target":
                target_type, target_fields = self.subfields("KpiTarget", subnodes)
                target = self.scalars(target_type, target_fields, TARGET_SCALARS)
                item.fields.append((key, _target(target)))
            elif field_name in getters:
                item.fields.append((key, getters[field_name]))
            else:
                raise NotCovered(field_name)
        item.seal()

        async def fetch(rows: Sequence[Row], run: Run) -> None:
            given = args(run)
            severity = given.get("severity")
            severity = None if severity is None else Severity(severity)
            scopes = [
                KpiRef(row["slug"], target_list(row["targets"]), row["created_at"]) for row in rows
            ]
            found: Sequence[Any]
            if name == "summary":
                window = kpis.SummaryWindow.checked(given.get("from"), given.get("to"), severity)
                found = await kpis.summaries(
                    viewer=run.viewer, keys=[(scope, window) for scope in scopes]
                )
            else:
                bucket = trends.Bucket(given["bucket"])
                points = trends.Window.checked(bucket, given["from"], given["to"], severity)
                found = await trends.series(
                    viewer=run.viewer, keys=[(scope, points) for scope in scopes]
                )
            run.aggregates[slot] = {
                scope.slug: value for scope, value in zip(scopes, found, strict=True)
            }

        if name == "summary":
            return fetch, lambda row, run: item.build(run.aggregates[slot][row["slug"]], run)
        return fetch, lambda row, run: [
            item.build(point, run) for point in run.aggregates[slot][row["slug"]]
        ]

    def incident(self, nodes: Sequence[FieldNode]) -> Shape:
        """Return the shape of Incident objects (rows of every incident column)."""
        type_, fields = self.subfields("Incident", nodes)
        shape = Shape(prefetches=[_remember_incidents])
        for key, subnodes in fields.items():
            name = subnodes[0].name.value
            if name == "__typename":
                shape.fields.append((key, _typename(type_.name)))
            elif (declaration := declaration_of(type_.fields[name])) is not None:
                shape.fields.append((key, _row_getter(type_.fields[name], declaration, "")))
            elif name == "kpis":
                batch = self.observations(subnodes, self.arguments(type_, subnodes))
                shape.batches.append(batch)
                shape.prefetches.append(batch.fetch)
                shape.fields.append((key, batch.items))
            elif name in CHILD_KINDS:
                child_type, child_fields = self.subfields(
                    str(_named_type(type_.fields[name]).name), subnodes
                )
                item = self.scalars(child_type, child_fields, _row_getters(child_type))
                batch = Batch(load=_child_loader(CHILD_KINDS[name]), shape=item)
                shape.batches.append(batch)
                shape.prefetches.append(batch.fetch)
                shape.fields.append((key, batch.items))
            else:
                raise NotCovered(name)
        return shape.seal()

    def observations(self, nodes: Sequence[FieldNode], args: Arguments) -> Batch:
        """Return the batch fetching an incident's visible observations, and their shape."""
        type_, fields = self.subfields("KpiObservation", nodes)
        shape = Shape()
        columns: dict[str, None] = {}
        for key, subnodes in fields.items():
            name = subnodes[0].name.value
            if name == "__typename":
                shape.fields.append((key, _typename(type_.name)))
            elif (declaration := declaration_of(type_.fields[name])) is not None:
                shape.fields.append((key, _row_getter(type_.fields[name], declaration, "")))
            elif name == "kpi":
                definition, needs = self.definition("kpi_", subnodes)
                columns.update(dict.fromkeys(needs))
                shape.fields.append((key, Inline(definition)))
            elif name == "incident":
                incident = self.incident(subnodes)
                shape.prefetches.append(_parents_prefetch(incident))
                shape.fields.append((key, _parent(incident)))
            elif name == "meetsTarget":
                columns["targets"] = None
                shape.fields.append((key, _meets_target))
            else:
                raise NotCovered(name)
        definition_columns = list(columns)

        async def load(pks: Sequence[int], run: Run) -> Sequence[Row]:
            slugs = args(run).get("slugs")
            return await observations.rows_for_incidents(
                viewer=run.viewer, pks=pks, slugs=slugs, definition_columns=definition_columns
            )

        async def with_parent(key: str, run: Run) -> tuple[Row | None, list[Row]]:
            return await observations.incident_with_observations(
                viewer=run.viewer,
                key=key,
                slugs=args(run).get("slugs"),
                definition_columns=definition_columns,
            )

        return Batch(load=load, shape=shape.seal(), with_parent=with_parent)

    def edges(self, nodes: Sequence[FieldNode]) -> _Edges:
        type_, fields = self.subfields("IncidentEdge", nodes)
        shape = Shape()
        node_shapes = []
        for key, subnodes in fields.items():
            name = subnodes[0].name.value
            if name == "__typename":
                shape.fields.append((key, _typename(type_.name)))
            elif name == "cursor":
                shape.fields.append((key, _cursor))
            elif name == "node":
                node = self.incident(subnodes)
                node_shapes.append(node)
                shape.fields.append((key, node.build))
            else:
                raise NotCovered(name)
        return _Edges(shape=shape.seal(), node_shapes=node_shapes)

    def page_info(self, nodes: Sequence[FieldNode]) -> tuple[Shape, set[str]]:
        """Return the shape of PageInfo, built from (rows, hasNextPage, hasPreviousPage), and
        the fields selected on it."""
        type_, fields = self.subfields("PageInfo", nodes)
        getters: dict[str, Getter] = {
            "hasNextPage": lambda page, run: page[1],
            "hasPreviousPage": lambda page, run: page[2],
            "startCursor": lambda page, run: _cursor(page[0][0], run) if page[0] else None,
            "endCursor": lambda page, run: _cursor(page[0][-1], run) if page[0] else None,
        }
        asked = {subnodes[0].name.value for subnodes in fields.values()}
        return self.scalars(type_, fields, getters), asked


@dataclass(frozen=True, slots=True)
class _Edges:
    shape: Shape
    node_shapes: list[Shape]


@dataclass(frozen=True, slots=True, eq=False)
class Batch:
    """A nested list under incidents: one statement for every incident of a level."""

    load: Callable[[Sequence[int], Run], Awaitable[Sequence[Row]]]
    shape: Shape
    # Fetches one incident by key with its items, in one statement, when the list allows it.
    with_parent: Callable[[str, Run], Awaitable[tuple[Row | None, list[Row]]]] | None = None

    async def fetch(self, parents: Sequence[Row], run: Run) -> None:
        """Fetch the items of every parent, grouped by parent, then what the items need."""
        pks = list(dict.fromkeys(p["id"] for p in parents))
        grouped: dict[int, list[Row]] = {pk: [] for pk in pks}
        rows = await self.load(pks, run) if pks else []
        for row in rows:
            grouped[row["incident"]].append(row)
        run.children[id(self)] = grouped
        await self.shape.prefetch(rows, run)

    def items(self, parent: Row, run: Run) -> list[dict[str, Any]]:
        """Return the response objects of one parent's items."""
        build = self.shape.build
        return [build(row, run) for row in run.children[id(self)][parent["id"]]]


def _incident_with_its_list(
    shape: Shape, batch: Batch, args: Arguments
) -> Callable[[Run], Awaitable[Any]]:
    """Return the resolver of `incident(id)` whose one nested list is read with the incident."""
    assert batch.with_parent is not None
    with_parent = batch.with_parent

    async def resolve(run: Run) -> Any:
        row, items = await with_parent(str(args(run)["id"]), run)
        if row is None:
            return None
        # What shape.prefetch([row]) does, with the items already at hand.
        await _remember_incidents([row], run)
        run.children[id(batch)] = {row["id"]: items}
        await batch.shape.prefetch(items, run)
        return shape.build(row, run)

    return resolve


def _child_loader(kind: str) -> Callable[[Sequence[int], Run], Awaitable[Sequence[Row]]]:
    async def load(pks: Sequence[int], run: Run) -> Sequence[Row]:
        return await incidents.child_rows(viewer=run.viewer, kind=kind, pks=pks)

    return load


async def _remember_incidents(rows: Sequence[Row], run: Run) -> None:
    for row in rows:
        run.incidents[row["id"]] = row


def _parents_prefetch(incident: Shape) -> Callable[[Sequence[Row], Run], Awaitable[None]]:
    async def prefetch(rows: Sequence[Row], run: Run) -> None:
        parents = {row["incident"]: run.incidents[row["incident"]] for row in rows}
        await incident.prefetch(list(parents.values()), run)

    return prefetch


def _parent(incident: Shape) -> Getter:
    return lambda row, run: incident.build(run.incidents[row["incident"]], run)


def _meets_target(row: Row, run: Run) -> bool | None:
    target = targets.applicable(
        target_list(row["kpi_targets"]),
        severity=Severity(run.incidents[row["incident"]]["severity"]),
        personas=run.viewer.personas,
    )
    return targets.meets(target, row["value"])


def _targets(column: str, shape: Shape) -> Getter:
    def get(row: Row, run: Run) -> list[dict[str, Any]]:
        found: tuple[Target, ...] = target_list(row[column])
        return [shape.build(target, run) for target in found]

    return get


def _target(shape: Shape) -> Getter:
    """The getter of a summary's or a point's `target`, built by `shape` (null when none)."""
    return lambda item, run: None if item.target is None else shape.build(item.target, run)


def _cursor(row: Row, run: Run) -> str:
    return incidents.cursor_for(row["detected_at"], row["id"])


def _typename(name: str) -> Constant:
    return Constant(name)


def _constant(value: Any) -> Callable[[Run], Awaitable[Any]]:
    async def resolve(run: Run) -> Any:
        return value

    return resolve


def _named_type(definition: GraphQLField) -> Any:
    type_: Any = definition.type
    while hasattr(type_, "of_type"):
        type_ = type_.of_type
    return type_


def _included(selection: Any) -> bool:
    included = True
    for directive in selection.directives or ():
        name = directive.name.value
        if name not in ("skip", "include"):
            raise NotCovered(f"@{name}")
        (argument,) = directive.arguments
        if not isinstance(argument.value, BooleanValueNode):
            raise NotCovered(f"@{name} with a variable")
        if argument.value.value == (name == "skip"):
            included = False
    return included


def _applies(condition: Any, parent: GraphQLObjectType) -> bool:
    return condition is None or condition.name.value == parent.name


class _VariableFinder(Visitor):
    def __init__(self) -> None:
        super().__init__()
        self.found = False

    def enter_variable(self, *_: Any) -> None:
        self.found = True


def _uses_variables(node: FieldNode) -> bool:
    finder = _VariableFinder()
    for argument in node.arguments or ():
        visit(argument, finder)
    return finder.found
