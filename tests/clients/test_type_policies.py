"""The keys a client's normalised cache identifies objects by (clients/typescript/typePolicies.ts).

Every object type of schema.graphql has a policy; every key field exists and is non-null; each
type's description states the same key; and in real answers, with every persona, no two
different objects share a key while the same object, met twice, reads the same both times.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import graphql
import pytest
from aiohttp.test_utils import TestClient

from server import demo
from tests.conftest import PERSONAS, gql

ROOT = Path(__file__).resolve().parents[2]
POLICIES_FILE = ROOT / "clients" / "typescript" / "typePolicies.ts"
SCHEMA_FILE = ROOT / "schema.graphql"
NOW = datetime(2026, 3, 1, tzinfo=UTC)

KeySpec = list[Any]


def policies() -> dict[str, KeySpec | bool]:
    """Return each type's keyFields, read from the JSON literal typePolicies.ts exports."""
    text = POLICIES_FILE.read_text()
    found = re.search(r"export const typePolicies = (\{.*?\}) as const satisfies", text, re.S)
    assert found, "typePolicies.ts no longer exports its policies as a JSON literal"
    parsed: dict[str, dict[str, Any]] = json.loads(found.group(1))
    assert all(set(policy) == {"keyFields"} for policy in parsed.values()), parsed
    return {name: policy["keyFields"] for name, policy in parsed.items()}


def built() -> graphql.GraphQLSchema:
    return graphql.build_schema(SCHEMA_FILE.read_text())


def cached_types(schema: graphql.GraphQLSchema) -> dict[str, graphql.GraphQLObjectType]:
    """Return the object types a client caches: all but the root types and introspection's."""
    roots = {schema.query_type, schema.mutation_type, schema.subscription_type}
    return {
        name: named
        for name, named in schema.type_map.items()
        if isinstance(named, graphql.GraphQLObjectType)
        and not name.startswith("__")
        and named not in roots
    }


def paths(spec: KeySpec) -> Iterator[tuple[str, KeySpec | None]]:
    """Yield each field of a key specifier with the specifier of its subfields (None: a leaf)."""
    for index, item in enumerate(spec):
        if isinstance(item, str):
            following = spec[index + 1] if index + 1 < len(spec) else None
            yield item, following if isinstance(following, list) else None


def spoken(spec: KeySpec | bool) -> str:
    """Return a key specifier as the schema's descriptions say it: `kpi { slug }, timestamp`."""
    if spec is False:
        return "none"
    assert isinstance(spec, list)
    return ", ".join(
        name if sub is None else f"{name} {{ {spoken(sub)} }}" for name, sub in paths(spec)
    )


def test_every_object_type_a_client_caches_has_a_policy() -> None:
    assert set(policies()) == set(cached_types(built()))


def test_every_key_field_exists_and_is_non_null() -> None:
    types = cached_types(built())

    def check(owner: graphql.GraphQLObjectType, spec: KeySpec) -> None:
        assert spec, f"{owner.name}: an empty key would make every {owner.name} one object"
        for name, sub in paths(spec):
            field = owner.fields.get(name)
            assert field is not None, f"{owner.name}.{name} does not exist"
            assert not field.args, f"{owner.name}.{name} takes arguments"
            assert isinstance(field.type, graphql.GraphQLNonNull), f"{owner.name}.{name}: null"
            inner = field.type.of_type
            if sub is None:
                assert isinstance(inner, graphql.GraphQLScalarType | graphql.GraphQLEnumType), (
                    f"{owner.name}.{name} is no leaf: name its key fields"
                )
            else:
                assert isinstance(inner, graphql.GraphQLObjectType), f"{owner.name}.{name}"
                check(inner, sub)

    for name, spec in policies().items():
        if spec is not False:
            assert isinstance(spec, list), f"{name}: keyFields is a list or false"
            check(types[name], spec)


def test_each_types_description_states_its_key() -> None:
    types = cached_types(built())
    for name, spec in policies().items():
        described = re.findall(r"Cache key: ([^.(]*?)(?: \(|\.)", types[name].description or "")
        assert described == [spoken(spec)], (name, types[name].description)


# Every keyed type, from every path that reaches it, with fields that would differ if two
# objects under one key were different things.
QUERY = """
{
  kpis(includeRetired: true) {
    __typename slug name version status visibility units
    targets { __typename severity persona comparison threshold }
  }
  incidents(first: 60) {
    edges {
      node {
        __typename id title severity detectedAt resolvedAt
        alerts { __typename id issueTime source }
        kpis {
          __typename timestamp value source definitionVersion
          kpi { __typename slug name version }
          incident { __typename id title severity }
        }
      }
    }
  }
}
"""


def objects(value: Any) -> Iterator[dict[str, Any]]:
    """Yield every object of an answer that names its type, depth first."""
    if isinstance(value, dict):
        if "__typename" in value:
            yield value
        for item in value.values():
            yield from objects(item)
    elif isinstance(value, list):
        for item in value:
            yield from objects(item)


def key_of(value: dict[str, Any], spec: KeySpec) -> str:
    """Return the key Apollo would store an object under (without the type name)."""
    fields = paths(spec)
    return json.dumps({n: value[n] if sub is None else key_of(value[n], sub) for n, sub in fields})


def listed(answer: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Return the objects of each keyed type that are rows of their own lists (not references)."""
    nodes = [edge["node"] for edge in answer["incidents"]["edges"]]
    return {
        "KpiDefinition": answer["kpis"],
        "Incident": nodes,
        "Alert": [alert for node in nodes for alert in node["alerts"]],
        "KpiObservation": [observation for node in nodes for observation in node["kpis"]],
    }


@pytest.fixture
async def loaded() -> None:
    await demo.load(count=60, seed=13, now=NOW)


@pytest.mark.parametrize("persona", PERSONAS)
async def test_no_two_different_objects_of_an_answer_share_a_key(
    client: TestClient, loaded: None, persona: str
) -> None:
    body = await gql(client, QUERY, persona=persona)
    assert "errors" not in body, body
    keys = {name: spec for name, spec in policies().items() if spec is not False}
    rows = listed(body["data"])
    assert set(rows) == set(keys)  # the query reaches every keyed type
    for name, items in rows.items():
        assert items, f"the answer holds no {name}"
        unique = {key_of(item, keys[name]) for item in items}
        assert len(unique) == len(items), f"two {name} rows share a key"
    # The same key met on several paths (an incident in the page and under its observations)
    # must be the same object: every field both selected agrees.
    seen: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for found in objects(body["data"]):
        spec = keys.get(found["__typename"])
        if spec is not None:
            seen[found["__typename"], key_of(found, spec)].append(found)
    assert any(len(group) > 1 for group in seen.values())  # the check below is not vacuous
    for (name, key), group in seen.items():
        for other in group[1:]:
            common = set(group[0]) & set(other)
            assert {f: group[0][f] for f in common} == {f: other[f] for f in common}, (name, key)
