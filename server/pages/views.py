"""The pages' handlers: each reads through the same domain services and policy as the API and
hands plain values to its template. A KPI the viewer may not see answers as an unknown one."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp_jinja2
from aiohttp import web
from markupsafe import Markup

from registry import generation, incidents, kpis, observations, policy, targets, trends
from registry.errors import AppError, BadInput
from registry.incidents import IncidentFilter
from registry.model import Definition, Severity, Summary, Target, Visibility
from registry.trends import Bucket, Point
from server.http import viewer_of
from server.pages import charts, session

WEEKS = 13
INCIDENTS_PER_PAGE = 25
# A review falls due this long before its date: the badge says "due" from then on.
DUE_SOON = timedelta(days=14)
SEVERITY_CHOICES = {"P1": Severity.P1, "P2": Severity.P2, "all": None}
# The catalogue's body, rendered, per (data generation, personas, minute): at most this many.
CACHED_CATALOGUES = 32


class Catalogues:
    """A worker's rendered catalogue bodies. The key holds everything a body depends on: the
    data generation (moved by every committed write, in every worker), the personas (what the
    viewer may see, and which targets apply) and the minute (review badges and the 13 weeks
    follow the clock); nothing of the session is in the body."""

    def __init__(self) -> None:
        self._bodies: OrderedDict[tuple[int, frozenset[str], datetime], Markup] = OrderedDict()

    def get(self, key: tuple[int, frozenset[str], datetime]) -> Markup | None:
        found = self._bodies.get(key)
        if found is not None:
            self._bodies.move_to_end(key)
        return found

    def put(self, key: tuple[int, frozenset[str], datetime], body: Markup) -> None:
        self._bodies[key] = body
        while len(self._bodies) > CACHED_CATALOGUES:
            self._bodies.popitem(last=False)


CATALOGUES = web.AppKey("page_catalogues", Catalogues)


def render(
    request: web.Request, template: str, context: dict[str, Any], status: int = 200
) -> web.Response:
    """Return a page: the template with what every page shows (who is signed in, the form token)."""
    found = request.get(session.SESSION)
    context = {
        "viewer": found.viewer if found is not None else None,
        "personas": sorted(p.value for p in found.viewer.personas) if found else [],
        "csrf": found.csrf if found is not None else None,
        "path": request.path,
        **context,
    }
    return aiohttp_jinja2.render_template(template, request, context, status=status)


def not_found(request: web.Request) -> web.StreamResponse:
    """The one answer for a page that does not exist or that the viewer may not see."""
    return render(request, "not_found.html", {"title": "Not found"}, status=404)


def bad_request(request: web.Request, error: AppError) -> web.StreamResponse:
    return render(
        request, "error.html", {"title": "Bad request", "message": error.message}, status=400
    )


def weeks_window(now: datetime, severity: Severity | None) -> trends.Window:
    """Return the last 13 weeks up to now, by week, for a severity (None: every severity)."""
    end = trends.next_start(trends.bucket_start(now, Bucket.WEEK), Bucket.WEEK)
    start = end - timedelta(weeks=WEEKS)
    return trends.Window.checked(Bucket.WEEK, start, end, severity)


@dataclass(frozen=True, slots=True)
class Review:
    state: str  # "ok", "due" or "overdue"
    due_at: datetime | None


def review(definition: Definition, now: datetime) -> Review:
    due = definition.review_due_at
    if due is None:
        return Review("ok", None)
    if due <= now:
        return Review("overdue", due)
    return Review("due" if due - now <= DUE_SOON else "ok", due)


@dataclass(frozen=True, slots=True)
class Card:
    """One KPI of the catalogue: its definition, P1 and P2 summaries, trend and review state."""

    definition: Definition
    p1: Summary
    p2: Summary
    trend: charts.Chart
    points: list[Point]
    review: Review


async def catalogue(request: web.Request) -> web.StreamResponse:
    viewer = viewer_of(request)
    now = datetime.now(UTC)
    # The generation is read before the data, so a body is at least as new as its key.
    personas = frozenset(p.value for p in viewer.personas)
    key = (await generation.current(), personas, now.replace(second=0, microsecond=0))
    catalogues = request.app[CATALOGUES]
    body = catalogues.get(key)
    if body is None:
        cards = await _cards(request, now)
        template = aiohttp_jinja2.get_env(request.app).get_template("_catalogue.html")
        body = Markup(template.render(cards=cards))
        catalogues.put(key, body)
    return render(request, "kpis.html", {"title": "KPI Source of Truth", "body": body})


async def _cards(request: web.Request, now: datetime) -> list[Card]:
    """Return the catalogue's cards: one statement each for the definitions, the P1 and P2
    summaries, and the trends."""
    viewer = viewer_of(request)
    found = await kpis.list_definitions(viewer=viewer)
    p1_window = kpis.SummaryWindow(severity=Severity.P1)
    p2_window = kpis.SummaryWindow(severity=Severity.P2)
    summaries = await kpis.summaries(
        viewer=viewer, keys=[(d, w) for d in found for w in (p1_window, p2_window)]
    )
    window = weeks_window(now, Severity.P1)
    series = await trends.series(viewer=viewer, keys=[(d, window) for d in found])
    return [
        Card(
            definition=d,
            p1=summaries[2 * i],
            p2=summaries[2 * i + 1],
            trend=charts.line_chart(points, d.units, width=160, height=40, compact=True),
            points=points,
            review=review(d, now),
        )
        for i, (d, points) in enumerate(zip(found, series, strict=True))
    ]


async def kpi_page(request: web.Request) -> web.StreamResponse:
    viewer = viewer_of(request)
    choice = request.query.get("severity", "P1")
    if choice not in SEVERITY_CHOICES or len(request.query.getall("severity", [])) > 1:
        return not_found(request)
    severity = SEVERITY_CHOICES[choice]
    definition = await kpis.get_definition(viewer=viewer, slug=request.match_info["slug"])
    if definition is None:
        return not_found(request)
    now = datetime.now(UTC)
    window = weeks_window(now, severity)
    (points,) = await trends.series(viewer=viewer, keys=[(definition, window)])
    (summary,) = await kpis.summaries(
        viewer=viewer, keys=[(definition, kpis.SummaryWindow(severity=severity))]
    )
    revisions = []
    if Visibility.INTERNAL in policy.visibilities(viewer):
        revisions = (await kpis.revisions_by_slug(viewer=viewer, slugs=[definition.slug]))[
            definition.slug
        ]
    context = {
        "title": definition.name,
        "d": definition,
        "trend": charts.line_chart(points, definition.units),
        "points": points,
        "summary": summary,
        "severity": choice,
        "choices": list(SEVERITY_CHOICES),
        "review": review(definition, now),
        "revisions": revisions,
    }
    return render(request, "kpi.html", context)


async def incident_list(request: web.Request) -> web.StreamResponse:
    viewer = viewer_of(request)
    choice = request.query.get("severity", "all")
    severity = None if choice == "all" else Severity.__members__.get(choice)
    repeated = any(len(request.query.getall(name, [])) > 1 for name in ("severity", "after"))
    if (choice != "all" and severity is None) or repeated:
        return bad_request(
            request, BadInput("give severity (P1, P2, P3, P4 or all) and after at most once")
        )
    after = request.query.get("after") or None
    page = await incidents.page(
        viewer=viewer,
        first=INCIDENTS_PER_PAGE,
        after=after,
        where=IncidentFilter(severity=severity),
    )
    context = {
        "title": "Incidents",
        "incidents": page.incidents,
        "next": page.cursors[-1] if page.has_next_page and page.cursors else None,
        "first_page": after is None,
        "severity": choice,
        "choices": ["all", *Severity.__members__],
    }
    return render(request, "incidents.html", context)


@dataclass(frozen=True, slots=True)
class Score:
    """A KPI's value for one incident against the target for the incident's severity."""

    definition: Definition
    value: float | None
    target: Target | None
    meets: bool | None
    timestamp: datetime | None


async def incident_page(request: web.Request) -> web.StreamResponse:
    viewer = viewer_of(request)
    incident, found = await observations.of_incident(viewer=viewer, key=request.match_info["id"])
    if incident is None:
        return not_found(request)
    latest: dict[str, tuple[float, datetime]] = {}
    for o, _ in found:  # by KPI, oldest first: the last one is the incident's current value
        latest[o.kpi_slug] = (o.value, o.timestamp)
    definitions = await kpis.list_definitions(viewer=viewer)
    scores = []
    for d in definitions:
        value, timestamp = latest.get(d.slug, (None, None))
        target = targets.applicable(d.targets, severity=incident.severity, personas=viewer.personas)
        meets = targets.meets(target, value)
        scores.append(Score(d, value, target, meets, timestamp))
    timeline = (await incidents.timeline_for(viewer=viewer, pks=[incident.pk]))[incident.pk]
    milestones = (await incidents.milestones_for(viewer=viewer, pks=[incident.pk]))[incident.pk]
    context = {
        "title": f"Incident {incident.key}",
        "incident": incident,
        "scores": scores,
        "timeline": timeline,
        "milestones": milestones,
    }
    return render(request, "incident.html", context)
