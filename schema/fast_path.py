"""The compiled path in front of the standard executor: plans cached per document."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

import orjson
from graphql import parse, specified_rules, validate
from graphql.error import GraphQLError
from strawberry.schema.validation_rules.maybe_null import MaybeNullValidationRule
from strawberry.schema.validation_rules.one_of import OneOfInputValidationRule

from registry import db, opaque
from registry.errors import AppError
from registry.model import Viewer
from schema import CACHE_SIZE, MAX_TOKENS, MimSchema
from schema.limits import request_refusal
from schema.plans import Fallback, NotCovered, Plan, compile_plan

log = logging.getLogger("mim.fast_path")


class FastPath:
    """Answers the queries its plans cover; None means the standard executor must answer."""

    def __init__(self, schema: MimSchema) -> None:
        self._schema = schema._schema
        # The rules the standard pipeline validates with, so a plan exists only for documents
        # it would accept.
        self._rules = (
            *specified_rules,
            MaybeNullValidationRule,
            OneOfInputValidationRule,
            *schema.limit_rules,
        )
        self.plan = lru_cache(maxsize=CACHE_SIZE)(self._compile)
        self.served = 0
        self.passed_on = 0

    def _compile(self, query: str, operation_name: str | None) -> Plan | None:
        """Return the plan for a document and operation, or None when there is none."""
        try:
            document = parse(query, max_tokens=MAX_TOKENS)
        except GraphQLError:
            return None
        if validate(self._schema, document, self._rules):
            return None
        try:
            return compile_plan(self._schema, document, operation_name)
        except NotCovered as reason:
            log.debug("no plan for %s: %s", operation_name or "an operation", reason)
            return None
        except Exception:
            # A fault of the compiler must not cost the request: the standard executor answers.
            log.exception("compiling a plan failed; the standard executor answers instead")
            return None

    def covers(self, body: Mapping[str, Any]) -> bool:
        """Return whether a plan would answer this request body (unless the data says no)."""
        query, operation_name, variables = (
            body.get("query"),
            body.get("operationName"),
            body.get("variables"),
        )
        return (
            isinstance(query, str)
            and isinstance(operation_name, str | None)
            and isinstance(variables, dict | None)
            and self.plan(query, operation_name) is not None
            and request_refusal(query, operation_name, variables) is None
        )

    async def respond(self, body: Mapping[str, Any], viewer: Viewer) -> bytes | None:
        """Return the response body for a request body, or None to pass it on."""
        answer = await self._answer(body, viewer)
        if answer is None:
            self.passed_on += 1
        else:
            self.served += 1
        return answer

    async def _answer(self, body: Mapping[str, Any], viewer: Viewer) -> bytes | None:
        query = body.get("query")
        operation_name = body.get("operationName")
        variables = body.get("variables")
        if (
            not isinstance(query, str)
            or not isinstance(operation_name, str | None)
            or not isinstance(variables, dict | None)
        ):
            return None
        plan = self.plan(query, operation_name)
        if plan is None or request_refusal(query, operation_name, variables) is not None:
            return None  # the executor refuses oversized argument lists in its own words
        try:
            await opaque.load()  # cursors and alert ids are sealed as rows are written out
            data = await plan.run(viewer, variables or {})
        except (Fallback, AppError):
            return None  # the standard executor reports the error in its own words
        except Exception as error:
            if db.is_transient(error) or db.is_timeout(error):
                return None
            raise
        # orjson writes date-times as ISO 8601 with their (UTC) offset, as the DateTime scalar does.
        return orjson.dumps({"data": data})
