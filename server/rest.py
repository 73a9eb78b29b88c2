"""The REST mirror of the seed page, on the same services and policy as GraphQL."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from registry import kpis, observations, targets
from registry.errors import AppError, BadInput
from registry.model import Definition, Incident, Observation, Target, Visibility
from schema.fields import FromRow, json_value, row_fields
from schema.incidents import IncidentType
from schema.kpis import KpiDefinitionType
from schema.observations import KpiObservation
from server import revalidation
from server.http import error_response, viewer_of


def add_routes(app: web.Application) -> None:
    app.router.add_get("/kpis", list_kpis)
    app.router.add_get("/kpis/{slug}", get_kpi)
    app.router.add_get("/incidents/{id}/kpis", incident_kpis)


def _not_found() -> web.Response:
    # The same answer for "does not exist" and "may not see": nothing is revealed.
    return error_response(404, "NOT_FOUND", "Not found.")


def _app_error(error: AppError) -> web.Response:
    status = {"FORBIDDEN": 403, "BAD_USER_INPUT": 400, "CONFLICT": 409}.get(error.code, 500)
    return error_response(status, error.code, error.message)


def _one(request: web.Request, name: str) -> str | None:
    """Return a query parameter given at most once (None when absent)."""
    given = request.query.getall(name, [])
    if len(given) > 1:
        raise BadInput(f"give {name} at most once")
    return given[0] if given else None


def _flag(request: web.Request, name: str) -> bool:
    """`?name=true` or `false` (absent: false), as the GraphQL argument of the same name."""
    raw = _one(request, name)
    if raw is None or raw == "false":
        return False
    if raw == "true":
        return True
    raise BadInput(f"{name} must be true or false")


def _visibility(request: web.Request) -> Visibility | None:
    """`?visibility=EXEC` (or `exec`): only definitions of that visibility, within the caller's."""
    raw = _one(request, "visibility")
    if raw is None:
        return None
    try:
        return Visibility[raw.upper()]
    except KeyError:
        names = ", ".join(v.name for v in Visibility)
        raise BadInput(f"visibility must be one of {names}") from None


async def list_kpis(request: web.Request) -> web.Response:
    if (same := await revalidation.check(request, viewer_of(request), clock=True)) is not None:
        return same
    try:
        found = await kpis.list_definitions(
            viewer=viewer_of(request),
            visibility=_visibility(request),
            include_retired=_flag(request, "includeRetired"),
        )
    except AppError as error:
        return _app_error(error)
    return _json({"kpis": [definition_json(d) for d in found]})


async def get_kpi(request: web.Request) -> web.Response:
    if (same := await revalidation.check(request, viewer_of(request), clock=True)) is not None:
        return same
    try:
        found = await kpis.get_definition(
            viewer=viewer_of(request), slug=request.match_info["slug"]
        )
    except AppError as error:
        return _app_error(error)
    if found is None:
        return _not_found()
    return _json({"kpi": definition_json(found)})


async def incident_kpis(request: web.Request) -> web.Response:
    viewer = viewer_of(request)
    if (same := await revalidation.check(request, viewer, clock=False)) is not None:
        return same
    try:
        # `?kpi=mttr&kpi=mtta`: only those KPIs' observations (as `incident.kpis(slugs:)`).
        incident, found = await observations.of_incident(
            viewer=viewer, key=request.match_info["id"], slugs=request.query.getall("kpi", None)
        )
    except AppError as error:
        return _app_error(error)
    if incident is None:
        return _not_found()
    body = {
        "incident": incident_json(incident),
        "kpis": [observation_json(o, d, incident, viewer.personas) for o, d in found],
    }
    return _json(body)


def _json(body: dict[str, Any]) -> web.Response:
    return web.Response(body=orjson.dumps(body), content_type="application/json", charset="utf-8")


def target_json(target: Target) -> dict[str, Any]:
    return {
        "severity": target.severity.name if target.severity else None,
        "persona": target.persona.name if target.persona else None,
        "comparison": target.comparison.name,
        "threshold": target.threshold,
    }


def definition_json(d: Definition) -> dict[str, Any]:
    """Return a definition as GraphQL writes a KpiDefinition, from the same field declarations."""
    found: dict[str, Any] = {}
    for name, declaration in row_fields(KpiDefinitionType):
        found[name] = json_value(declaration.read(d.row))
        if name == "units":  # the seed page's order: targets come after the units
            found["targets"] = [target_json(t) for t in d.targets]
    return found


def incident_json(i: Incident) -> dict[str, Any]:
    """Return an incident as GraphQL writes an Incident's own fields."""
    return _row_json(_INCIDENT_FIELDS, i.row)


def observation_json(o: Observation, d: Definition, i: Incident, personas: Any) -> dict[str, Any]:
    target = targets.applicable(d.targets, severity=i.severity, personas=personas)
    return {
        "kpiSlug": o.kpi_slug,
        "kpiName": d.name,
        "units": d.units,
        **_row_json(_OBSERVATION_FIELDS, o.row),
        "meetsTarget": targets.meets(target, o.value),
    }


def _row_json(fields: list[tuple[str, FromRow]], row: Any) -> dict[str, Any]:
    return {name: json_value(declaration.read(row)) for name, declaration in fields}


_INCIDENT_FIELDS = row_fields(IncidentType)
_OBSERVATION_FIELDS = row_fields(KpiObservation)
