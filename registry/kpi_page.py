"""The KPI Source of Truth page, rendered in Markdown from the registry for one viewer.

The page the service was specified from, kept true by generating it: it reads the definitions and
revisions through the services, with the viewer, so the visibility policy decides what it holds
(an internal KPI leaves no trace on an exec's page, not even in a count).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime

from registry import kpis
from registry.model import Comparison, Definition, KpiStatus, Revision, Target, Viewer

# The fields the seed page lists per KPI, and the two the service added (expression, status).
FIELDS = (
    ("slug", "Lowercase identifier used in API and DB (mttr, cadence-adherence)."),
    ("name", "Friendly display name."),
    ("description", "What the KPI measures and why it matters."),
    ("formula", "Human-readable formula; the service computes `expression`."),
    ("expression", "Machine formula the service computes (docs/formulas.md); none: ingested."),
    ("units", "e.g., minutes, percentage, count."),
    ("targets", "Optional thresholds by severity or persona (e.g., P1 target 60m)."),
    ("data_sources", "Which events/fields power it (timeline events, milestones, alerts)."),
    (
        "visibility",
        "internal or exec; controls where it renders (exec and stakeholder see exec KPIs only).",
    ),
    ("owner", "Role or person accountable for accuracy."),
    ("review_cadence", "How often the definition is re-validated (ISO 8601 duration)."),
    ("status", "active, or retired: kept with its history, no longer computed or ingested."),
)
CURRENT_HEADER = (
    "slug",
    "name",
    "description",
    "units",
    "formula (conceptual)",
    "targets",
    "visibility",
    "owner",
    "review cadence",
    "next review due",
)
RETIRED_HEADER = ("slug", "name", "retired since", "version", "note")
CHANGE_LOG_HEADER = ("date (UTC)", "KPI", "version", "author", "note", "fields changed")
NONE = "—"
_RETIRED = json.dumps(KpiStatus.RETIRED.value)
# Every line break a renderer might honour; a cell must stay on one line.
_LINE_BREAK = re.compile("\r\n|[\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029]")
_CADENCE = re.compile(r"P(\d+)([DWMY])")
_CADENCE_UNITS = {"D": "day", "W": "week", "M": "month", "Y": "year"}


async def render(*, viewer: Viewer, now: datetime) -> str:
    """Return the KPI Source of Truth page in Markdown: only what `viewer` may see."""
    if now.utcoffset() is None:
        raise ValueError("now must be an aware date-time")
    now = now.astimezone(UTC)
    definitions = sorted(
        await kpis.list_definitions(viewer=viewer, include_retired=True), key=lambda d: d.slug
    )
    # Filtered again by the KPIs' visibility at this read: a KPI made internal since the first
    # read keeps its definition's row (then visible) but shows no revision.
    history = await kpis.revisions_by_slug(viewer=viewer, slugs=[d.slug for d in definitions])
    active = [d for d in definitions if d.status is KpiStatus.ACTIVE]
    retired = [d for d in definitions if d.status is KpiStatus.RETIRED]
    sections = [
        _intro(now, viewer),
        _fields(),
        _current(active, now),
        _retired(retired, history) if retired else "",
        _change_log(history),
    ]
    return "\n".join(s for s in sections if s)


def _intro(now: datetime, viewer: Viewer) -> str:
    return (
        "# KPI Source of Truth\n\n"
        "The human-readable source for every KPI we track. This page is generated from the KPI"
        " registry (the database the API serves); do not edit it by hand: change a definition"
        " in the definitions file (`mim kpi apply`, docs/definitions-as-code.md) or through"
        " the API, and generate the page again.\n\n"
        f"Generated at {_minute(now)} UTC, as seen by {_personas(viewer)}.\n"
    )


def _personas(viewer: Viewer) -> str:
    """Return who the page was rendered for: "the exec persona", "the admin and exec personas"."""
    names = sorted(p.value for p in viewer.personas)
    if len(names) == 1:
        return f"the {names[0]} persona"
    return f"the {', '.join(names[:-1])} and {names[-1]} personas"


def _fields() -> str:
    return "## Fields to capture (per KPI)\n\n" + table(("Field", "Description"), FIELDS)


def _current(active: Sequence[Definition], now: datetime) -> str:
    rows = [
        (
            d.slug,
            d.name,
            d.description,
            d.units,
            d.formula,
            targets_text(d.targets, d.units),
            d.visibility.value,
            d.owner,
            cadence_text(d.review_cadence),
            _due(d.review_due_at, now),
        )
        for d in active
    ]
    body = table(CURRENT_HEADER, rows) if rows else "No active KPIs.\n"
    return "## Current KPIs\n\n" + body


def _retired(retired: Sequence[Definition], history: dict[str, list[Revision]]) -> str:
    rows = []
    for d in retired:
        since = _retirement(history.get(d.slug, []))
        rows.append(
            (
                d.slug,
                d.name,
                _minute(since.changed_at) if since else NONE,
                str(since.version) if since else NONE,
                (since.note or NONE) if since else NONE,
            )
        )
    return "## Retired KPIs\n\n" + table(RETIRED_HEADER, rows)


def _retirement(revisions: Iterable[Revision]) -> Revision | None:
    """Return the latest revision that set the status to retired."""
    setting = [
        r for r in revisions if any(c.field == "status" and c.after == _RETIRED for c in r.changes)
    ]
    return max(setting, key=lambda r: r.version, default=None)


def _change_log(history: dict[str, list[Revision]]) -> str:
    entries = sorted(
        ((slug, r) for slug, found in history.items() for r in found),
        key=lambda e: (e[0], -e[1].version),
    )
    # Stable: newest first, ties by slug, then newest version first.
    entries.sort(key=lambda e: e[1].changed_at, reverse=True)
    rows = [
        (
            _minute(r.changed_at),
            slug,
            str(r.version),
            r.changed_by,
            r.note or NONE,
            ", ".join(c.field for c in r.changes) or NONE,
        )
        for slug, r in entries
    ]
    body = table(CHANGE_LOG_HEADER, rows) if rows else "No revisions.\n"
    return "## Change log\n\nNewest first; every change to a definition is a revision.\n\n" + body


def table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """Return a Markdown table, every cell escaped so that it stays one cell on one line."""
    lines = [_row(header), "|" + "---|" * len(header)]
    lines.extend(_row(row) for row in rows)
    return "\n".join(lines) + "\n"


def _row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cell(c) for c in cells) + " |"


def cell(text: str) -> str:
    """Return text escaped for a table cell: no raw HTML, no pipe or line break of its own."""
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    # Backslashes first: in a GFM table a backslash escapes the character after it, a pipe too.
    text = text.replace("\\", "\\\\").replace("|", "\\|")
    return _LINE_BREAK.sub("<br>", text).strip()


def targets_text(targets: Iterable[Target], units: str) -> str:
    """Return targets as the seed page writes them: "P1: ≤120 minutes, P2: ≤240 minutes"."""
    ordered = sorted(
        targets,
        key=lambda t: (
            t.severity.value if t.severity else "",
            t.persona.value if t.persona else "",
        ),
    )
    return ", ".join(_target_text(t, units) for t in ordered) or NONE


def _target_text(target: Target, units: str) -> str:
    sign = "≤" if target.comparison is Comparison.AT_MOST else "≥"
    value = f"{sign}{number(target.threshold)} {units}".rstrip()
    persona = f"{target.persona.value} persona" if target.persona else None
    if target.severity and persona:
        return f"{target.severity.value} ({persona}): {value}"
    label = target.severity.value if target.severity else persona
    return f"{label}: {value}" if label else value


def number(value: float) -> str:
    """Return a threshold as people write it: 120, 4.5, 0.25 (never 120.0)."""
    return str(int(value)) if value.is_integer() else repr(value)


def cadence_text(cadence: str) -> str:
    """Return a review cadence in words where it is one unit ("90 days (P90D)"), else as is."""
    match = _CADENCE.fullmatch(cadence)
    if match is None:
        return cadence
    count, unit = int(match[1]), _CADENCE_UNITS[match[2]]
    return f"{count} {unit}{'' if count == 1 else 's'} ({cadence})"


def _due(due: datetime | None, now: datetime) -> str:
    if due is None:
        return NONE
    day = due.astimezone(UTC).strftime("%Y-%m-%d")
    return f"{day} (overdue)" if due < now else day


def _minute(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M")
