"""A query cost estimate, checked before execution: lists multiply the cost of what they hold."""

from __future__ import annotations

from graphql import (
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    InlineFragmentNode,
    IntValueNode,
    OperationDefinitionNode,
    SelectionSetNode,
    ValidationContext,
    ValidationRule,
    VariableNode,
)

MAX_COST = 200_000
# How many items a list field is assumed to hold when its size is not given by `first`.
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


def estimate(context: ValidationContext, operation: OperationDefinitionNode) -> int:
    """Return the estimated cost of one operation."""
    fragments = {
        d.name.value: d
        for d in context.document.definitions
        if isinstance(d, FragmentDefinitionNode)
    }
    return _cost(operation.selection_set, fragments, 1, set())


def _cost(
    selections: SelectionSetNode | None,
    fragments: dict[str, FragmentDefinitionNode],
    page: int,
    seen: set[str],
) -> int:
    if selections is None:
        return 0
    total = 0
    for node in selections.selections:
        if isinstance(node, FieldNode):
            total += _field_cost(node, fragments, page, seen)
        elif isinstance(node, InlineFragmentNode):
            total += _cost(node.selection_set, fragments, page, seen)
        elif isinstance(node, FragmentSpreadNode) and node.name.value not in seen:
            fragment = fragments.get(node.name.value)
            if fragment is not None:
                inner = seen | {node.name.value}
                total += _cost(fragment.selection_set, fragments, page, inner)
    return total


def _field_cost(
    node: FieldNode,
    fragments: dict[str, FragmentDefinitionNode],
    page: int,
    seen: set[str],
) -> int:
    name = node.name.value
    if name == "incidents":  # a connection: its edges hold `first` nodes
        size = _first(node, DEFAULT_PAGE)
        return 1 + _cost(node.selection_set, fragments, size, seen)
    if name == "edges":
        return 1 + page * _cost(node.selection_set, fragments, page, seen)
    size = LIST_SIZES.get(name, 1)
    return 1 + size * _cost(node.selection_set, fragments, page, seen)


def _first(node: FieldNode, default: int) -> int:
    for argument in node.arguments or ():
        if argument.name.value != "first":
            continue
        value = argument.value
        if isinstance(value, IntValueNode):
            return min(MAX_PAGE, max(1, int(value.value)))
        if isinstance(value, VariableNode):
            # The variable's value (not its default) is not known here: assume the largest page.
            return MAX_PAGE
    return default


class QueryCost(ValidationRule):
    """Refuses documents whose estimated cost exceeds MAX_COST."""

    def enter_operation_definition(self, node: OperationDefinitionNode, *_: object) -> None:
        cost = estimate(self.context, node)
        if cost > MAX_COST:
            self.report_error(
                GraphQLError(
                    f"Query is too expensive: estimated cost {cost} exceeds {MAX_COST}; "
                    "ask for fewer items or fewer nested lists.",
                    node,
                )
            )
