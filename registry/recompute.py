"""Recompute jobs: a KPI's computed observations rewritten in the background, batch by batch.

A definition change that needs its KPI recomputed queues a job inside its own transaction and
commits at once, however many incidents there are. A runner claims the job with a lease, computes
one batch of incidents per transaction and records its progress in that same transaction, so a job
resumes exactly after the last committed batch when its worker restarts, and another worker takes
it over once the lease has run out. Each KPI has one job row: queuing again starts it over for the
new definition version, and the runner of the old one stops at its next batch (Superseded).
Observations keep the definition version that wrote them until their batch is rewritten.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from piccolo.querystring import QueryString

from registry import compute, db, policy, validate
from registry.errors import AppError, BadInput
from registry.model import Recompute, RecomputeState, Viewer
from registry.tables import KpiDefinition

log = logging.getLogger("mim.recompute")

# A runner renews its lease with every batch; one that stops renewing (its worker died) loses the
# job to the next runner that looks once this much time has passed.
LEASE = timedelta(seconds=60)
_ACTIVE = (RecomputeState.QUEUED.value, RecomputeState.RUNNING.value)
_COLUMNS = (
    "kpi, version, state, done, total, written, skipped, queued_at, started_at, finished_at, error"
)


class Superseded(Exception):
    """The job was queued again, or taken over, while this runner held it."""


async def queue(slug: str, version: int) -> None:
    """Queue (or start over) the KPI's job for a definition version, in the caller's transaction."""
    now = datetime.now(UTC)
    total = await compute.incident_count()
    await _run(
        "INSERT INTO kpi_recompute (kpi, version, state, done, total, written, skipped, "
        "after_incident, queued_at) VALUES ({}, {}, {}, 0, {}, 0, 0, 0, {}) "
        "ON CONFLICT (kpi) DO UPDATE SET version = excluded.version, state = excluded.state, "
        "done = 0, total = excluded.total, written = 0, skipped = 0, after_incident = 0, "
        "queued_at = excluded.queued_at, started_at = NULL, finished_at = NULL, error = NULL, "
        "runner = NULL, lease_until = NULL",
        slug,
        version,
        RecomputeState.QUEUED.value,
        total,
        now,
    )


async def cancel(slug: str) -> None:
    """Drop the KPI's job (its expression is gone), in the caller's transaction."""
    await _run("DELETE FROM kpi_recompute WHERE kpi = {}", slug)


async def request(*, viewer: Viewer, slug: str) -> None:
    """Queue a recompute of one KPI from incident data; admins only."""
    policy.require(viewer, policy.Action.DEFINE)
    if not validate.is_slug(slug):
        raise BadInput(f"unknown KPI slug, or one without an expression or retired: {slug!r}")
    async with db.transaction():
        rows = await KpiDefinition.select(KpiDefinition.version).where(
            KpiDefinition.slug == slug,
            KpiDefinition.expression.is_not_null(),
            KpiDefinition.status == "active",
        )
        if not rows:
            raise BadInput(f"unknown KPI slug, or one without an expression or retired: {slug!r}")
        await queue(slug, rows[0]["version"])


async def jobs_by_slug(*, viewer: Viewer, slugs: Sequence[str]) -> dict[str, Recompute]:
    """Return the jobs of those of these KPIs the viewer may see, keyed by slug."""
    wanted = sorted({s for s in slugs if validate.is_slug(s)})
    if not wanted:
        return {}
    args: list[Any] = []
    marks = db.Marks(args)
    rows = await _run(
        f"SELECT {_COLUMNS} FROM kpi_recompute WHERE kpi {marks.one_of(wanted)} AND kpi IN "
        f"(SELECT slug FROM kpi_definition WHERE {policy.visible(viewer, 'visibility', marks)})",
        *args,
    )
    return {row["kpi"]: _job(row) for row in rows}


async def progress() -> list[dict[str, Any]]:
    """Return, per job state, how many jobs, incidents scanned and to scan, and the oldest's age.

    Every KPI's jobs together: the figures name no KPI.
    """
    rows = await db.fetch(
        "SELECT state, count(*) AS jobs, coalesce(sum(done), 0) AS done, "
        "coalesce(sum(total), 0) AS total, min(queued_at) AS oldest "
        "FROM kpi_recompute GROUP BY state",
        (),
    )
    now = datetime.now(UTC)
    found = []
    for row in rows:
        oldest = row["oldest"]
        if isinstance(oldest, str):  # SQLite keeps timestamps as text
            oldest = datetime.fromisoformat(oldest)
        age = (now - oldest).total_seconds() if oldest is not None else None
        found.append({"state": row["state"], "jobs": int(row["jobs"]), "done": int(row["done"]),
                      "total": int(row["total"]), "age": age})  # fmt: skip
    return found


async def claimable() -> list[str]:
    """Return the KPIs whose jobs wait for a runner: queued, or running under a lapsed lease."""
    rows = await _run(
        "SELECT kpi FROM kpi_recompute WHERE state IN ({}, {}) "
        "AND (lease_until IS NULL OR lease_until < {}) ORDER BY queued_at, kpi",
        *_ACTIVE,
        datetime.now(UTC),
    )
    return [row["kpi"] for row in rows]


@dataclass(frozen=True, slots=True)
class _Claim:
    version: int
    after: int


async def run(slug: str, runner: str, *, batch_size: int | None = None) -> bool:
    """Claim the KPI's job and run it to its end; return whether this runner ran it.

    False: another runner holds it, or it was queued again while it ran (the caller looks again).
    """
    claim = await _claim(slug, runner)
    if claim is None:
        return False
    kpis = await compute.computed_kpis([slug])
    if not kpis:
        async with db.transaction():
            await _run("DELETE FROM kpi_recompute WHERE kpi = {} AND runner = {}", slug, runner)
        return True

    async def progress(hi: int, scanned: int, written: int, skipped: int) -> None:
        # In the batch's own transaction: its rows and its progress commit together.
        renewed = await _run(
            "UPDATE kpi_recompute SET after_incident = {}, done = done + {}, "
            "written = written + {}, skipped = skipped + {}, lease_until = {} "
            "WHERE kpi = {} AND version = {} AND runner = {} RETURNING kpi",
            hi,
            scanned,
            written,
            skipped,
            datetime.now(UTC) + LEASE,
            slug,
            claim.version,
            runner,
        )
        if not renewed:
            raise Superseded(slug)

    try:
        await compute.run_one(
            kpis[0],
            after=claim.after,
            batch_size=batch_size or compute.BATCH_SIZE,
            on_batch=progress,
        )
    except Superseded:
        return False
    except Exception as error:
        await _stop(slug, claim.version, runner, error)
        raise
    await _finish(slug, claim.version, runner, RecomputeState.DONE, None)
    return True


async def _claim(slug: str, runner: str) -> _Claim | None:
    now = datetime.now(UTC)
    async with db.transaction():
        rows = await _run(
            "UPDATE kpi_recompute SET state = {}, runner = {}, lease_until = {}, "
            "started_at = coalesce(started_at, {}) WHERE kpi = {} AND state IN ({}, {}) "
            "AND (lease_until IS NULL OR lease_until < {}) RETURNING version, after_incident",
            RecomputeState.RUNNING.value,
            runner,
            now + LEASE,
            now,
            slug,
            *_ACTIVE,
            now,
        )
    if not rows:
        return None
    return _Claim(rows[0]["version"], rows[0]["after_incident"])


async def _stop(slug: str, version: int, runner: str, error: BaseException) -> None:
    """After a failed batch: let a transient fault be retried, record any other as the end."""
    if db.is_transient(error) or db.is_timeout(error):
        # The database went away or was slow: the next runner to look resumes the job.
        await _run(
            "UPDATE kpi_recompute SET runner = NULL, lease_until = NULL "
            "WHERE kpi = {} AND version = {} AND runner = {}",
            slug,
            version,
            runner,
        )
        return
    message = error.message if isinstance(error, AppError) else "internal error (see the log)"
    await _finish(slug, version, runner, RecomputeState.FAILED, message)


async def _finish(
    slug: str, version: int, runner: str, state: RecomputeState, error: str | None
) -> None:
    async with db.transaction():
        await _run(
            "UPDATE kpi_recompute SET state = {}, error = {}, finished_at = {}, runner = NULL, "
            "lease_until = NULL, total = CASE WHEN done > total THEN done ELSE total END "
            "WHERE kpi = {} AND version = {} AND runner = {}",
            state.value,
            error,
            datetime.now(UTC),
            slug,
            version,
            runner,
        )


def _job(row: Mapping[str, Any]) -> Recompute:
    return Recompute(
        kpi=row["kpi"],
        version=row["version"],
        state=RecomputeState(row["state"]),
        done=row["done"],
        total=row["total"],
        written=row["written"],
        skipped=row["skipped"],
        queued_at=row["queued_at"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        error=row["error"],
    )


async def _run(sql: str, *args: Any) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = await db.engine().run_querystring(QueryString(sql, *args))
    return rows
