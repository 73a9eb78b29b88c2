"""The set-based backfill (registry/setbased.py, registry/formulas/sql.py) against the Python path.

Differential: the same data, the Python backfill (compute.run) and then the set-based one, each
from an empty set of computed rows; the row sets must be identical (keys exact, values within
1e-9 relative, and in practice bit-identical). Then the write rules: a second run writes nothing,
ingested rows are kept, stale computed rows go, `since` is honoured.
"""

from __future__ import annotations

import itertools
import math
import random
import struct
import tracemalloc
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

from registry import compute, setbased
from registry.formulas import compile_formula
from registry.formulas.seed import SEED_EXPRESSIONS
from registry.formulas.sql import compile_sql
from registry.tables import (
    Alert,
    Incident,
    KpiObservation,
    Milestone,
    SurveyResponse,
    TimelineEvent,
)
from tests.conftest import gql, is_postgres

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
PLUS2 = timezone(timedelta(hours=2))
MINUS530 = timezone(-timedelta(hours=5, minutes=30))
DIALECT: Any = "postgres" if is_postgres() else "sqlite"

OTHER_FORMULAS = [
    "hours(resolved_at - detected_at)",
    'minutes(resolved_at - phase_entered_at("gather")) / 0',
    "count(alerts)",
    'count(alerts where source == "pager")',
    "count(milestones.delivered_at)",
    "sum(surveys.score)",
    "sum(surveys.score where score >= 3) / count(surveys)",
    "min(surveys.score) + max(surveys.score)",
    "first(surveys.score) - last(surveys.score)",
    "minutes(max(milestones.delivered_at) - min(milestones.committed_eta))",
    "minutes(last(milestones.delivered_at) - first(milestones.committed_eta))",
    "minutes(first(alerts.issue_time) - detected_at)",
    "minutes(last(timeline.occurred_at) - first(timeline.occurred_at))",
    'minutes(phase_entered_at("mitigate") - phase_entered_at("gather"))',
    'count(timeline where phase == "gather" or kind == "note")',
    'count(timeline where not (phase == "gather") and occurred_at > detected_at)',
    "count(milestones where delivered_at > committed_eta or delivered_at == null)",
    'count(alerts where severity == "P1")',
    "100 * count(milestones where delivered_at <= committed_eta) / count(milestones) - 50",
    "-avg(surveys.score) * 2.5",
    "1 / (avg(surveys.score) - 3)",
    '(resolved_at - detected_at) / (phase_entered_at("gather") - detected_at)',
    "minutes((resolved_at - detected_at) * 2 + (resolved_at - detected_at))",
    "42",
    "count(surveys where submitted_at < resolved_at and score > 2)",
    'count(timeline where (phase == null) == (kind == "phase"))',
    "count(alerts where min(1, 2) == 1)",  # not a formula: an aggregate in 'where'
    "minutes(resolved_at - detected_at) + null",
    'count(timeline where phase < "m")',
    "minutes(max(timeline.occurred_at) - detected_at)",
    'min(timeline.phase) == "detect"',  # not a number: never compiles
]


def _pk(row: Any) -> int:
    return int(row[0]["id"]) if isinstance(row, list) else int(row)


async def seed_incidents(n: int = 40, seed: int = 7) -> None:
    """Insert varied incidents directly (no live recompute): every edge the formulas have."""
    rng = random.Random(seed)
    for k in range(n):
        base = T0 + timedelta(days=k, seconds=rng.randrange(0, 3600))
        if k % 5 == 1:
            base += timedelta(microseconds=rng.randrange(1, 999_999))
        zone = [UTC, PLUS2, MINUS530][k % 3]
        detected = base.astimezone(zone)
        resolved: datetime | None = base + timedelta(minutes=rng.randrange(0, 600), seconds=k)
        if k % 7 == 3:
            resolved = None  # unresolved
        elif k % 11 == 4:
            resolved = detected  # zero duration
        elif k % 6 == 2:
            resolved = resolved + timedelta(microseconds=rng.randrange(1, 10**6))  # type: ignore[operator]
        severity = ["P1", "P2", "P3", "P4"][k % 4]
        rows = await Incident.insert(
            Incident(
                key=f"INC-{k}",
                title=f"incident {k}",
                severity=severity,
                detected_at=detected,
                resolved_at=resolved,
            )
        ).returning(Incident.id)
        pk = _pk(rows)
        alerts = (
            []
            if k % 8 == 5
            else [
                base - timedelta(minutes=rng.randrange(0, 9), microseconds=rng.choice([0, 250_000]))
                for _ in range(rng.randrange(1, 4))
            ]
        )
        if k % 9 == 0 and alerts:
            alerts.append(alerts[0])  # a tie
        for a in alerts:
            await Alert.insert(
                Alert(incident=pk, issue_time=a, source=rng.choice([None, "pager", "email"]))
            )
        if k % 10 != 6:  # else: no gather entry
            gather = base + timedelta(minutes=rng.randrange(-12, 30))  # sometimes before alerts
            events = [("detect", base), ("gather", gather), ("mitigate", gather + timedelta(1))]
            if k % 4 == 0:
                events.append(("gather", gather + timedelta(minutes=5)))
                events.append((None, gather))  # same time, no phase
            for phase, when in events:
                await TimelineEvent.insert(
                    TimelineEvent(
                        incident=pk,
                        kind="phase" if phase else "note",
                        phase=phase,
                        occurred_at=when.astimezone(zone),
                        note=None,
                    )
                )
        for m in range(rng.choice([0, 0, 1, 2, 3, 4])):
            eta = base + timedelta(minutes=30 * (m + 1))
            delivered = rng.choice(
                [None, eta, eta - timedelta(minutes=3), eta + timedelta(seconds=1, microseconds=5)]
            )
            await Milestone.insert(
                Milestone(incident=pk, name=f"m{m}", committed_eta=eta, delivered_at=delivered)
            )
        for s in range(rng.choice([0, 0, 1, 2, 3, 5])):
            await SurveyResponse.insert(
                SurveyResponse(
                    incident=pk,
                    score=rng.choice([1, 2, 3, 4, 5, 5, 0, -2, 1000]),
                    submitted_at=base + timedelta(hours=2, minutes=rng.choice([0, 0, 10 * s])),
                )
            )


def kpi(expression: str, slug: str = "mttr", version: int = 7) -> compute.ComputedKpi:
    return compute.ComputedKpi(
        slug=slug,
        version=version,
        formula=compile_formula(expression),
        reads=compute.collections_read(expression),
    )


async def rows(slug: str) -> dict[tuple[int, datetime], tuple[Any, ...]]:
    found = await KpiObservation.select(
        KpiObservation.incident,
        KpiObservation.timestamp,
        KpiObservation.value,
        KpiObservation.source,
        KpiObservation.confidence,
        KpiObservation.definition_version,
    ).where(KpiObservation.kpi == slug)
    return {
        (r["incident"], r["timestamp"]): (
            r["value"],
            r["source"],
            r["confidence"],
            r["definition_version"],
        )
        for r in found
    }


async def drop_computed() -> None:
    await KpiObservation.delete().where(KpiObservation.source == "computed")


def ulps_apart(a: float, b: float) -> int:
    ia = struct.unpack("<q", struct.pack("<d", a))[0]
    ib = struct.unpack("<q", struct.pack("<d", b))[0]
    return abs(ia - ib)


BIT_DIFFERENCES: list[tuple[str, float, float]] = []


@pytest.fixture(autouse=True)
def _no_bit_differences_yet() -> None:
    BIT_DIFFERENCES.clear()


def draw(strategy: st.SearchStrategy[Any], count: int, salt: int = 0) -> list[Any]:
    """Return `count` examples of `strategy`, drawn by Hypothesis under a synchronous @given."""
    drawn: list[Any] = []

    @seed(2041 + salt)
    @settings(
        max_examples=count,
        deadline=None,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def collect(example: Any) -> None:
        drawn.append(example)

    collect()
    return drawn


def assert_same(
    expression: str, python: dict[Any, tuple[Any, ...]], sql: dict[Any, tuple[Any, ...]]
) -> None:
    assert python.keys() == sql.keys(), (expression, python.keys() ^ sql.keys())
    for key, expected in python.items():
        got = sql[key]
        assert got[1:] == expected[1:], (expression, key, got, expected)
        a, b = float(expected[0]), float(got[0])
        assert math.isclose(a, b, rel_tol=1e-9, abs_tol=0.0) or a == b, (expression, key, a, b)
        if a != b or math.copysign(1, a) != math.copysign(1, b):
            BIT_DIFFERENCES.append((expression, a, b))


async def differential(
    expression: str, *, since: datetime | None = None, batch_size: int = 7, slug: str = "mttr"
) -> tuple[compute.BackfillResult, tuple[int, int, int]] | None:
    """Run both paths from no computed rows; assert identical rows and counts."""
    computed = kpi(expression, slug=slug)
    await drop_computed()
    (python_result,) = await compute.run([computed], since=since, batch_size=batch_size)
    python_rows = await rows(computed.slug)
    await drop_computed()
    counts = await setbased.backfill_kpi(computed, since=since, batch_size=batch_size)
    if counts is None:
        return None
    sql_rows = await rows(computed.slug)
    assert_same(expression, python_rows, sql_rows)
    assert counts == (
        python_result.incidents_scanned,
        python_result.observations_written,
        python_result.skipped,
    ), (expression, counts, python_result)
    return python_result, counts


@pytest.mark.parametrize("slug", sorted(SEED_EXPRESSIONS))
async def test_seed_kpis_match_the_python_path_exactly(slug: str) -> None:
    await seed_incidents()
    result = await differential(SEED_EXPRESSIONS[slug])
    assert result is not None, "every seed formula compiles to SQL"
    _python_result, (scanned, written, skipped) = result
    assert scanned == 40 and written > 0 and skipped == scanned - written
    assert not BIT_DIFFERENCES, BIT_DIFFERENCES


async def test_other_formulas_match_the_python_path() -> None:
    await seed_incidents()
    compiled = 0
    for expression in OTHER_FORMULAS:
        try:
            compile_formula(expression)
        except Exception:
            assert compile_sql(expression, DIALECT) is None
            continue
        if await differential(expression) is not None:
            compiled += 1
        # a bigger batch gives the same rows too
        await differential(expression, batch_size=1000)
    assert compiled >= len(OTHER_FORMULAS) - 4
    assert not BIT_DIFFERENCES, BIT_DIFFERENCES


@pytest.mark.parametrize(
    "expression",
    [
        "minutes(resolved_at + (resolved_at - detected_at) - detected_at)",  # datetime + duration
        'count(alerts where phase_entered_at("gather") > issue_time)',  # phase inside where
        "1e300 * 1e300",  # could overflow
        "minutes(phase_entered_at(severity) - detected_at)",  # a non-literal phase
    ],
)
def test_unsupported_formulas_compile_to_none(expression: str) -> None:
    compile_formula(expression)
    assert compile_sql(expression, DIALECT) is None


def any_of(count: int, condition: Any = None) -> str:
    """Return a count of alerts matching any of `count` conditions joined by 'or'."""
    condition = condition or (lambda n: f'source == "s{n}"')
    return "count(alerts where " + " or ".join(condition(n) for n in range(count)) + ")"


def mixed(n: int) -> str:
    # conditions as of two different times, so their as-ofs cannot be said once
    return "issue_time > detected_at" if n % 2 else 'source == "pager"'


@pytest.mark.parametrize("dialect", ["sqlite", "postgres"])
def test_a_chain_of_conditions_compiles_to_sql_linear_in_its_length(dialect: Any) -> None:
    # Each 'or' used to copy both sides' as-of into a CASE: 23 of them took 10 s and 2.24 GB.
    compiled = [compile_sql(any_of(n), dialect) for n in (7, 14, 21, 28)]
    sizes = [len(c.select) for c in compiled if c is not None]
    assert len(sizes) == 4
    growth = [b - a for a, b in itertools.pairwise(sizes)]
    assert max(growth) - min(growth) <= 16, sizes  # the same cost for every 7 more conditions


def test_compiling_gives_up_early_on_sql_that_would_grow_too_long() -> None:
    # Work is bounded as the SQL is built, not after; the Python evaluator computes such formulas.
    expression = any_of(20, mixed)
    compile_formula(expression)
    tracemalloc.start()
    try:
        assert compile_sql(expression, DIALECT) is None
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 * 2**20, f"compiling held {peak} bytes at its peak"  # was 418 MiB


async def test_long_chains_of_conditions_match_the_python_path() -> None:
    await seed_incidents()
    same_item = any_of(23, lambda n: f'source == "{["pager", "email", "s"][n % 3]}{n // 3 or ""}"')
    assert compile_sql(same_item, DIALECT) is not None
    assert await differential(same_item) is not None
    assert await differential(any_of(6, mixed)) is not None
    assert not BIT_DIFFERENCES, BIT_DIFFERENCES


@pytest.mark.parametrize(
    ("expression", "kept"),
    [
        pytest.param("count(alerts) * 1e13", {0.0}, id="only-the-zeros-fit"),
        pytest.param("0 - 2e12", set(), id="none-fits"),
        pytest.param("1e12 + 0 * count(alerts)", {1e12}, id="the-bound-itself-fits"),
    ],
)
async def test_values_beyond_what_a_kpi_may_hold_are_not_stored_by_either_path(
    expression: str, kept: set[float]
) -> None:
    await seed_incidents()
    assert await differential(expression) is not None
    assert {float(v[0]) for v in (await rows("mttr")).values()} == kept


async def test_a_second_run_writes_nothing_and_changes_nothing() -> None:
    await seed_incidents()
    computed = kpi(SEED_EXPRESSIONS["mtta"], slug="mtta")
    first = await setbased.backfill_kpi(computed, since=None, batch_size=9)
    assert first is not None and first[1] > 0
    before = await rows("mtta")
    again = await setbased.backfill_kpi(computed, since=None, batch_size=9)
    assert again == (first[0], 0, first[2])
    assert await rows("mtta") == before
    # a new version rewrites every row, once
    bumped = kpi(SEED_EXPRESSIONS["mtta"], slug="mtta", version=8)
    assert await setbased.backfill_kpi(bumped, since=None, batch_size=9) == first
    assert {v[3] for v in (await rows("mtta")).values()} == {8}


async def test_ingested_rows_are_kept_and_stale_computed_rows_deleted() -> None:
    await seed_incidents(12)
    computed = kpi(SEED_EXPRESSIONS["mttr"])
    counts = await setbased.backfill_kpi(computed, since=None, batch_size=5)
    assert counts is not None
    have = await rows("mttr")
    (pk, stamp), (value, *_rest) = next(iter(have.items()))
    incidents = [r["id"] for r in await Incident.select(Incident.id).order_by(Incident.id)]
    other = incidents[-1]
    now = datetime.now(UTC)
    # an ingested row at a computed key, an ingested row elsewhere, a stale computed row, and
    # a computed row with a wrong value
    await KpiObservation.update(
        {KpiObservation.source: "manual", KpiObservation.value: -1.0}
    ).where((KpiObservation.kpi == "mttr") & (KpiObservation.incident == pk))
    stale = T0 - timedelta(days=400)
    for source, incident_pk, at, v in [
        ("import", other, stale, 5.0),
        ("computed", other, stale + timedelta(seconds=1), 6.0),
    ]:
        await KpiObservation.insert(
            KpiObservation(
                kpi="mttr",
                incident=incident_pk,
                timestamp=at,
                value=v,
                source=source,
                confidence=0.5,
                definition_version=None,
                recorded_at=now,
            )
        )
    wrong_key = next(k for k in have if k[0] != pk)
    await KpiObservation.update({KpiObservation.value: 123456.0}).where(
        (KpiObservation.kpi == "mttr")
        & (KpiObservation.incident == wrong_key[0])
        & (KpiObservation.source == "computed")
    )
    again = await setbased.backfill_kpi(computed, since=None, batch_size=5)
    assert again is not None and again[1] == 1  # only the wrong value is rewritten
    after = await rows("mttr")
    assert after[(pk, stamp)][:2] == (-1.0, "manual")
    assert after[(other, stale)][1] == "import"
    assert (other, stale + timedelta(seconds=1)) not in after
    assert after[wrong_key] == have[wrong_key]
    assert len(after) == len(have) + 1
    # the Python path agrees from the same starting state
    python_after = dict(after)
    await compute.run([computed], batch_size=5)
    assert await rows("mttr") == python_after
    assert value is not None


async def test_since_limits_the_scan_and_the_deletes() -> None:
    await seed_incidents(30)
    since = T0 + timedelta(days=12)
    result = await differential(SEED_EXPRESSIONS["mttr"], since=since, batch_size=4)
    assert result is not None
    assert result[1][0] == await compute.incident_count(since=since)
    assert 0 < result[1][0] < 30
    # a stale computed row of an incident before `since` survives; one after it goes
    computed = kpi(SEED_EXPRESSIONS["mttr"])
    ids = [r["id"] for r in await Incident.select(Incident.id).order_by(Incident.id)]
    now = datetime.now(UTC)
    for incident_pk in (ids[0], ids[-1]):
        await KpiObservation.insert(
            KpiObservation(
                kpi="mttr",
                incident=incident_pk,
                timestamp=T0 - timedelta(days=500),
                value=1.0,
                source="computed",
                confidence=1.0,
                definition_version=7,
                recorded_at=now,
            )
        )
    await setbased.backfill_kpi(computed, since=since, batch_size=4)
    left = {k[0] for k in await rows("mttr") if k[1] == T0 - timedelta(days=500)}
    assert left == {ids[0]}


async def test_data_ingested_through_the_api_matches(client: Any) -> None:
    """Offsets and sub-second times as clients send them, through the real ingest mutations."""
    upsert = "mutation ($input: IncidentInput!) { upsertIncident(input: $input) { id } }"
    alert = "mutation ($input: AlertInput!) { recordAlert(input: $input) { id } }"
    event = "mutation ($input: TimelineEventInput!) { recordTimelineEvent(input: $input) { kind } }"
    survey = (
        "mutation ($input: SurveyResponseInput!) { recordSurveyResponse(input: $input) { score } }"
    )
    for k, (detected, resolved) in enumerate(
        [
            ("2026-03-02T10:00:00.123456+02:00", "2026-03-02T09:30:00.5-01:00"),
            ("2026-03-02T10:00:00Z", None),
            ("2026-03-03T23:59:59.999999+05:30", "2026-03-04T00:00:00Z"),
        ]
    ):
        key = f"API-{k}"
        body = await gql(
            client,
            upsert,
            {
                "input": {
                    "id": key,
                    "title": key,
                    "severity": "P2",
                    "detectedAt": detected,
                    "resolvedAt": resolved,
                }
            },
            persona="ingest",
        )
        assert "errors" not in body, body
        for issued in ("2026-03-02T07:55:00.000001Z", "2026-03-02T09:55:00+02:00"):
            body = await gql(
                client, alert, {"input": {"incidentId": key, "issueTime": issued}}, persona="ingest"
            )
            assert "errors" not in body, body
        body = await gql(
            client,
            event,
            {
                "input": {
                    "incidentId": key,
                    "kind": "phase_entered",
                    "phase": "gather",
                    "occurredAt": "2026-03-02T08:01:00.25Z",
                }
            },
            persona="ingest",
        )
        assert "errors" not in body, body
        body = await gql(
            client,
            survey,
            {"input": {"incidentId": key, "score": 4, "submittedAt": "2026-03-05T00:00:00Z"}},
            persona="ingest",
        )
        assert "errors" not in body, body
    live = {slug: await rows(slug) for slug in SEED_EXPRESSIONS}
    assert live["mtta"] and live["mttr"] and live["stakeholder-satisfaction"]
    for slug, expression in SEED_EXPRESSIONS.items():
        assert await differential(expression, slug=slug) is not None, slug
        # the live rows (written at ingest) are the backfill's rows
        after = await rows(slug)
        assert after.keys() == live[slug].keys()
        assert [v[0] for v in after.values()] == [v[0] for v in live[slug].values()]
    assert not BIT_DIFFERENCES, BIT_DIFFERENCES


async def test_random_well_typed_formulas_match_the_python_path() -> None:
    """~100 random formulas from test_formulas.py's generator over the varied data."""
    from tests.registry.test_formulas import FORMULAS

    await seed_incidents(24, seed=11)
    tried = compiled = 0
    for expression in draw(FORMULAS, 100, salt=5):
        try:
            compile_formula(expression)
        except Exception:
            continue
        tried += 1
        if await differential(expression, batch_size=10) is not None:
            compiled += 1
    assert tried >= 50
    assert compiled >= tried // 3, (compiled, tried)
    assert not BIT_DIFFERENCES, BIT_DIFFERENCES
