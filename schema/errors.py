"""Every GraphQL error leaves with a contract code; unexpected ones are masked and logged."""

from __future__ import annotations

import logging
import re

from graphql.error import GraphQLError

from registry import db
from registry.errors import AppError

log = logging.getLogger("mim.graphql")

INTERNAL_MESSAGE = "Internal error."
TIMEOUT_MESSAGE = "The request ran past its time limit and was stopped."
UNAVAILABLE_MESSAGE = "The database is unavailable; retry shortly."


def coded(error: GraphQLError) -> GraphQLError:
    """Return the error as the client should see it, with `extensions.code`."""
    original = error.original_error
    if isinstance(original, AppError):
        coded_error = _with_code(error, original.code, original.message)
        if original.details:
            coded_error.extensions = {**original.details, **(coded_error.extensions or {})}
        return coded_error
    if db.is_timeout(original):
        return _with_code(error, "TIMEOUT", TIMEOUT_MESSAGE)
    if db.is_transient(original):
        return _with_code(error, "UNAVAILABLE", UNAVAILABLE_MESSAGE, retryable=True)
    if error.path is None or _is_input_error(original):
        # Raised before execution (the document or its variables are invalid), or by the
        # executor itself over the request's input (a null for a directive's `if`).
        return _with_code(error, "BAD_USER_INPUT", error.message)
    return _with_code(error, "INTERNAL", INTERNAL_MESSAGE)


def _with_code(
    error: GraphQLError, code: str, message: str, *, retryable: bool = False
) -> GraphQLError:
    return GraphQLError(
        message=message,
        nodes=error.nodes,
        source=error.source,
        positions=error.positions,
        path=error.path,
        original_error=None,
        extensions={"code": code, "retryable": True} if retryable else {"code": code},
    )


def _is_input_error(original: BaseException | None) -> bool:
    # graphql-core's own errors over the request point at its nodes (an argument, a variable);
    # those it raises over a value the service returned (a scalar that cannot serialize) do not.
    return isinstance(original, GraphQLError) and bool(original.nodes)


def is_unexpected(error: GraphQLError) -> bool:
    """Return whether an error is a fault of the service rather than of the request."""
    original = error.original_error
    return (
        error.path is not None
        and not isinstance(original, AppError)
        and not _is_input_error(original)
        and not db.is_transient(original)
        and not db.is_timeout(original)
    )


def coded_errors(errors: list[GraphQLError], *, suggestions: bool = True) -> list[GraphQLError]:
    """Return errors as the client should see them, logging the unexpected ones in full."""
    for error in errors:
        if is_unexpected(error):
            log.error("unexpected error at %s", error.path, exc_info=error.original_error or error)
    shown = [coded(e) for e in errors]
    if not suggestions:
        shown = [_without_suggestions(e) for e in shown]
    return shown


# graphql-core suggests names in several messages (fields, arguments, enum values, input fields,
# types); with introspection off none of them may reveal the schema.
_SUGGESTION = re.compile(r"\s*Did you mean [^?]*\?")


def _without_suggestions(error: GraphQLError) -> GraphQLError:
    message = _SUGGESTION.sub("", error.message)
    if message == error.message:
        return error
    return GraphQLError(
        message=message,
        nodes=error.nodes,
        source=error.source,
        positions=error.positions,
        path=error.path,
        extensions=error.extensions,
    )
