"""Limits checked before execution: a cost estimate in which lists multiply the cost of what they
hold, and a cap on the items of every list argument, whether written in the document or sent as a
variable (variables are checked before they are coerced, so an oversized list costs nothing)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime
from functools import lru_cache
from typing import Any

from graphql import (
    ArgumentNode,
    DocumentNode,
    EnumValueNode,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    InlineFragmentNode,
    IntValueNode,
    ListValueNode,
    ObjectValueNode,
    OperationDefinitionNode,
    SelectionSetNode,
    StringValueNode,
    ValidationRule,
    ValueNode,
    VariableNode,
    parse,
)
from graphql.utilities import get_operation_ast

from registry import trends
from registry.errors import AppError

MAX_TOKENS = 1000

MAX_COST = 200_000
MAX_NESTING = 10
# How many items a list field is assumed to hold when its size is not given by `first`/`last`.
LIST_SIZES = {
    "kpis": 25,
    "targets": 10,
    "dataSources": 10,
    "revisions": 20,
    "changes": 15,
    "series": 1000,  # the most buckets a series may have
    "alerts": 10,
    "timeline": 10,
    "milestones": 10,
    "surveyResponses": 10,
    "personas": 5,
    "visibilities": 2,
    "recordObservations": 100,
}
DEFAULT_PAGE = 20
MAX_PAGE = 100
# The most items any list argument (or list inside an input object) may hold, and the exceptions.
MAX_LIST_ITEMS = 100
LIST_ITEMS = {"inputs": 1000}  # recordObservations: 1..1000 observations in one call


Variables = Mapping[str, Any]


def estimate(
    document: DocumentNode, operation: OperationDefinitionNode, variables: Variables | None = None
) -> int:
    """Return the estimated cost of one operation; the items of argument lists count too.

    Without variables, a list sent as a variable counts as empty (it is counted at execution).
    """
    fragments = {
        d.name.value: d for d in document.definitions if isinstance(d, FragmentDefinitionNode)
    }
    return _cost(operation.selection_set, fragments, 1, set(), variables or {})


# How each limit words its refusal (ours, Strawberry's depth and alias limiters, graphql-core's
# token limit), for counting refusals by limit.
_REFUSALS = (
    ("depth", re.compile(r"^'[^']*' exceeds maximum operation depth of \d+$")),
    ("aliases", re.compile(r"^\d+ aliases found\. Allowed: \d+$")),
    (
        "tokens",
        re.compile(r"^Syntax Error: Document contains more than \d+ tokens\. Parsing aborted\.$"),
    ),
    ("cost", re.compile(r"^Query is too expensive: estimated cost \d+ exceeds \d+; ")),
    ("list_size", re.compile(r"^The argument \S+ holds \d+ items; at most \d+ are accepted\.$")),
)


def refused_by(message: str) -> str | None:
    """Return which limit an error message reports (depth, aliases, ...), or None."""
    for limit, pattern in _REFUSALS:
        if pattern.search(message):
            return limit
    return None


def request_refusal(query: str, operation_name: str | None, variables: Any) -> str | None:
    """Return why a request's argument lists are too long or too costly (None if they are not).

    Documents that do not parse, or name no operation, are left to the executor to report.
    """
    if not isinstance(variables, Mapping) or not any(
        isinstance(value, list | dict) for value in variables.values()
    ):
        return None  # no list was sent: validation has judged the document's lists and cost
    document = _parsed(query)
    if document is None:
        return None
    operation = get_operation_ast(document, operation_name)
    if operation is None:
        return None
    # Only what the variables add: the validation rules report the document's own lists and cost
    # in their own words, together with its other errors.
    sent = _argument_lists(document, variables or {})
    written = _argument_lists(document, {})
    for (name, items, cap), (_, own, _) in zip(sent, written, strict=True):
        if items > cap >= own:
            return f"The argument {name} holds {items} items; at most {cap} are accepted."
    if _too_expensive(estimate(document, operation)) is not None:
        return None
    return _too_expensive(estimate(document, operation, variables))


def _too_expensive(cost: int) -> str | None:
    if cost <= MAX_COST:
        return None
    return (
        f"Query is too expensive: estimated cost {cost} exceeds {MAX_COST}; "
        "ask for fewer items or fewer nested lists."
    )


@lru_cache(maxsize=256)
def _parsed(query: str) -> DocumentNode | None:
    try:
        return parse(query, max_tokens=MAX_TOKENS)
    except GraphQLError:
        return None


def _argument_lists(document: DocumentNode, variables: Variables) -> list[tuple[str, int, int]]:
    """Return (argument, longest list in its value, cap) for every argument in the document."""
    found: list[tuple[str, int, int]] = []

    def arguments(selections: SelectionSetNode | None) -> None:
        for node in selections.selections if selections is not None else ():
            if isinstance(node, FieldNode):
                for argument in node.arguments or ():
                    name = argument.name.value
                    cap = LIST_ITEMS.get(name, MAX_LIST_ITEMS)
                    found.append((name, _longest(argument.value, variables), cap))
            if isinstance(node, FieldNode | InlineFragmentNode):
                arguments(node.selection_set)

    for definition in document.definitions:
        if isinstance(definition, OperationDefinitionNode | FragmentDefinitionNode):
            arguments(definition.selection_set)
    return found


def _longest(value: ValueNode | Any, variables: Variables) -> int:
    """Return the length of the longest list in an argument's value (0 when it holds none)."""
    if isinstance(value, VariableNode):
        return _longest_sent(variables.get(value.name.value))
    if isinstance(value, ListValueNode):
        inner = (_longest(item, variables) for item in value.values)
        return max([len(value.values), *inner])
    if isinstance(value, ObjectValueNode):
        return max((_longest(f.value, variables) for f in value.fields), default=0)
    return 0


def _longest_sent(value: Any, depth: int = 0) -> int:
    """Return the length of the longest list in a variable's JSON value."""
    if depth > MAX_NESTING:
        return 0  # deeper than any input type of the schema: coercion refuses it
    if isinstance(value, list):
        if len(value) > max(LIST_ITEMS.values()):
            return len(value)  # refused whatever it holds
        return max([len(value), *(_longest_sent(item, depth + 1) for item in value)])
    if isinstance(value, dict):
        return max((_longest_sent(v, depth + 1) for v in value.values()), default=0)
    return 0


def _argument_items(node: FieldNode, variables: Variables) -> int:
    return sum(_longest(argument.value, variables) for argument in node.arguments or ())


def _cost(
    selections: SelectionSetNode | None,
    fragments: dict[str, FragmentDefinitionNode],
    page: int,
    seen: set[str],
    variables: Variables,
) -> int:
    if selections is None:
        return 0
    total = 0
    for node in selections.selections:
        if isinstance(node, FieldNode):
            total += _field_cost(node, fragments, page, seen, variables)
        elif isinstance(node, InlineFragmentNode):
            total += _cost(node.selection_set, fragments, page, seen, variables)
        elif isinstance(node, FragmentSpreadNode) and node.name.value not in seen:
            fragment = fragments.get(node.name.value)
            if fragment is not None:
                inner = seen | {node.name.value}
                total += _cost(fragment.selection_set, fragments, page, inner, variables)
    return total


def _field_cost(
    node: FieldNode,
    fragments: dict[str, FragmentDefinitionNode],
    page: int,
    seen: set[str],
    variables: Variables,
) -> int:
    name = node.name.value
    # Reading an argument's list is work too, done wherever the field is resolved.
    own = 1 + _argument_items(node, variables)
    if name == "incidents":  # a connection: its edges hold `first` (or `last`) nodes
        size = _page_size(node, DEFAULT_PAGE)
        return own + _cost(node.selection_set, fragments, size, seen, variables)
    if name == "edges":
        return own + page * _cost(node.selection_set, fragments, page, seen, variables)
    size = _series_points(node) if name == "series" else LIST_SIZES.get(name, 1)
    return own + size * _cost(node.selection_set, fragments, page, seen, variables)


def _series_points(node: FieldNode) -> int:
    """Return how many buckets a series holds: counted when its bucket and bounds are written
    in the document, else the most a series may have."""
    given = {a.name.value: a.value for a in node.arguments or ()}
    bucket, start, end = given.get("bucket"), given.get("from"), given.get("to")
    if not (
        isinstance(bucket, EnumValueNode)
        and isinstance(start, StringValueNode)
        and isinstance(end, StringValueNode)
    ):
        return LIST_SIZES["series"]
    try:
        window = trends.Window.checked(
            trends.Bucket[bucket.value],
            datetime.fromisoformat(start.value.replace("Z", "+00:00")),
            datetime.fromisoformat(end.value.replace("Z", "+00:00")),
        )
    except (KeyError, ValueError, AppError):
        return LIST_SIZES["series"]  # the executor reports what is wrong with them
    return len(window.starts)


def _page_size(node: FieldNode, default: int) -> int:
    """Return the most nodes a page may hold: its `first` or `last` (the larger, if both)."""
    sizes = []
    for argument in node.arguments or ():
        if argument.name.value not in ("first", "last"):
            continue
        value = argument.value
        if isinstance(value, IntValueNode):
            sizes.append(min(MAX_PAGE, max(1, int(value.value))))
        elif isinstance(value, VariableNode):
            # The variable's value (not its default) is not known here: assume the largest page.
            sizes.append(MAX_PAGE)
    return max(sizes, default=default)


class QueryCost(ValidationRule):
    """Refuses documents whose estimated cost exceeds MAX_COST."""

    def enter_operation_definition(self, node: OperationDefinitionNode, *_: object) -> None:
        refusal = _too_expensive(estimate(self.context.document, node))
        if refusal is not None:
            self.report_error(GraphQLError(refusal, node))


class ListArguments(ValidationRule):
    """Refuses list arguments written in the document with more items than they accept."""

    def enter_argument(self, node: ArgumentNode, *_: object) -> None:
        name = node.name.value
        cap = LIST_ITEMS.get(name, MAX_LIST_ITEMS)
        items = _longest(node.value, {})
        if items > cap:
            self.report_error(
                GraphQLError(
                    f"The argument {name} holds {items} items; at most {cap} are accepted.", node
                )
            )
