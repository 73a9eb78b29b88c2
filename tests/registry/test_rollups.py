"""Rollups: kept exact by the database after every kind of write, read back as summaries.

Each check recomputes the rollups here from the raw rows (calendar arithmetic in Python) and
compares them with every row of `kpi_rollup`: after random sequences of ingest, rewrites, incident
upserts (live recompute, severity changes), backfills, definition changes, removed expressions and
deleted incidents; after the migration builds them for existing rows; after `mim kpi backfill`
rebuilds them.
"""

from __future__ import annotations

import importlib
import math
import random
import statistics
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from piccolo.apps.migrations.commands.backwards import run_backwards
from piccolo.apps.migrations.commands.forwards import run_forwards

from registry import db, rollups
from registry.tables import Incident, KpiObservation
from tests.conftest import gql, run_seed
from tests.registry.test_trends import floor_bucket
from tests.server.test_cli import mim, needs_mim

UPSERT = "mutation ($input: IncidentInput!) { upsertIncident(input: $input) { id } }"
RECORD = """
mutation ($inputs: [RecordObservationInput!]!) { recordObservations(inputs: $inputs) { value } }
"""
CREATE = """
mutation ($input: CreateKpiDefinitionInput!) { createKpiDefinition(input: $input) { slug } }
"""
UPDATE = """
mutation ($slug: String!, $input: UpdateKpiDefinitionInput!) {
  updateKpiDefinition(slug: $slug, input: $input) { version }
}
"""
BACKFILL = "mutation ($slug: String!) { backfillKpi(slug: $slug) { state } }"
SUMMARY = """
query ($slug: String!, $from: DateTime, $to: DateTime, $severity: Severity) {
  kpi(slug: $slug) { summary(from: $from, to: $to, severity: $severity) { count value asOf } }
}
"""
GRAINS = {"D": "DAY", "W": "WEEK", "M": "MONTH"}
SEVERITIES = ("P1", "P2", "P3", "P4")
PROBES = ("probe-a", "probe-b")  # ingested only; probe-b is internal
EXPRESSIONS = ("minutes(resolved_at - detected_at)", "hours(resolved_at - detected_at)")
ROLLUP_MIGRATION = "2026-12-03T11:00:00:000000"


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


async def ok(client: Any, query: str, variables: dict[str, Any], persona: str = "admin") -> Any:
    body = await gql(client, query, variables, persona=persona)
    assert "errors" not in body, body
    return body["data"]


async def raw_rows() -> list[dict[str, Any]]:
    """Every observation with its incident's severity, read without the service."""
    rows = await db.fetch(
        "SELECT o.kpi, i.key AS incident, i.severity, o.timestamp, o.value "
        "FROM kpi_observation AS o "
        "JOIN incident AS i ON i.id = o.incident",
        [],
    )
    return [{**dict(row), "timestamp": rollups.as_utc(row["timestamp"])} for row in rows]


async def assert_rollups_exact() -> None:
    """Each rollup row equals its group's count and sum in the raw rows; no group is missing."""
    want: dict[tuple[str, str, str, datetime], list[float]] = defaultdict(list)
    for row in await raw_rows():
        for grain, bucket in GRAINS.items():
            start = floor_bucket(row["timestamp"], bucket)
            want[(row["kpi"], grain, row["severity"], start)].append(row["value"])
    got = {
        (r["kpi"], r["grain"], r["severity"], rollups.as_utc(r["start"])): (
            r["n"],
            r["total"] + r["residue"],
        )
        for r in await db.fetch("SELECT * FROM kpi_rollup", [])
    }
    for key, values in want.items():
        assert key in got, f"no rollup row for {key}"
        count, total = got[key]
        assert count == len(values), key
        # Exact: the double-double sum rounds to the correctly rounded sum, whatever was added
        # and taken away before.
        assert total == math.fsum(values), key
    for key, (count, total) in got.items():
        if key not in want:
            assert (count, total) == (0, 0), f"{key} holds {count} observations, the rows none"


async def setup(client: Any) -> list[str]:
    for slug, visibility in zip(PROBES, ("EXEC", "INTERNAL"), strict=True):
        await ok(client, CREATE, {"input": definition(slug, visibility, None)})
    await ok(client, CREATE, {"input": definition("probe-computed", "EXEC", EXPRESSIONS[0])})
    keys = []
    for n in range(12):
        keys.append(f"INC-R{n}")
        await upsert(client, keys[-1], SEVERITIES[n % 4], utc(2026, 1, 28) + timedelta(days=n * 3))
    return keys


def definition(slug: str, visibility: str, expression: str | None) -> dict[str, Any]:
    return {
        "slug": slug,
        "name": slug,
        "description": "rollup probe",
        "formula": "probe",
        "expression": expression,
        "units": "minutes",
        "targets": [],
        "visibility": visibility,
        "owner": "tests",
        "reviewCadence": "P90D",
    }


async def upsert(
    client: Any, key: str, severity: str, detected: datetime, minutes: int | None = None
) -> None:
    incident: dict[str, Any] = {
        "id": key,
        "title": key,
        "severity": severity,
        "detectedAt": detected.isoformat(),
    }
    if minutes is not None:
        incident["resolvedAt"] = (detected + timedelta(minutes=minutes)).isoformat()
    await ok(client, UPSERT, {"input": incident}, persona="ingest")


def observation(rng: random.Random, keys: list[str]) -> dict[str, Any]:
    # Few instants, so that rewrites of the same key (kpi, incident, timestamp) are common.
    at = utc(2026, 1, 26) + timedelta(
        hours=rng.randrange(0, 24 * 70, 7), seconds=rng.choice((0, 1))
    )
    return {
        "kpiSlug": rng.choice(PROBES),
        "incidentId": rng.choice(keys),
        "timestamp": at.isoformat(),
        "value": rng.choice(
            (rng.uniform(-500, 500), float(rng.randrange(0, 5)), 0.1, rng.uniform(-1e12, 1e12))
        ),
        "source": "import",
    }


KINDS = ("ingest", "incident", "severity", "expression", "backfill", "no-expression", "delete")


async def step(client: Any, rng: random.Random, keys: list[str], kind: str) -> None:
    """Make one write of this kind through the service (a deletion: in the database)."""
    if kind == "ingest":
        inputs = [observation(rng, keys) for _ in range(rng.randrange(1, 40))]
        stored = [r for r in await raw_rows() if r["kpi"] in PROBES]
        # Stored keys again: the same value is taken as written already, another refused.
        for row in rng.sample(stored, min(len(stored), 3)):
            inputs.append(
                {
                    "kpiSlug": row["kpi"],
                    "incidentId": row["incident"],
                    "timestamp": row["timestamp"].isoformat(),
                    "value": row["value"],
                    "source": "import",
                }
            )
        # The same key twice in one request is refused; keep the last of each. A stored key
        # with another value is refused too (CONFLICT): send the stored value.
        held = {(r["kpi"], r["incident"], r["timestamp"]): r["value"] for r in stored}
        unique = {}
        for i in inputs:
            key = (i["kpiSlug"], i["incidentId"], datetime.fromisoformat(i["timestamp"]))
            unique[key] = {**i, "value": held.get(key, i["value"])}
        await ok(client, RECORD, {"inputs": list(unique.values())}, persona="ingest")
    elif kind == "incident":
        key = rng.choice(keys)
        detected = utc(2026, 1, 26) + timedelta(hours=rng.randrange(0, 24 * 70))
        await upsert(client, key, rng.choice(SEVERITIES), detected, rng.randrange(5, 6000))
    elif kind == "severity":
        rows = await Incident.select().where(Incident.key == rng.choice(keys)).first()
        if rows is not None:
            resolved = rows["resolved_at"]
            minutes = None
            if resolved is not None:
                minutes = int((resolved - rows["detected_at"]).total_seconds() // 60)
            await upsert(client, rows["key"], rng.choice(SEVERITIES), rows["detected_at"], minutes)
    elif kind == "expression":
        expression = rng.choice(EXPRESSIONS)
        await ok(client, UPDATE, {"slug": "probe-computed", "input": {"expression": expression}})
    elif kind == "no-expression":
        await ok(client, UPDATE, {"slug": "probe-computed", "input": {"expression": None}})
    elif kind == "backfill":
        body = await gql(client, BACKFILL, {"slug": "probe-computed"})
        assert "errors" not in body or body["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"
    elif kind == "delete" and len(keys) > 4:
        key = keys.pop(rng.randrange(len(keys)))
        await Incident.delete().where(Incident.key == key)


async def test_rollups_stay_exact_through_random_writes(client: Any) -> None:
    seed = run_seed("ROLLUP_SEED")
    rng = random.Random(seed)
    keys = await setup(client)
    await assert_rollups_exact()
    # Every kind of write once, in a random order, then a random sequence.
    kinds = list(KINDS)
    rng.shuffle(kinds)
    for kind in kinds + [rng.choice(KINDS) for _ in range(17)]:
        await step(client, rng, keys, kind)
        await assert_rollups_exact()


async def test_a_severity_change_moves_observations_and_a_deletion_removes_them(
    client: Any,
) -> None:
    await setup(client)
    rng = random.Random(5)
    inputs = [{**observation(rng, ["INC-R1"]), "kpiSlug": "probe-a"} for _ in range(10)]
    unique = {i["timestamp"]: i for i in inputs}
    await ok(client, RECORD, {"inputs": list(unique.values())}, persona="ingest")
    before = await db.fetch(
        "SELECT severity, sum(n) AS n FROM kpi_rollup WHERE kpi = 'probe-a' AND grain = 'M' "
        "GROUP BY severity",
        [],
    )
    assert {r["severity"]: r["n"] for r in before if r["n"]} == {"P2": len(unique)}
    await upsert(client, "INC-R1", "P4", utc(2026, 1, 31))
    after = await db.fetch(
        "SELECT severity, sum(n) AS n FROM kpi_rollup WHERE kpi = 'probe-a' AND grain = 'M' "
        "GROUP BY severity",
        [],
    )
    assert {r["severity"]: r["n"] for r in after if r["n"]} == {"P4": len(unique)}
    await assert_rollups_exact()
    await Incident.delete().where(Incident.key == "INC-R1")
    left = await db.fetch("SELECT sum(n) AS n FROM kpi_rollup WHERE kpi = 'probe-a'", [])
    assert left[0]["n"] == 0
    await assert_rollups_exact()


async def test_the_migration_builds_rollups_for_the_rows_there_are(client: Any) -> None:
    keys = await setup(client)
    rng = random.Random(11)
    inputs = {
        i["timestamp"] + i["incidentId"]: i for i in (observation(rng, keys) for _ in range(60))
    }
    await ok(client, RECORD, {"inputs": list(inputs.values())}, persona="ingest")
    undone = await run_backwards(app_name="mim", migration_id=ROLLUP_MIGRATION, auto_agree=True)
    assert undone.success, undone.message
    try:
        tables = await db.fetch(
            "SELECT count(*) AS n FROM information_schema.tables WHERE table_name = 'kpi_rollup'"
            if not db.is_sqlite()
            else "SELECT count(*) AS n FROM sqlite_master WHERE name = 'kpi_rollup'",
            [],
        )
        assert tables[0]["n"] == 0
        # Rows written while there are no rollups (as before this migration existed), in SQL:
        # the later migrations are undone too, so the API of this release cannot write them.
        more = [{**observation(rng, keys), "kpiSlug": "probe-b"} for _ in range(30)]
        unique = {(i["incidentId"], i["timestamp"]): i for i in more}
        pks = {r["key"]: r["id"] for r in await Incident.select(Incident.id, Incident.key)}
        now = datetime.now(UTC)
        await KpiObservation.insert(
            *(
                KpiObservation(
                    kpi=i["kpiSlug"],
                    incident=pks[i["incidentId"]],
                    timestamp=datetime.fromisoformat(i["timestamp"]),
                    value=i["value"],
                    source=i["source"],
                    confidence=1.0,
                    definition_version=None,
                    recorded_at=now,
                )
                for i in unique.values()
            )
        )
    finally:
        redone = await run_forwards(app_name="mim")
        assert redone.success, redone.message
    await assert_rollups_exact()


@needs_mim
async def test_backfill_from_the_command_line_rebuilds_the_rollups(client: Any) -> None:
    keys = await setup(client)
    rng = random.Random(3)
    inputs = {
        i["timestamp"] + i["incidentId"]: i for i in (observation(rng, keys) for _ in range(40))
    }
    await ok(client, RECORD, {"inputs": list(inputs.values())}, persona="ingest")
    # Damage them, as a bug or a hand-made edit could.
    await db.engine().run_ddl("UPDATE kpi_rollup SET n = n + 3, total = total * 2")
    with pytest.raises(AssertionError):
        await assert_rollups_exact()
    done = mim("kpi", "backfill", "--all")
    assert "rollups rebuilt for every KPI" in done.stdout
    await assert_rollups_exact()


# --- summaries from the rollups --------------------------------------------------------------


def expected_summary(
    rows: list[dict[str, Any]],
    slug: str,
    start: datetime | None,
    end: datetime | None,
    severity: str | None,
) -> tuple[int, float | None]:
    values = [
        r["value"]
        for r in rows
        if r["kpi"] == slug
        and (start is None or r["timestamp"] >= start)
        and (end is None or r["timestamp"] < end)
        and severity in (None, r["severity"])
    ]
    return len(values), statistics.fmean(values) if values else None


async def test_summaries_over_windows_that_cut_days_weeks_and_months(client: Any) -> None:
    keys = await setup(client)
    rng = random.Random(run_seed("ROLLUP_SEED"))
    inputs = {}
    for _ in range(300):
        one = observation(rng, keys)
        inputs[(one["kpiSlug"], one["incidentId"], one["timestamp"])] = one
    chunk = list(inputs.values())
    for first in range(0, len(chunk), 100):
        await ok(client, RECORD, {"inputs": chunk[first : first + 100]}, persona="ingest")
    rows = await raw_rows()
    windows: list[tuple[datetime | None, datetime | None]] = [(None, None)]
    for _ in range(25):
        low = utc(2026, 1, 20) + timedelta(seconds=rng.randrange(0, 86400 * 80))
        high = low + timedelta(seconds=rng.choice((1, 3600, 86400, 86400 * 9, 86400 * 45)))
        windows.append(rng.choice([(low, high), (low, None), (None, high)]))
    windows.append((utc(2026, 2, 1), utc(2026, 3, 1)))  # a whole month
    for start, end in windows:
        severity = rng.choice((None, *SEVERITIES))
        variables = {
            "slug": "probe-a",
            "from": start.isoformat() if start else None,
            "to": end.isoformat() if end else None,
            "severity": severity,
        }
        got = (await ok(client, SUMMARY, variables))["kpi"]["summary"]
        count, mean = expected_summary(rows, "probe-a", start, end, severity)
        assert got["count"] == count, (start, end, severity)
        if mean is None:
            assert got["value"] is None
        else:
            assert got["value"] == pytest.approx(mean, rel=1e-9, abs=1e-9), (start, end)


async def test_as_of_moves_when_the_summarised_observations_change(client: Any) -> None:
    keys = await setup(client)
    march = {"slug": "probe-a", "from": "2026-03-01T00:00:00Z", "to": "2026-03-02T00:00:00Z"}
    created = (await ok(client, SUMMARY, march))["kpi"]["summary"]
    assert created["count"] == 0
    one = {
        "kpiSlug": "probe-a",
        "incidentId": keys[0],
        "timestamp": "2026-03-01T10:00:00Z",
        "value": 4.0,
        "source": "import",
    }
    await ok(client, RECORD, {"inputs": [one]}, persona="ingest")
    first = (await ok(client, SUMMARY, march))["kpi"]["summary"]
    assert first["count"] == 1 and first["asOf"] > created["asOf"]
    # A write elsewhere leaves this window's asOf alone.
    await ok(
        client, RECORD, {"inputs": [{**one, "timestamp": "2026-03-05T10:00:00Z"}]}, persona="ingest"
    )
    assert (await ok(client, SUMMARY, march))["kpi"]["summary"]["asOf"] == first["asOf"]
    # A cut window (the edge read from the raw rows) still sees its day's change.
    cut = {**march, "from": "2026-03-01T09:00:00Z", "to": "2026-03-01T11:00:00Z"}
    assert (await ok(client, SUMMARY, cut))["kpi"]["summary"]["asOf"] == first["asOf"]
    # Removing the observation (its incident deleted) is a change too.
    await Incident.delete().where(Incident.key == keys[0])
    removed = (await ok(client, SUMMARY, cut))["kpi"]["summary"]
    assert removed["count"] == 0 and removed["asOf"] > first["asOf"]


async def test_an_exec_token_reads_no_rollup_of_an_internal_kpi(client: Any) -> None:
    keys = await setup(client)
    rng = random.Random(9)
    inputs = {
        i["timestamp"] + i["incidentId"]: {**i, "kpiSlug": "probe-b"}
        for i in (observation(rng, keys) for _ in range(20))
    }
    await ok(client, RECORD, {"inputs": list(inputs.values())}, persona="ingest")
    query = """{ kpis { slug summary { count } series(bucket: MONTH, from: "2026-01-01T00:00:00Z",
      to: "2026-05-01T00:00:00Z") { count } } }"""
    for persona in ("exec", "stakeholder", "responder", "admin"):
        body = await ok(client, query, {}, persona=persona)
        slugs = {k["slug"] for k in body["kpis"]}
        assert ("probe-b" in slugs) == (persona in ("responder", "admin")), persona
    # Straight to the domain: the rollup reads apply the policy themselves.
    from registry.model import Persona, Viewer

    exec_ = Viewer(subject="exec", personas=frozenset({Persona.EXEC}))
    assert (
        await rollups.totals(viewer=exec_, slugs=["probe-b"], start=None, end=None, severity=None)
        == {}
    )
    admin = Viewer(subject="admin", personas=frozenset({Persona.ADMIN}))
    for viewer, seen in ((exec_, 0), (admin, len(inputs))):
        stats = await rollups.buckets(
            viewer=viewer,
            slugs=["probe-b"],
            grain=rollups.Grain.MONTH,
            starts=[utc(2026, 1, 1), utc(2026, 2, 1), utc(2026, 3, 1), utc(2026, 4, 1)],
            start=utc(2026, 1, 1),
            end=utc(2026, 4, 15),
            severity=None,
        )
        assert sum(s.count for s in stats["probe-b"]) == seen, viewer


# --- percentiles from group summaries ---------------------------------------------------------


def rank_error(values: list[float], estimate: float, q: float) -> float:
    """How far `estimate`'s ranks lie from the q-th percentile's rank, as a share of the values."""
    ordered = sorted(values)
    below = sum(1 for v in ordered if v < estimate)
    at_most = sum(1 for v in ordered if v <= estimate)
    target = q * (len(ordered) - 1)
    # Its place among the ordered values (0-based ranks), widened by one for interpolation.
    if below - 1 <= target <= at_most:
        return 0.0
    distance = min(abs(below - 1 - target), abs(at_most - target))
    return distance / len(ordered)


@pytest.mark.parametrize("shape", ["uniform", "lognormal", "few distinct", "one value"])
def test_merged_summaries_stay_within_one_percent_rank_error(shape: str) -> None:
    rng = random.Random(run_seed("ROLLUP_SEED") + len(shape))
    draw = {
        "uniform": lambda: rng.uniform(-1000, 1000),
        "lognormal": lambda: rng.lognormvariate(3, 1.5),
        "few distinct": lambda: float(rng.randrange(1, 6)),
        "one value": lambda: 42.0,
    }[shape]
    for _ in range(20):
        groups = [
            [draw() for _ in range(rng.randrange(1, 3000))] for _ in range(rng.randrange(1, 14))
        ]
        parts = [rollups.summarize(g) for g in groups]
        values = [v for g in groups for v in g]
        for q, got in zip((0.5, 0.9), rollups.percentiles(parts, (0.5, 0.9)), strict=True):
            assert got is not None
            assert rank_error(values, got, q) <= 0.01, (shape, q, len(values))


def test_small_groups_give_exact_percentiles() -> None:
    rng = random.Random(1)
    groups = [
        [rng.uniform(0, 100) for _ in range(rng.randrange(1, rollups.POINTS + 1))] for _ in range(5)
    ]
    values = sorted(v for g in groups for v in g)
    got = rollups.percentiles([rollups.summarize(g) for g in groups], (0.5, 0.9))
    for q, value in zip((0.5, 0.9), got, strict=True):
        rank = (len(values) - 1) * q
        low = math.floor(rank)
        high = min(low + 1, len(values) - 1)
        assert value == values[low] + (rank - low) * (values[high] - values[low])


def test_the_rank_error_measure_catches_a_bad_estimate() -> None:
    # The control for the bound above: an estimate off by 5% of the ranks is seen as such.
    values = [float(n) for n in range(1000)]
    assert rank_error(values, 549.0, 0.5) == pytest.approx(0.05, abs=0.002)
    assert rank_error(values, 499.5, 0.5) == 0.0


async def test_a_window_refused_by_every_kpi_of_a_list_is_reported_for_the_first(
    client: Any,
) -> None:
    query = """{ kpis { slug summary(from: "2026-03-02T00:00:00Z", to: "2026-03-01T00:00:00Z") {
      count } series(bucket: DAY, from: "2026-03-01T00:00:00Z", to: "2026-03-02T00:00:00Z") {
      count } } }"""
    for _ in range(5):
        body = await gql(client, query, persona="exec")
        assert body["data"] == {"kpis": None}
        assert [e["path"] for e in body["errors"]] == [["kpis", 0, "summary"]], body


async def test_the_exact_sums_migration_upgrades_rollups_made_before_it(client: Any) -> None:
    keys = await setup(client)
    rng = random.Random(run_seed("ROLLUP_SEED"))
    inputs = {
        i["timestamp"] + i["incidentId"]: i for i in (observation(rng, keys) for _ in range(60))
    }
    await ok(client, RECORD, {"inputs": list(inputs.values())}, persona="ingest")
    engine = rollups.engine_name()
    # The shape the rollups had before: no residue column, sums holding drift.
    for statement in rollups.DROP[engine]:
        if not statement.startswith("DROP TABLE"):
            await db.engine().run_ddl(statement)
    await db.engine().run_ddl("ALTER TABLE kpi_rollup DROP COLUMN residue")
    await db.engine().run_ddl("UPDATE kpi_rollup SET total = total + 0.001")
    module = importlib.import_module("migrations.mim_2026_12_03t14_30_00_000000")
    manager = await module.forwards()
    for step in manager.raw:
        await step()
    await assert_rollups_exact()
    # And the triggers it made keep them exact.
    more = {
        i["timestamp"] + i["incidentId"]: i for i in (observation(rng, keys) for _ in range(30))
    }
    fresh = [i for key, i in more.items() if key not in inputs]  # a same key, another value: 409
    await ok(client, RECORD, {"inputs": fresh}, persona="ingest")
    await assert_rollups_exact()
