"""Every type, field, argument, input field and enum value of the service's schema is described,
so a frontend developer can act on the schema alone; DateTime names the RFC it follows."""

from __future__ import annotations

from collections.abc import Iterator

from graphql import (
    GraphQLArgument,
    GraphQLEnumType,
    GraphQLField,
    GraphQLInputObjectType,
    GraphQLInterfaceType,
    GraphQLObjectType,
    GraphQLScalarType,
    GraphQLSchema,
    GraphQLString,
    specified_scalar_types,
)

from schema import schema

RFC3339 = "https://datatracker.ietf.org/doc/html/rfc3339"

# (kind, coordinate, description) of one element of a schema.
Element = tuple[str, str, str | None]


def elements(built: GraphQLSchema) -> Iterator[Element]:
    """Yield every describable element of the service's own types (not the introspection
    types, not the built-in scalars), named by its schema coordinate."""
    for name, named in sorted(built.type_map.items()):
        if name.startswith("__") or name in specified_scalar_types:
            continue
        yield "type", name, named.description
        if isinstance(named, GraphQLObjectType | GraphQLInterfaceType):
            for field_name, field in named.fields.items():
                yield "field", f"{name}.{field_name}", field.description
                for arg_name, argument in field.args.items():
                    yield "argument", f"{name}.{field_name}({arg_name}:)", argument.description
        elif isinstance(named, GraphQLInputObjectType):
            for field_name, input_field in named.fields.items():
                yield "input field", f"{name}.{field_name}", input_field.description
        elif isinstance(named, GraphQLEnumType):
            for value_name, value in named.values.items():
                yield "enum value", f"{name}.{value_name}", value.description


def undocumented(built: GraphQLSchema) -> list[str]:
    """Return the coordinates of the elements without a description (or with a blank one)."""
    return [coordinate for _, coordinate, text in elements(built) if not (text or "").strip()]


def test_every_type_field_argument_and_enum_value_is_described() -> None:
    missing = undocumented(schema._schema)
    assert not missing, f"{len(missing)} without a description: " + ", ".join(missing)


def test_the_walk_reaches_every_kind_of_element() -> None:
    # A walk that missed a kind of element would pass the test above vacuously.
    found = {(kind, coordinate) for kind, coordinate, _ in elements(schema._schema)}
    assert {
        ("type", "DateTime"),
        ("type", "Mutation"),
        ("field", "KpiDefinition.slug"),
        ("field", "Mutation.recordObservations"),
        ("argument", "KpiDefinition.series(from:)"),
        ("input field", "RecordObservationInput.confidence"),
        ("enum value", "Visibility.EXEC"),
    } <= found
    assert not any(coordinate.startswith("__") for _, coordinate in found)
    assert ("type", "String") not in found


def test_an_undescribed_element_is_named() -> None:
    answer = GraphQLEnumType("Answer", {"YES": 1})
    ask = GraphQLField(answer, args={"question": GraphQLArgument(GraphQLString)})
    bare = GraphQLSchema(query=GraphQLObjectType("Query", {"ask": ask}, description="Reads."))
    assert undocumented(bare) == ["Answer", "Answer.YES", "Query.ask", "Query.ask(question:)"]


def test_date_time_is_specified_by_rfc_3339() -> None:
    date_time = schema._schema.get_type("DateTime")
    assert isinstance(date_time, GraphQLScalarType)
    assert date_time.specified_by_url == RFC3339
    assert f'scalar DateTime @specifiedBy(url: "{RFC3339}")' in schema.as_str()
