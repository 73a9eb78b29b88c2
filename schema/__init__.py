"""The GraphQL schema: root types assembled from one class per domain."""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

import strawberry
from graphql import ASTValidationRule
from graphql.error import GraphQLError
from strawberry.extensions import (
    AddValidationRules,
    DisableIntrospection,
    MaxAliasesLimiter,
    MaxTokensLimiter,
    ParserCache,
    QueryDepthLimiter,
    ValidationCache,
)
from strawberry.schema.config import StrawberryConfig
from strawberry.types import ExecutionContext, ExecutionResult
from strawberry.types.graphql import OperationType

from schema.definitions import DefinitionsMutation
from schema.incidents import IncidentMutation, IncidentQuery
from schema.kpis import KpiMutation, KpiQuery
from schema.limits import (
    MAX_COST,
    MAX_LIST_ITEMS,
    MAX_TOKENS,
    ListArguments,
    QueryCost,
    request_refusal,
)
from schema.observations import ObservationMutation
from schema.scalars import DateTime

# graphql-core 3.3 cancels the tasks of a failed field's siblings; a task cancelled before its first
# step never awaits the resolver coroutine it was handed, and Python warns when that coroutine is
# collected. The resolver never ran and its answer was not wanted, so the warning is noise
# (tests/schema/test_errors.py reproduces it; pyproject.toml silences the same text in tests).
UNSTARTED_RESOLVER = (
    r"coroutine 'GraphQLCoreConverter\.from_resolver\.<locals>\._async_resolver' was never awaited"
)
warnings.filterwarnings("ignore", message=UNSTARTED_RESOLVER, category=RuntimeWarning)

MAX_DEPTH = 10
MAX_ALIASES = 15
CACHE_SIZE = 256
LIMITS = (
    f"A request beyond these limits is BAD_USER_INPUT before anything runs: {MAX_DEPTH} levels "
    f"below the root field, {MAX_ALIASES} aliases, {MAX_TOKENS:,} tokens, an estimated cost of "
    f"{MAX_COST:,} (each field 1; a list multiplies what it holds by its size: first or last, a "
    f"series' buckets, or an assumed one), and {MAX_LIST_ITEMS} items in any list argument or "
    "list inside an input (recordObservations: 1,000)."
)


@strawberry.type(
    description="Reads, for every known persona (a token naming none gets FORBIDDEN). A KPI "
    "the caller may not see does not exist for it. Every field is nullable: one that fails is "
    "null, with its error, and the others keep their data. " + LIMITS
)
class Query(KpiQuery, IncidentQuery):
    pass


@strawberry.type(
    description="Writes: definition mutations and backfillKpi for admins; incident and "
    "observation mutations for ingest and admin. A rejected mutation writes nothing. Text "
    "values hold no NUL character and no lone surrogate (else BAD_USER_INPUT). " + LIMITS
)
class Mutation(KpiMutation, DefinitionsMutation, IncidentMutation, ObservationMutation):
    pass


class QuietSchema(strawberry.Schema):
    """Logs only what ErrorCodes reports as unexpected, not every rejected request."""

    def process_errors(
        self, errors: list[GraphQLError], execution_context: ExecutionContext | None = None
    ) -> None:
        return None


class MimSchema(QuietSchema):
    """The schema, and the validation rules its limits add (the compiled path applies them too)."""

    def __init__(self, *, limit_rules: Sequence[type[ASTValidationRule]], **options: Any) -> None:
        super().__init__(**options)
        self.limit_rules = tuple(limit_rules)

    async def execute(
        self,
        query: str | None,
        variable_values: dict[str, Any] | None = None,
        context_value: Any | None = None,
        root_value: Any | None = None,
        operation_name: str | None = None,
        allowed_operation_types: Iterable[OperationType] | None = None,
        operation_extensions: dict[str, Any] | None = None,
    ) -> ExecutionResult:
        """Execute, unless the request's argument lists (variables included) exceed the limits."""
        if query is not None:
            refusal = request_refusal(query, operation_name, variable_values)
            if refusal is not None:
                return ExecutionResult(data=None, errors=[GraphQLError(refusal)])
        return await super().execute(
            query,
            variable_values,
            context_value,
            root_value,
            operation_name,
            allowed_operation_types,
            operation_extensions,
        )


def build_schema(*, introspection: bool = True) -> MimSchema:
    """Return the service's schema; without introspection it also makes no suggestions."""
    rules: list[type[ASTValidationRule]] = [
        *([] if introspection else DisableIntrospection().validation_rules),
        QueryCost,
        ListArguments,
        *QueryDepthLimiter(max_depth=MAX_DEPTH).validation_rules,
        *MaxAliasesLimiter(max_alias_count=MAX_ALIASES).validation_rules,
    ]
    return MimSchema(
        query=Query,
        mutation=Mutation,
        config=StrawberryConfig(
            scalar_map={datetime: DateTime}, disable_field_suggestions=not introspection
        ),
        extensions=[
            lambda: AddValidationRules(rules),
            lambda: MaxTokensLimiter(max_token_count=MAX_TOKENS),
            lambda: ParserCache(maxsize=CACHE_SIZE),
            lambda: ValidationCache(maxsize=CACHE_SIZE),
        ],
        limit_rules=rules,
    )


schema = build_schema()
