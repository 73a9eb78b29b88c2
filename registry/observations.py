"""KPI observations: append-only, unique per (kpi, incident, timestamp), read under the policy."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from registry import db, model, policy, validate
from registry.errors import BadInput, Conflict
from registry.model import Observation, Viewer
from registry.rows import (
    COMPUTED,
    DEFINITION_COLUMNS,
    INCIDENT_COLUMN_NAMES,
    checked_columns,
    definition_of,
    incident_from_row,
)
from registry.tables import Incident, KpiDefinition, KpiObservation

MAX_BATCH = 1000


@dataclass(frozen=True, slots=True)
class ObservationInput:
    kpi_slug: str
    incident_key: str
    timestamp: datetime
    value: float
    source: str
    confidence: float = 1.0


async def record(*, viewer: Viewer, inputs: Sequence[ObservationInput]) -> list[Observation]:
    """Record observations all or nothing: a repeat is a no-op, another value a conflict."""
    policy.require(viewer, policy.Action.INGEST)
    if not 1 <= len(inputs) <= MAX_BATCH:
        raise BadInput(f"send between 1 and {MAX_BATCH} observations at a time")
    checked = [_checked(i, n) for n, i in enumerate(inputs)]
    _check_batch_duplicates(checked)
    now = datetime.now(UTC)
    async with db.transaction():
        slugs = await _known_slugs(viewer, {i.kpi_slug for i in checked})
        pks = await _incident_pks({i.incident_key for i in checked})
        rows = [_row(i, slugs, pks, now) for i in checked]
        await KpiObservation.insert(*rows).on_conflict(
            target=(KpiObservation.kpi, KpiObservation.incident, KpiObservation.timestamp),
            action="DO NOTHING",
        )
        stored = await _stored(rows)
        result = []
        for row in rows:
            existing = stored[(row.kpi, row.incident, row.timestamp)]
            if existing.value != row.value:
                raise Conflict(
                    f"an observation of {row.kpi!r} for this incident at "
                    f"{row.timestamp.isoformat()} exists with another value"
                )
            result.append(existing)
    return result


async def for_incidents(
    *, viewer: Viewer, pks: Sequence[int], slugs: Sequence[str] | None = None
) -> dict[int, list[Observation]]:
    """Return each incident's observations of the KPIs the viewer may see, by KPI then time."""
    found: dict[int, list[Observation]] = {pk: [] for pk in pks}
    for row in await rows_for_incidents(viewer=viewer, pks=pks, slugs=slugs):
        found[row["incident"]].append(_observation(row))
    return found


OBSERVATION_COLUMNS = (
    "kpi",
    "incident",
    "timestamp",
    "value",
    "source",
    "confidence",
    "definition_version",
)


async def rows_for_incidents(
    *,
    viewer: Viewer,
    pks: Sequence[int],
    slugs: Sequence[str] | None = None,
    definition_columns: Sequence[str] = (),
) -> Sequence[Mapping[str, Any]]:
    """Return the rows of the incidents' observations of KPIs the viewer may see, by KPI then
    time; each also carries its definition's `definition_columns`, prefixed `kpi_`."""
    if not pks:
        return []
    statement = db.statement()
    columns = [f"o.{c}" for c in OBSERVATION_COLUMNS]
    columns += [f"d.{c} AS kpi_{c}" for c in checked_columns(definition_columns)]
    sql = (
        f"SELECT {', '.join(columns)}"
        " FROM kpi_observation AS o JOIN kpi_definition AS d ON d.slug = o.kpi"
        f" WHERE {policy.visible(viewer, 'd.visibility', statement)}"
        f" AND o.incident {statement.one_of(sorted(set(pks)))}"
    )
    if slugs is not None:
        slugs = sorted({s for s in slugs if validate.is_slug(s)})
        if not slugs:
            return []
        sql += f" AND o.kpi {statement.one_of(slugs)}"
    return await db.fetch(sql + " ORDER BY o.kpi, o.timestamp", statement.args)


async def incident_with_observations(
    *,
    viewer: Viewer,
    key: str,
    slugs: Sequence[str] | None = None,
    definition_columns: Sequence[str] = (),
) -> tuple[Mapping[str, Any] | None, list[Mapping[str, Any]]]:
    """Return an incident's row and the rows of its observations of KPIs the viewer may see (as
    rows_for_incidents returns them), in one statement; (None, []) when there is no incident."""
    policy.require(viewer, policy.Action.READ)
    if not validate.is_incident_key(key):
        return None, []
    if slugs is not None:
        slugs = sorted({s for s in slugs if validate.is_slug(s)})
    statement = db.statement()
    columns = [f"i.{c}" for c in INCIDENT_COLUMN_NAMES]
    columns += [f"o.{c}" for c in OBSERVATION_COLUMNS]
    columns += [f"d.{c} AS kpi_{c}" for c in checked_columns(definition_columns)]
    observed = (
        f"o.incident = i.id AND o.kpi IN (SELECT slug FROM kpi_definition"
        f" WHERE {policy.visible(viewer, 'visibility', statement)})"
    )
    if slugs is not None:
        observed += f" AND o.kpi {statement.one_of(slugs)}" if slugs else " AND 1 = 0"
    sql = (
        f"SELECT {', '.join(columns)} FROM incident AS i"
        f" LEFT JOIN kpi_observation AS o ON {observed}"
        " LEFT JOIN kpi_definition AS d ON d.slug = o.kpi"
        f" WHERE i.key = {statement.arg(key)} ORDER BY o.kpi, o.timestamp"
    )
    rows = await db.fetch(sql, statement.args)
    if not rows:
        return None, []
    # The incident's columns and an observation's share no name, so one row serves as both.
    return rows[0], [row for row in rows if row["kpi"] is not None]


async def of_incident(
    *, viewer: Viewer, key: str, slugs: Sequence[str] | None = None
) -> tuple[model.Incident | None, list[tuple[Observation, model.Definition]]]:
    """Return an incident and its observations of KPIs the viewer may see, each with its KPI's
    definition, in one statement; (None, []) when there is no such incident."""
    row, rows = await incident_with_observations(
        viewer=viewer, key=key, slugs=slugs, definition_columns=DEFINITION_COLUMNS
    )
    if row is None:
        return None, []
    found = [(_observation(r), definition_of(r, prefix="kpi_")) for r in rows]
    return incident_from_row(row), found


def _checked(given: ObservationInput, n: int) -> ObservationInput:
    where = f"observation {n}: "
    try:
        checked = ObservationInput(
            kpi_slug=given.kpi_slug,
            incident_key=given.incident_key,
            timestamp=validate.utc(given.timestamp, "timestamp"),
            value=validate.measure(given.value, "value"),
            source=validate.text(given.source, "source", max_length=64),
            confidence=validate.in_range(given.confidence, "confidence", 0.0, 1.0),
        )
    except BadInput as error:
        raise BadInput(where + error.message) from None
    if checked.source.strip().lower() == COMPUTED:
        raise BadInput(f"{where}source {COMPUTED!r} is reserved for values the service computes")
    return checked


def _check_batch_duplicates(inputs: Sequence[ObservationInput]) -> None:
    seen: dict[tuple[str, str, datetime], float] = {}
    for given in inputs:
        key = (given.kpi_slug, given.incident_key, given.timestamp)
        if key in seen and seen[key] != given.value:
            raise Conflict(
                "the batch holds two different values for one (kpi, incident, timestamp)"
            )
        seen[key] = given.value


async def _known_slugs(viewer: Viewer, slugs: set[str]) -> set[str]:
    lookups = [s for s in slugs if validate.is_slug(s)]
    rows = await KpiDefinition.select(KpiDefinition.slug, KpiDefinition.status).where(
        policy.visible(viewer, KpiDefinition.visibility), KpiDefinition.slug.is_in(lookups or [""])
    )
    known = {row["slug"] for row in rows}
    unknown = sorted(slugs - known)
    if unknown:
        raise BadInput(f"unknown KPI slug {unknown[0]!r}")
    retired = sorted(row["slug"] for row in rows if row["status"] != "active")
    if retired:
        raise BadInput(f"KPI {retired[0]!r} is retired: it takes no new observations")
    return known


async def _incident_pks(keys: set[str]) -> dict[str, int]:
    for key in keys:
        validate.incident_key(key)
    query = Incident.select(Incident.id, Incident.key).where(Incident.key.is_in(list(keys)))
    if not db.is_sqlite():
        # Held until the batch commits: a concurrent change of these incidents' severity (whose
        # trigger moves their observations between rollup groups) waits for the batch, and the
        # batch for it, so no observation is left counted under a severity it no longer has.
        # SQLite writers take turns already. Locked in one order, so batches cannot deadlock.
        query = query.order_by(Incident.id).lock_rows("SHARE", of=(Incident,))
    found = {row["key"]: row["id"] for row in await query}
    missing = sorted(keys - found.keys())
    if missing:
        raise BadInput(f"unknown incident {missing[0]!r}")
    return found


def _row(
    given: ObservationInput, slugs: set[str], pks: dict[str, int], now: datetime
) -> KpiObservation:
    return KpiObservation(
        kpi=given.kpi_slug,
        incident=pks[given.incident_key],
        timestamp=given.timestamp,
        value=given.value,
        source=given.source,
        confidence=given.confidence,
        definition_version=None,
        recorded_at=now,
    )


async def _stored(rows: Sequence[KpiObservation]) -> dict[tuple[str, int, datetime], Observation]:
    stamps = [r.timestamp for r in rows]
    columns = [KpiObservation._meta.get_column_by_name(c) for c in OBSERVATION_COLUMNS]
    query = KpiObservation.select(*columns).where(
        KpiObservation.kpi.is_in(list({r.kpi for r in rows})),
        KpiObservation.incident.is_in(list({r.incident for r in rows})),
        KpiObservation.timestamp >= min(stamps),
        KpiObservation.timestamp <= max(stamps),
    )
    return {
        (row["kpi"], row["incident"], row["timestamp"]): _observation(row) for row in await query
    }


def _observation(row: Mapping[str, Any]) -> Observation:
    return Observation(
        kpi_slug=row["kpi"],
        incident_pk=row["incident"],
        timestamp=row["timestamp"],
        value=row["value"],
        source=row["source"],
        confidence=row["confidence"],
        definition_version=row["definition_version"],
        row=row,
    )
