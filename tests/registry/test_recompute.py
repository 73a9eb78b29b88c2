"""Recompute jobs: a definition change commits at once and its KPI is recomputed in the background,
one batch per transaction, resumable after a restart, one runner per KPI at a time."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from registry import compute, db, recompute
from registry.model import Persona, Viewer
from registry.tables import Incident, KpiObservation, KpiRecompute, KpiRevision
from server.app import create_app
from server.config import Settings
from tests.conftest import ENV, codes, gql

T0 = datetime(2026, 1, 1, tzinfo=UTC)
INCIDENTS = 12
MTTR = "minutes(resolved_at - detected_at)"
DOUBLED = "2 * minutes(resolved_at - detected_at)"
UPDATE = """
mutation ($e: String) {
  updateKpiDefinition(slug: "mttr", input: {expression: $e}, note: "recompute test") {
    version recompute { state version done total startedAt finishedAt error }
  }
}
"""
STATE = '{ kpi(slug: "mttr") { version recompute { state version done total error } } }'


async def some_incidents(count: int = INCIDENTS) -> None:
    await Incident.insert(
        *(
            Incident(
                key=f"INC-{n}",
                title="t",
                severity="P1",
                detected_at=T0 + timedelta(hours=n),
                resolved_at=T0 + timedelta(hours=n, minutes=10 + n),
            )
            for n in range(count)
        )
    )


async def mttr_rows() -> dict[int, tuple[float, int]]:
    rows = await KpiObservation.select(
        KpiObservation.incident, KpiObservation.value, KpiObservation.definition_version
    ).where(KpiObservation.kpi == "mttr", KpiObservation.source == "computed")
    return {r["incident"]: (r["value"], r["definition_version"]) for r in rows}


@pytest.fixture
async def unwaiting() -> AsyncIterator[TestClient]:
    """A server whose mutations answer without waiting for the recompute they queue."""
    settings = Settings.from_env({**ENV, "MIM_RECOMPUTE_WAIT": "0"})
    async with TestClient(TestServer(create_app(settings))) as test_client:
        yield test_client


async def until_done(client: TestClient) -> dict[str, Any]:
    """Return the KPI's job once it has ended (bounded: it runs in this process's runner)."""
    for _ in range(500):
        body = await gql(client, STATE)
        job: dict[str, Any] = body["data"]["kpi"]["recompute"]
        if job["state"] in ("DONE", "FAILED"):
            return job
        await asyncio.sleep(0.02)
    raise AssertionError(f"the recompute did not end: {job}")


async def test_an_expression_change_commits_before_its_recompute_runs(unwaiting) -> None:
    await some_incidents()
    body = await gql(unwaiting, UPDATE, {"e": DOUBLED})
    assert "errors" not in body, body
    answered = body["data"]["updateKpiDefinition"]
    assert answered["version"] == 3
    # Answered with the job queued (or just started), the change already committed.
    assert answered["recompute"]["state"] in ("QUEUED", "RUNNING")
    assert answered["recompute"]["version"] == 3
    assert answered["recompute"]["total"] == INCIDENTS
    assert await KpiRevision.count().where(KpiRevision.note == "recompute test") == 1
    job = await until_done(unwaiting)
    assert job == {
        "state": "DONE",
        "version": 3,
        "done": INCIDENTS,
        "total": INCIDENTS,
        "error": None,
    }
    rows = await mttr_rows()
    assert len(rows) == INCIDENTS
    assert {version for _, version in rows.values()} == {3}
    assert sorted(value for value, _ in rows.values()) == [2.0 * (10 + n) for n in range(INCIDENTS)]


async def test_a_mutation_waits_for_a_short_recompute_and_shows_it_done(client) -> None:
    await some_incidents()
    body = await gql(client, UPDATE, {"e": DOUBLED})
    job = body["data"]["updateKpiDefinition"]["recompute"]
    assert job["state"] == "DONE"
    assert (job["done"], job["total"]) == (INCIDENTS, INCIDENTS)
    assert job["startedAt"] <= job["finishedAt"]
    assert len(await mttr_rows()) == INCIDENTS


async def test_backfill_reports_the_job_and_its_counts(client) -> None:
    await some_incidents()
    await KpiObservation.delete(force=True)
    body = await gql(
        client,
        'mutation { backfillKpi(slug: "mttr") { kpiSlug incidentsScanned observationsWritten '
        "skipped recompute { state done total } } }",
    )
    assert body["data"]["backfillKpi"] == {
        "kpiSlug": "mttr",
        "incidentsScanned": INCIDENTS,
        "observationsWritten": INCIDENTS,
        "skipped": 0,
        "recompute": {"state": "DONE", "done": INCIDENTS, "total": INCIDENTS},
    }


@pytest.mark.parametrize("slug", ["nope", "BAD SLUG", "x" * 65])
async def test_backfill_of_an_unknown_kpi_is_bad_input_and_queues_nothing(client, slug) -> None:
    body = await gql(
        client, "mutation ($s: String!) { backfillKpi(slug: $s) { skipped } }", {"s": slug}
    )
    assert codes(body) == ["BAD_USER_INPUT"]
    assert await KpiRecompute.count() == 0


@pytest.mark.parametrize("persona", ["exec", "stakeholder", "responder", "ingest"])
async def test_only_an_admin_may_queue_a_recompute(client, persona) -> None:
    body = await gql(client, 'mutation { backfillKpi(slug: "mttr") { skipped } }', persona=persona)
    assert codes(body) == ["FORBIDDEN"]
    assert await KpiRecompute.count() == 0


async def test_a_job_resumes_after_the_last_committed_batch_of_a_dead_worker(settings) -> None:
    await some_incidents()
    await KpiObservation.delete(force=True)
    ids = [r["id"] for r in await Incident.select(Incident.id).order_by(Incident.id)]
    # A worker died after committing the batches up to the fifth incident; its lease has run out.
    await KpiRecompute.insert(
        KpiRecompute(
            kpi="mttr",
            version=2,
            state="running",
            done=5,
            total=INCIDENTS,
            after_incident=ids[4],
            queued_at=T0,
            started_at=T0,
            runner="dead-worker",
            lease_until=datetime.now(UTC) - timedelta(seconds=1),
        )
    )
    async with TestClient(TestServer(create_app(settings))) as client:
        job = await until_done(client)
    assert job["done"] == INCIDENTS and job["state"] == "DONE"
    # Only the incidents after the last committed batch were computed by the new runner.
    assert sorted(await mttr_rows()) == ids[5:]


async def test_a_job_held_under_a_live_lease_is_left_to_its_runner(settings) -> None:
    await some_incidents()
    await recompute_row(runner="live-worker", lease=timedelta(minutes=1))
    async with TestClient(TestServer(create_app(settings))) as client:
        body = await gql(client, STATE)
    assert body["data"]["kpi"]["recompute"]["state"] == "RUNNING"
    assert await mttr_rows() == {}


async def recompute_row(*, runner: str | None, lease: timedelta | None) -> None:
    await KpiObservation.delete(force=True)
    await KpiRecompute.insert(
        KpiRecompute(
            kpi="mttr",
            version=2,
            state="running" if runner else "queued",
            total=INCIDENTS,
            queued_at=T0,
            runner=runner,
            lease_until=datetime.now(UTC) + lease if lease else None,
        )
    )


async def test_two_runners_never_run_one_job_at_once() -> None:
    await some_incidents()
    await recompute_row(runner=None, lease=None)
    ran = await asyncio.gather(recompute.run("mttr", "a"), recompute.run("mttr", "b"))
    assert sorted(ran) == [False, True]
    [job] = await KpiRecompute.select().where(KpiRecompute.kpi == "mttr")
    assert (job["state"], job["done"], job["runner"]) == ("done", INCIDENTS, None)
    assert len(await mttr_rows()) == INCIDENTS


async def test_a_job_queued_again_stops_the_old_run_and_its_batch_writes_nothing(
    monkeypatch,
) -> None:
    await some_incidents()
    await recompute_row(runner=None, lease=None)
    real = compute.run_one

    async def queued_again_meanwhile(kpi: Any, **options: Any) -> None:
        async with db.transaction():
            await recompute.queue("mttr", 5)
        await real(kpi, **options)

    monkeypatch.setattr(compute, "run_one", queued_again_meanwhile)
    assert await recompute.run("mttr", "a") is False
    [job] = await KpiRecompute.select().where(KpiRecompute.kpi == "mttr")
    assert (job["state"], job["version"], job["done"], job["runner"]) == ("queued", 5, 0, None)
    assert await mttr_rows() == {}  # the superseded batch was rolled back


async def test_a_failed_job_says_so_without_internals(monkeypatch) -> None:
    await some_incidents()
    await recompute_row(runner=None, lease=None)

    async def broken(kpi: Any, **options: Any) -> None:
        raise ValueError("secret detail /etc/passwd")

    monkeypatch.setattr(compute, "run_one", broken)
    with pytest.raises(ValueError):
        await recompute.run("mttr", "a")
    [job] = await KpiRecompute.select().where(KpiRecompute.kpi == "mttr")
    assert job["state"] == "failed"
    assert job["error"] == "internal error (see the log)"
    assert job["finished_at"] is not None


async def test_removing_the_expression_drops_the_job(client) -> None:
    await some_incidents()
    await gql(client, UPDATE, {"e": DOUBLED})
    body = await gql(client, UPDATE, {"e": None})
    assert body["data"]["updateKpiDefinition"]["recompute"] is None
    assert await KpiRecompute.count() == 0
    assert await mttr_rows() == {}


@pytest.mark.parametrize("persona", ["exec", "stakeholder"])
async def test_a_restricted_persona_sees_no_job_of_an_internal_kpi(client, persona) -> None:
    await some_incidents()
    await gql(client, 'mutation { backfillKpi(slug: "mtta") { skipped } }')
    assert await KpiRecompute.count().where(KpiRecompute.kpi == "mtta") == 1
    assert await recompute.jobs_by_slug(viewer=viewer_of(persona), slugs=["mtta", "mttr"]) == {}
    body = await gql(client, "{ kpis { slug recompute { state } } }", persona=persona)
    assert "mtta" not in str(body)


def viewer_of(persona: str) -> Viewer:
    return Viewer(subject="t", personas=frozenset({Persona(persona)}))


async def test_an_unchanged_expression_queues_nothing(client) -> None:
    await some_incidents()
    body = await gql(
        client,
        'mutation { updateKpiDefinition(slug: "mttr", input: {name: "Mean time"}) '
        "{ recompute { state } } }",
    )
    assert body["data"]["updateKpiDefinition"]["recompute"] is None
    assert await KpiRecompute.count() == 0


async def test_backfill_whose_job_vanished_meanwhile_is_bad_input_not_internal(
    client, monkeypatch
) -> None:
    # The expression removed by another admin between the request and the answer drops the job.
    real = recompute.request

    async def removed_meanwhile(**options: Any) -> None:
        await real(**options)
        await KpiRecompute.delete().where(KpiRecompute.kpi == "mttr")

    monkeypatch.setattr(recompute, "request", removed_meanwhile)
    body = await gql(client, 'mutation { backfillKpi(slug: "mttr") { skipped } }')
    assert codes(body) == ["BAD_USER_INPUT"]
    assert "no longer has an expression" in body["errors"][0]["message"]
