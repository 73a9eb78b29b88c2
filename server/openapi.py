"""The OpenAPI 3.1 document of the JSON routes beside GraphQL: the REST mirror, health, metrics.

It is built from code, not written by hand: the fields of the REST answers come from the GraphQL
types' row declarations (schema/fields.py), which server/rest.py walks to write the same JSON, so
a field declared there is described here with its GraphQL type, nullability and description. The
document is static (it names no KPI) and served without a token at /openapi.json;
`python -m server.openapi > docs/openapi.json` writes its checked-in copy.
"""

from __future__ import annotations

import hashlib
import json
from functools import cache
from importlib.metadata import version
from typing import Any

from aiohttp import web
from graphql import (
    GraphQLEnumType,
    GraphQLList,
    GraphQLNonNull,
    GraphQLObjectType,
    GraphQLOutputType,
    GraphQLSchema,
)

from registry import validate
from registry.model import MAX_VALUE, Visibility
from schema import schema
from schema.fields import row_fields
from schema.incidents import IncidentType
from schema.kpis import KpiDefinitionType
from schema.observations import KpiObservation
from server import revalidation, shed

PATH = "/openapi.json"
_METHODS = ("get", "head", "post", "put", "patch", "delete", "options", "trace")
# Routes this document leaves to others, and where they are described.
OUTSIDE = {
    "/graphql": "GraphQL: described by its own schema (schema.graphql, or introspection)",
    "/ui": "HTML pages for people, signed in with a session",
    "/static": "files the GraphiQL page loads",
}

_SCALARS: dict[str, dict[str, Any]] = {
    "String": {"type": "string"},
    "ID": {"type": "string"},
    "Int": {"type": "integer"},
    "Float": {"type": "number"},
    "Boolean": {"type": "boolean"},
    "DateTime": {"type": "string", "format": "date-time"},
}
_SLUG = {"pattern": f"^{validate.SLUG_PATTERN.pattern}$", "maxLength": validate.SLUG_MAX}
_INCIDENT_KEY = {
    "pattern": f"^{validate.INCIDENT_KEY_PATTERN.pattern}$",
    "maxLength": validate.INCIDENT_KEY_MAX,
}
_MEASURE = {"minimum": -MAX_VALUE, "maximum": MAX_VALUE}
# What the services' checks guarantee of stored values, beyond their GraphQL types.
_CONSTRAINTS: dict[tuple[str, str], dict[str, Any]] = {
    ("KpiDefinition", "slug"): _SLUG,
    ("KpiDefinition", "version"): {"minimum": 1},
    ("KpiTarget", "threshold"): _MEASURE,
    ("Incident", "id"): _INCIDENT_KEY,
    ("KpiObservation", "value"): _MEASURE,
    ("KpiObservation", "confidence"): {"minimum": 0, "maximum": 1},
}
_ERROR_CODES = {
    400: ["BAD_USER_INPUT"],
    401: ["UNAUTHENTICATED"],
    403: ["FORBIDDEN"],
    404: ["NOT_FOUND"],
    415: ["BAD_USER_INPUT"],
    503: ["UNAVAILABLE", "TIMEOUT"],
}


def _graphql() -> GraphQLSchema:
    found: GraphQLSchema = schema._schema
    return found


def _type_schema(type_: GraphQLOutputType) -> dict[str, Any]:
    """Return the JSON Schema of the JSON GraphQL writes for a value of this type."""
    if isinstance(type_, GraphQLNonNull):
        return _non_null(type_.of_type)
    found = _non_null(type_)
    if "$ref" in found:
        return {"anyOf": [found, {"type": "null"}]}
    if "enum" in found:
        found["enum"] = [*found["enum"], None]
    found["type"] = [found["type"], "null"]
    return found


def _non_null(type_: Any) -> dict[str, Any]:
    if isinstance(type_, GraphQLList):
        return {"type": "array", "items": _type_schema(type_.of_type)}
    if isinstance(type_, GraphQLEnumType):
        return {"type": "string", "enum": list(type_.values)}
    if isinstance(type_, GraphQLObjectType):
        return {"$ref": f"#/components/schemas/{type_.name}"}
    return dict(_SCALARS[type_.name])


def _field(type_name: str, name: str, description: str | None = None) -> dict[str, Any]:
    """Return the JSON Schema of a GraphQL field as the REST mirror writes it."""
    declared = _graphql().type_map[type_name]
    assert isinstance(declared, GraphQLObjectType)
    field = declared.fields[name]
    found = _type_schema(field.type)
    found.update(_CONSTRAINTS.get((type_name, name), {}))
    return {"description": description or field.description, **found}


def _object(properties: dict[str, dict[str, Any]], description: str) -> dict[str, Any]:
    """Return the schema of a JSON object holding exactly these properties, always."""
    return {
        "type": "object",
        "description": description,
        "required": list(properties),
        "properties": properties,
        "additionalProperties": False,
    }


def _described(type_name: str) -> str:
    found = _graphql().type_map[type_name].description
    return found or type_name


def _row_object(type_name: str, type_: type) -> dict[str, dict[str, Any]]:
    """Return the properties server/rest.py writes from a type's row declarations."""
    return {name: _field(type_name, name) for name, _ in row_fields(type_)}


def _definition() -> dict[str, Any]:
    properties: dict[str, dict[str, Any]] = {}
    for name, schema_ in _row_object("KpiDefinition", KpiDefinitionType).items():
        properties[name] = schema_
        if name == "units":  # server/rest.py writes the targets after the units
            properties["targets"] = _field("KpiDefinition", "targets")
    return _object(properties, _described("KpiDefinition"))


def _target() -> dict[str, Any]:
    declared = _graphql().type_map["KpiTarget"]
    assert isinstance(declared, GraphQLObjectType)
    return _object({name: _field("KpiTarget", name) for name in declared.fields}, "A target.")


def _observation() -> dict[str, Any]:
    properties = {
        "kpiSlug": _field("KpiDefinition", "slug", "The slug of the KPI it is a value of."),
        "kpiName": _field("KpiDefinition", "name", "The KPI's display name."),
        "units": _field("KpiDefinition", "units", "The KPI's units."),
        **_row_object("KpiObservation", KpiObservation),
        "meetsTarget": _field("KpiObservation", "meetsTarget"),
    }
    return _object(properties, _described("KpiObservation"))


def _error(codes: list[str]) -> dict[str, Any]:
    extensions = _object({"code": {"enum": codes}}, "What kind of error: its code.")
    error = _object(
        {"message": {"type": "string", "description": "For people."}, "extensions": extensions},
        "An error.",
    )
    return _object(
        {"errors": {"type": "array", "minItems": 1, "maxItems": 1, "items": error}},
        "The GraphQL errors shape.",
    )


def _json(schema_: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema_}}


def _header(description: str, *, required: bool = True, **schema_: Any) -> dict[str, Any]:
    return {
        "description": description,
        "required": required,
        "schema": {"type": "string", **schema_},
    }


_REQUEST_ID = {"$ref": "#/components/headers/RequestId"}
_ETAG = {"$ref": "#/components/headers/ETag"}


def _components() -> dict[str, Any]:
    errors = {
        400: "A refused request: a query parameter that is not as described, or given twice; "
        "or a protocol upgrade (such as WebSocket), on every path: the service has none.",
        401: "No bearer token, or one that is malformed, expired or badly signed. Every 401 "
        "has this same body, whatever was wrong with the token.",
        403: "A valid token that names no known persona.",
        404: "No such thing, or one the caller may not see: the two answers are identical.",
        415: "A request with a Content-Encoding other than identity, on every path.",
        503: "UNAVAILABLE: the database cannot be reached, or the worker already serves "
        "MIM_MAX_INFLIGHT requests (Retry-After says when to try again); TIMEOUT: the request "
        "ran past its time limit.",
    }
    responses: dict[str, Any] = {}
    for status, description in errors.items():
        headers: dict[str, Any] = {"X-Request-ID": _REQUEST_ID}
        if status == 401:
            headers["WWW-Authenticate"] = _header(
                'The challenge (RFC 6750): Bearer realm="mim", with error="invalid_token" when '
                "a bearer token was sent.",
                pattern='^Bearer realm="mim"(, error="invalid_token")?$',
            )
        if status == 503:
            headers = {
                "Retry-After": _header(
                    "Seconds to wait before trying again (UNAVAILABLE).", required=False
                ),
                # A request refused for overload is answered before it is given an id.
                "X-Request-ID": _header("The request's id.", required=False),
            }
        responses[str(status)] = {
            "description": description,
            "headers": headers,
            "content": _json(_error(_ERROR_CODES[status])),
        }
    responses["304"] = _not_modified("private, no-cache")
    return {
        "securitySchemes": {
            "bearer": {
                "type": "http",
                "scheme": "bearer",
                "bearerFormat": "JWT",
                "description": "A JWT naming the caller (sub) and its personas (persona); "
                "/metrics also takes MIM_METRICS_TOKEN.",
            }
        },
        "headers": {
            "RequestId": _header(
                "The caller's X-Request-ID when it is 1 to 128 visible ASCII characters, else "
                "one made for the request (32 hex digits).",
                pattern="^[\\x21-\\x7e]{1,128}$",
            ),
            "ETag": _header(
                "A strong tag of the answer: it changes with every committed write, and differs "
                "between callers and questions. Weak (W/) when the answer was compressed.",
                pattern='^(W/)?"[^"]*"$',
            ),
        },
        "parameters": {
            "RequestId": {
                "name": "X-Request-ID",
                "in": "header",
                "required": False,
                "description": "The caller's id for the request, kept when it is 1 to 128 "
                "visible ASCII characters (else replaced); sent back on the answer and logged.",
                "schema": {"type": "string"},
            },
            "IfNoneMatch": {
                "name": "If-None-Match",
                "in": "header",
                "required": False,
                "description": "An ETag of an earlier answer (or *): 304 when it is still current.",
                "schema": {"type": "string"},
            },
        },
        "responses": {_response_name(status): found for status, found in responses.items()},
        "schemas": {
            "KpiDefinition": _definition(),
            "KpiTarget": _target(),
            "Incident": _object(_row_object("Incident", IncidentType), _described("Incident")),
            "KpiObservation": _observation(),
        },
    }


_RESPONSE_NAMES = {
    "304": "NotModified",
    "400": "BadUserInput",
    "401": "Unauthenticated",
    "403": "Forbidden",
    "404": "NotFound",
    "415": "UnsupportedEncoding",
    "503": "Unavailable",
}


def _response_name(status: str) -> str:
    return _RESPONSE_NAMES[status]


def _ref(status: int) -> dict[str, Any]:
    return {"$ref": f"#/components/responses/{_response_name(str(status))}"}


def _not_modified(cache_control: str) -> dict[str, Any]:
    return {
        "description": "Not modified: If-None-Match names the answer's current tag (or is *). "
        "No body.",
        "headers": {
            "ETag": _ETAG,
            "Cache-Control": _header(f"Always {cache_control}.", const=cache_control),
            "X-Request-ID": _REQUEST_ID,
        },
    }


def _tagged(description: str, body: dict[str, Any]) -> dict[str, Any]:
    """Return a 200 that carries an ETag and may be revalidated."""
    return {
        "description": description,
        "headers": {
            "ETag": _ETAG,
            "Cache-Control": _header("Always private, no-cache.", const="private, no-cache"),
            "X-Request-ID": _REQUEST_ID,
        },
        "content": _json(body),
    }


def _plain(description: str, body: dict[str, Any], media_type: str) -> dict[str, Any]:
    return {
        "description": description,
        "headers": {"X-Request-ID": _REQUEST_ID},
        "content": {media_type: {"schema": body}},
    }


def _operations(
    path: str,
    *,
    summary: str,
    description: str,
    ok: dict[str, Any],
    statuses: list[int],
    parameters: list[dict[str, Any]] | None = None,
    public: bool = False,
    not_modified: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Return the GET and HEAD operations of a path (aiohttp answers HEAD for every GET); a GET
    with If-None-Match may get `not_modified` (a HEAD is never revalidated)."""
    statuses = [*statuses, 400, 415]
    if not public:
        statuses += [401]
    if path not in shed.NEVER_SHED:
        statuses += [503]
    parameters = [{"$ref": "#/components/parameters/RequestId"}, *(parameters or [])]
    responses: dict[str, Any] = {"200": ok, **{str(s): _ref(s) for s in statuses}}
    revalidated = not_modified is not None
    get: dict[str, Any] = {
        "operationId": _operation_id("get", path),
        "summary": summary,
        "description": description,
        "parameters": [
            *parameters,
            *([{"$ref": "#/components/parameters/IfNoneMatch"}] if revalidated else []),
        ],
        "responses": dict(
            sorted({**responses, **({"304": not_modified} if revalidated else {})}.items())
        ),
    }
    head_ok = {
        "description": "As GET, without the body (and never revalidated: no ETag).",
        "headers": {"X-Request-ID": _REQUEST_ID},
        "content": {media_type: {} for media_type in ok["content"]},
    }
    head: dict[str, Any] = {
        "operationId": _operation_id("head", path),
        "summary": f"{summary} (headers only)",
        "parameters": parameters,
        "responses": dict(sorted({**responses, "200": head_ok}.items())),
    }
    if public:
        get["security"] = head["security"] = []
    return {"get": get, "head": head}


def _operation_id(method: str, path: str) -> str:
    words = [part.strip("{}") for part in path.strip("/").replace(".", "/").split("/")]
    return method + "".join(word[:1].upper() + word[1:] for word in words)


def _any_case(word: str) -> str:
    return "".join(f"[{c.upper()}{c.lower()}]" if c.isalpha() else c for c in word)


_SLUG_PARAMETER = {
    "name": "slug",
    "in": "path",
    "required": True,
    "description": "The KPI's slug. Any other string, a KPI that does not exist or one the "
    "caller may not see is 404.",
    "schema": {"type": "string", **_SLUG},
    "example": "mttr",
}
_VISIBILITY_PARAMETER = {
    "name": "visibility",
    "in": "query",
    "required": False,
    "description": "Only KPIs of this visibility (EXEC or INTERNAL, in any case), within what "
    "the caller may see: an exec asking for INTERNAL gets an empty list. Absent: every one it "
    "may see. Another value, or the parameter twice, is 400.",
    "schema": {
        "type": "string",
        "pattern": "^(" + "|".join(_any_case(v.name) for v in Visibility) + ")$",
    },
}
_INCLUDE_RETIRED_PARAMETER = {
    "name": "includeRetired",
    "in": "query",
    "required": False,
    "description": "Also list retired KPIs: true or false (the default). Another value, or the "
    "parameter twice, is 400.",
    "schema": {"type": "boolean", "default": False},
}
_ID_PARAMETER = {
    "name": "id",
    "in": "path",
    "required": True,
    "description": "The external incident key, e.g. INC-2041. Any other string, or an incident "
    "that does not exist, is 404.",
    "schema": {"type": "string", "minLength": 1, **_INCIDENT_KEY},
    "example": "INC-2041",
}
_KPI_PARAMETER = {
    "name": "kpi",
    "in": "query",
    "required": False,
    "description": "Only these KPIs' observations (repeat it: ?kpi=a&kpi=b), as "
    "incident.kpis(slugs:); a slug that does not exist or that the caller may not see is "
    "simply absent from the answer. Absent: every KPI the caller may see.",
    "schema": {"type": "array", "items": {"type": "string", **_SLUG}},
    "style": "form",
    "explode": True,
}


def _paths() -> dict[str, Any]:
    kpis = {"$ref": "#/components/schemas/KpiDefinition"}
    health = _object({"status": {"const": "ok"}}, "The process is up.")
    ready = _object(
        {"status": {"const": "ok"}, "database": {"const": "ready"}},
        "The database is reachable and migrated.",
    )
    not_ready = {
        "type": "object",
        "description": "Why the service is not ready.",
        "required": ["status", "database"],
        "properties": {
            "status": {"const": "unavailable"},
            "database": {"enum": ["unreachable", "migrations pending"]},
            "pending": {
                "type": "array",
                "items": {"type": "string"},
                "description": "The shipped migrations the database has not run.",
            },
        },
        "additionalProperties": False,
    }
    readyz = _operations(
        "/readyz",
        summary="Readiness",
        description="200 when the database is reachable and every shipped migration has run; "
        "503 otherwise. Never shed.",
        ok=_plain("Ready.", ready, "application/json"),
        statuses=[],
        public=True,
    )
    for operation in readyz.values():
        operation["responses"]["503"] = {
            "description": "Not ready (or the check ran past the request's time limit).",
            "headers": {"X-Request-ID": _REQUEST_ID},
            "content": _json({"anyOf": [not_ready, _error(_ERROR_CODES[503])]}),
        }
    return {
        "/kpis": _operations(
            "/kpis",
            summary="The KPI definitions the caller may see",
            description="As the GraphQL query kpis(visibility:, includeRetired:): by slug, "
            "active ones only unless includeRetired, fields as GraphQL names and writes them.",
            ok=_tagged(
                "The definitions.",
                _object({"kpis": {"type": "array", "items": kpis}}, "The definitions, by slug."),
            ),
            statuses=[403],
            parameters=[_VISIBILITY_PARAMETER, _INCLUDE_RETIRED_PARAMETER],
            not_modified=_ref(304),
        ),
        "/kpis/{slug}": _operations(
            "/kpis/{slug}",
            summary="One KPI definition",
            description="As the GraphQL query kpi(slug:), retired KPIs included.",
            ok=_tagged("The definition.", _object({"kpi": kpis}, "The definition.")),
            statuses=[403, 404],
            parameters=[_SLUG_PARAMETER],
            not_modified=_ref(304),
        ),
        "/incidents/{id}/kpis": _operations(
            "/incidents/{id}/kpis",
            summary="An incident and its observations of the KPIs the caller may see",
            description="As the GraphQL query incident(id:) { ... kpis(slugs:) }: the "
            "observations by KPI slug, then timestamp.",
            ok=_tagged(
                "The incident and its observations.",
                _object(
                    {
                        "incident": {"$ref": "#/components/schemas/Incident"},
                        "kpis": {
                            "type": "array",
                            "items": {"$ref": "#/components/schemas/KpiObservation"},
                        },
                    },
                    "The incident and its observations.",
                ),
            ),
            statuses=[403, 404],
            parameters=[_ID_PARAMETER, _KPI_PARAMETER],
            not_modified=_ref(304),
        ),
        "/healthz": _operations(
            "/healthz",
            summary="Liveness",
            description="200 while the process serves requests; reads nothing. Never shed.",
            ok=_plain("Up.", health, "application/json"),
            statuses=[],
            public=True,
        ),
        "/readyz": readyz,
        "/metrics": _operations(
            "/metrics",
            summary="Metrics, in the Prometheus text format",
            description="For Authorization: Bearer $MIM_METRICS_TOKEN or an admin token; any "
            "other valid token gets the 404 of an unknown route (docs/operations.md). Never "
            "shed. Not served when MIM_METRICS=0.",
            ok=_plain("The metrics.", {"type": "string"}, "text/plain"),
            statuses=[404],
        ),
        PATH: _operations(
            PATH,
            summary="This document",
            description="The OpenAPI document of these routes; static, served without a token.",
            ok={
                **_plain(
                    "This document.",
                    {"type": "object", "required": ["openapi", "info", "paths"]},
                    "application/json",
                ),
                "headers": {
                    "ETag": _ETAG,
                    "Cache-Control": _header("Always no-cache.", const="no-cache"),
                    "X-Request-ID": _REQUEST_ID,
                },
            },
            statuses=[],
            public=True,
            not_modified=_not_modified("no-cache"),
        ),
    }


@cache
def document() -> dict[str, Any]:
    """Return the OpenAPI document."""
    outside = "; ".join(f"{path} ({reason})" for path, reason in OUTSIDE.items())
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "mim: the REST mirror, health and metrics",
            "version": version("mim-kpi"),
            "description": "The JSON routes of mim, the KPI source of truth for incident "
            "management, beside GraphQL. Every route needs Authorization: Bearer <JWT> but "
            "/healthz, /readyz and /openapi.json. Errors have GraphQL's shape, {errors: "
            "[{message, extensions: {code}}]}. Answers larger than 1 KiB are gzip-compressed "
            "for callers that accept it. Not described here: " + outside + ".",
        },
        "security": [{"bearer": []}],
        "paths": _paths(),
        "components": _components(),
    }


def operations(found: dict[str, Any]) -> set[tuple[str, str]]:
    """Return every (METHOD, path) a document describes."""
    return {
        (method.upper(), path)
        for path, item in found["paths"].items()
        for method in item
        if method in _METHODS
    }


@cache
def text() -> str:
    """Return the document as served and checked in (docs/openapi.json)."""
    return json.dumps(document(), indent=2, ensure_ascii=False) + "\n"


@cache
def _tag() -> str:
    return '"' + hashlib.sha256(text().encode()).hexdigest()[:40] + '"'


async def serve(request: web.Request) -> web.Response:
    """Answer GET /openapi.json: the document, or 304 when the caller holds its tag."""
    headers = {"ETag": _tag(), "Cache-Control": "no-cache"}
    held = request.headers.get("If-None-Match")
    if request.method == "GET" and revalidation.matches(held, _tag(), exists=True):
        return web.Response(status=304, headers=headers)
    return web.Response(
        text=text(), content_type="application/json", charset="utf-8", headers=headers
    )


if __name__ == "__main__":
    print(text(), end="")
