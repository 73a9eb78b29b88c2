"""Every GraphQL error leaves with a contract code; unexpected ones are masked and logged."""

from __future__ import annotations

import logging

from graphql.error import GraphQLError

from server.errors import AppError

log = logging.getLogger("mim.graphql")

INTERNAL_MESSAGE = "Internal error."


def coded(error: GraphQLError) -> GraphQLError:
    """Return the error as the client should see it, with `extensions.code`."""
    original = error.original_error
    if isinstance(original, AppError):
        return _with_code(error, original.code, original.message)
    if error.path is None:
        # Raised before execution: the document or its variables are invalid.
        return _with_code(error, "BAD_USER_INPUT", error.message)
    return _with_code(error, "INTERNAL", INTERNAL_MESSAGE)


def _with_code(error: GraphQLError, code: str, message: str) -> GraphQLError:
    return GraphQLError(
        message=message,
        nodes=error.nodes,
        source=error.source,
        positions=error.positions,
        path=error.path,
        original_error=None,
        extensions={"code": code},
    )


def is_unexpected(error: GraphQLError) -> bool:
    """Return whether an error is a fault of the service rather than of the request."""
    return error.path is not None and not isinstance(error.original_error, AppError)


def coded_errors(errors: list[GraphQLError]) -> list[GraphQLError]:
    """Return errors as the client should see them, logging the unexpected ones in full."""
    for error in errors:
        if is_unexpected(error):
            log.error("unexpected error at %s", error.path, exc_info=error.original_error or error)
    return [coded(e) for e in errors]
