"""KPI trends: one point per day, week or month, checked against Python's own arithmetic.

The observations are ingested (recordObservations) for a KPI created without an expression, on
incidents that carry no data, so no computed row interferes. Every expectation is computed here,
independently of the service: buckets by calendar arithmetic in UTC, p50/p90 by the linear
interpolation of PostgreSQL's percentile_cont (cross-checked with statistics.quantiles).
"""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from typing import Any

import pytest

from tests.conftest import codes, gql

PROBE = "trend-probe"
UPSERT = "mutation ($input: IncidentInput!) { upsertIncident(input: $input) { id } }"
RECORD_MANY = """
mutation ($inputs: [RecordObservationInput!]!) { recordObservations(inputs: $inputs) { value } }
"""
CREATE = """
mutation ($input: CreateKpiDefinitionInput!) { createKpiDefinition(input: $input) { slug } }
"""
UPDATE = """
mutation ($slug: String!, $input: UpdateKpiDefinitionInput!) {
  updateKpiDefinition(slug: $slug, input: $input) { slug version }
}
"""
SERIES = """
query ($slug: String!, $bucket: Bucket!, $from: DateTime!, $to: DateTime!, $severity: Severity) {
  kpi(slug: $slug) {
    series(bucket: $bucket, from: $from, to: $to, severity: $severity) {
      start count mean p50 p90
      target { severity persona comparison threshold }
      meetsTarget
    }
  }
}
"""
KPIS = "query { kpis { slug } }"

GENERAL = {"severity": None, "persona": None, "comparison": "AT_MOST", "threshold": 50.0}
P1_TARGET = {"severity": "P1", "persona": None, "comparison": "AT_MOST", "threshold": 30.0}
INCIDENTS = {"INC-A": "P1", "INC-B": "P2", "INC-C": "P3"}


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


def iso(moment: datetime) -> str:
    return moment.isoformat()


@dataclass(frozen=True)
class Obs:
    incident: str
    at: datetime
    value: float

    @property
    def severity(self) -> str:
        return INCIDENTS[self.incident]


# --- expectations, computed independently --------------------------------------------------


def percentile_cont(values: Iterable[float], p: float) -> float:
    """PostgreSQL's percentile_cont: linear interpolation between the ranks around (n-1)*p."""
    ordered = sorted(values)
    rank = (len(ordered) - 1) * p
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    result = ordered[low] + (rank - low) * (ordered[high] - ordered[low])
    if len(ordered) >= 2:
        cuts = statistics.quantiles(ordered, n=10, method="inclusive")
        assert result == pytest.approx(cuts[round(p * 10) - 1], rel=1e-12, abs=1e-12)
    return result


def floor_bucket(moment: datetime, bucket: str) -> datetime:
    day = datetime(moment.year, moment.month, moment.day, tzinfo=UTC)
    if bucket == "DAY":
        return day
    if bucket == "WEEK":
        return day - timedelta(days=day.weekday())
    return day.replace(day=1)


def following(start: datetime, bucket: str) -> datetime:
    if bucket == "DAY":
        return start + timedelta(days=1)
    if bucket == "WEEK":
        return start + timedelta(days=7)
    if start.month == 12:
        return start.replace(year=start.year + 1, month=1)
    return start.replace(month=start.month + 1)


def expected(
    observations: Iterable[Obs],
    bucket: str,
    start: datetime,
    end: datetime,
    severity: str | None = None,
) -> list[dict[str, Any]]:
    """Return the points the service should give: start, count, mean, p50, p90."""
    starts = [floor_bucket(start.astimezone(UTC), bucket)]
    while following(starts[-1], bucket) < end:
        starts.append(following(starts[-1], bucket))
    groups: dict[datetime, list[float]] = {s: [] for s in starts}
    for o in observations:
        if start <= o.at < end and severity in (None, o.severity):
            groups[floor_bucket(o.at.astimezone(UTC), bucket)].append(o.value)
    points = []
    for s in starts:
        values = groups[s]
        points.append(
            {
                "start": s,
                "count": len(values),
                "mean": statistics.fmean(values) if values else None,
                "p50": percentile_cont(values, 0.5) if values else None,
                "p90": percentile_cont(values, 0.9) if values else None,
            }
        )
    return points


def comparable(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Return the service's points with parsed starts, without target fields."""
    out = []
    for p in points:
        start = datetime.fromisoformat(p["start"])
        assert start.utcoffset() == timedelta(0), p["start"]
        out.append({"start": start, **{k: p[k] for k in ("count", "mean", "p50", "p90")}})
    return out


def assert_points(got: list[dict[str, Any]], want: list[dict[str, Any]]) -> None:
    got = comparable(got)
    assert [p["start"] for p in got] == [p["start"] for p in want]
    assert [p["count"] for p in got] == [p["count"] for p in want]
    for g, w in zip(got, want, strict=True):
        for field in ("mean", "p50", "p90"):
            if w[field] is None:
                assert g[field] is None, (g, w)
            else:
                assert g[field] == pytest.approx(w[field], rel=1e-9, abs=1e-9), (field, g, w)


# --- set-up through the API ----------------------------------------------------------------


async def ok(client: Any, query: str, variables: dict[str, Any], persona: str = "admin") -> Any:
    body = await gql(client, query, variables, persona=persona)
    assert "errors" not in body, body
    return body["data"]


async def setup_probe(
    client: Any, targets: list[dict[str, Any]] | None = None, visibility: str = "EXEC"
) -> None:
    """Create the expression-less probe KPI and the data-less incidents."""
    await ok(
        client,
        CREATE,
        {
            "input": {
                "slug": PROBE,
                "name": "Trend probe",
                "description": "ingested values only",
                "formula": "whatever the importer sends",
                "units": "minutes",
                "targets": [GENERAL, P1_TARGET] if targets is None else targets,
                "visibility": visibility,
                "owner": "tests",
                "reviewCadence": "P90D",
            }
        },
    )
    for key, severity in INCIDENTS.items():
        await ok(
            client,
            UPSERT,
            {
                "input": {
                    "id": key,
                    "title": key,
                    "severity": severity,
                    "detectedAt": "2025-01-01T00:00:00Z",
                }
            },
            persona="ingest",
        )


async def ingest(client: Any, observations: list[Obs], slug: str = PROBE) -> None:
    for first in range(0, len(observations), 500):
        chunk = observations[first : first + 500]
        inputs = [
            {
                "kpiSlug": slug,
                "incidentId": o.incident,
                "timestamp": iso(o.at),
                "value": o.value,
                "source": "import",
            }
            for o in chunk
        ]
        await ok(client, RECORD_MANY, {"inputs": inputs}, persona="ingest")


async def series_body(
    client: Any,
    bucket: str,
    start: datetime | str,
    end: datetime | str,
    severity: str | None = None,
    slug: str = PROBE,
    persona: str = "admin",
) -> dict[str, Any]:
    variables = {
        "slug": slug,
        "bucket": bucket,
        "from": start if isinstance(start, str) else iso(start),
        "to": end if isinstance(end, str) else iso(end),
        "severity": severity,
    }
    return await gql(client, SERIES, variables, persona=persona)


async def series(client: Any, *args: Any, **kwargs: Any) -> list[dict[str, Any]]:
    body = await series_body(client, *args, **kwargs)
    assert "errors" not in body, body
    assert body["data"]["kpi"] is not None, body
    points: list[dict[str, Any]] = body["data"]["kpi"]["series"]
    return points


def spread(seed: int, first: datetime, last: datetime, count: int) -> list[Obs]:
    """Return `count` observations at distinct whole seconds between first and last."""
    rng = random.Random(seed)
    span = int((last - first).total_seconds())
    seconds = sorted(rng.sample(range(span), count))
    keys = list(INCIDENTS)
    return [
        Obs(rng.choice(keys), first + timedelta(seconds=s), rng.randrange(0, 400) / 4)
        for s in seconds
    ]


# --- buckets, values and percentiles -------------------------------------------------------


async def test_day_buckets_by_hand(client: Any) -> None:
    await setup_probe(client)
    day = utc(2026, 3, 2)
    data = [
        # day 1: 1, 2, 3, 4 -> mean 2.5, p50 2.5, p90 3.7
        *(Obs("INC-B", day + timedelta(hours=h), v) for h, v in ((1, 4.0), (2, 1.0), (3, 3.0))),
        Obs("INC-C", day + timedelta(hours=23, minutes=59, seconds=59), 2.0),
        # day 2 is empty; day 3: one value
        Obs("INC-B", day + timedelta(days=2), 7.5),
        # day 4: 0..10 -> p50 5, p90 9
        *(Obs("INC-C", day + timedelta(days=3, minutes=m), float(m)) for m in range(11)),
    ]
    await ingest(client, data)
    points = await series(client, "DAY", day, day + timedelta(days=5))
    got = comparable(points)
    assert [p["start"] for p in got] == [day + timedelta(days=n) for n in range(5)]
    assert [p["count"] for p in got] == [4, 0, 1, 11, 0]
    assert [p["mean"] for p in got] == pytest.approx([2.5, None, 7.5, 5.0, None])
    assert got[0]["p50"] == pytest.approx(2.5)
    assert got[0]["p90"] == pytest.approx(3.7)
    assert (got[2]["p50"], got[2]["p90"]) == (7.5, 7.5)
    assert got[3]["p50"] == pytest.approx(5.0)
    assert got[3]["p90"] == pytest.approx(9.0)
    for empty in (points[1], points[4]):
        assert (empty["mean"], empty["p50"], empty["p90"], empty["meetsTarget"]) == (
            None,
            None,
            None,
            None,
        )
    assert_points(points, expected(data, "DAY", day, day + timedelta(days=5)))


async def test_day_series_matches_python_over_many_values(client: Any) -> None:
    await setup_probe(client)
    data = spread(1, utc(2026, 3, 1), utc(2026, 3, 31), 300)
    await ingest(client, data)
    start, end = utc(2026, 3, 3, 6), utc(2026, 3, 27)
    points = await series(client, "DAY", start, end)
    assert len(points) == 24
    assert_points(points, expected(data, "DAY", start, end))


async def test_week_buckets_start_on_monday_midnight_utc(client: Any) -> None:
    await setup_probe(client)
    data = spread(2, utc(2026, 1, 1), utc(2026, 5, 1), 400)
    # the edges of a week: Sunday 23:59:59 belongs to the week before Monday 00:00:00
    data += [
        Obs("INC-A", utc(2026, 3, 8, 23, 59, 59), 11.0),
        Obs("INC-A", utc(2026, 3, 9), 13.0),
    ]
    await ingest(client, data)
    start, end = utc(2026, 1, 14, 12), utc(2026, 4, 20)  # a Wednesday noon to a Monday
    points = await series(client, "WEEK", start, end)
    starts = [p["start"] for p in comparable(points)]
    assert starts[0] == utc(2026, 1, 12)
    assert starts[-1] == utc(2026, 4, 13)
    assert all(s.weekday() == 0 and s.time() == datetime.min.time() for s in starts)
    assert all(b - a == timedelta(days=7) for a, b in pairwise(starts))
    assert_points(points, expected(data, "WEEK", start, end))


async def test_month_buckets_start_on_the_first(client: Any) -> None:
    await setup_probe(client)
    data = spread(3, utc(2025, 11, 1), utc(2026, 6, 1), 400)
    data = [o for o in data if o.at.month != 2]  # February stays empty
    data += [
        Obs("INC-B", utc(2026, 3, 31, 23, 59, 59), 1.0),
        Obs("INC-B", utc(2026, 4, 1), 99.0),
    ]
    await ingest(client, data)
    start, end = utc(2025, 12, 15), utc(2026, 5, 1)
    points = await series(client, "MONTH", start, end)
    got = comparable(points)
    assert [p["start"] for p in got] == [
        utc(2025, 12, 1),
        utc(2026, 1, 1),
        utc(2026, 2, 1),
        utc(2026, 3, 1),
        utc(2026, 4, 1),
    ]
    assert got[2]["count"] == 0
    assert got[2]["mean"] is None
    assert_points(points, expected(data, "MONTH", start, end))


async def test_from_is_inclusive_and_to_exclusive(client: Any) -> None:
    await setup_probe(client)
    start, end = utc(2026, 3, 2, 12), utc(2026, 3, 4, 12)
    data = [
        Obs("INC-B", start - timedelta(seconds=1), 1000.0),  # same day as `from`, but before
        Obs("INC-B", start, 10.0),  # exactly `from`: in
        Obs("INC-B", end - timedelta(seconds=1), 20.0),  # in
        Obs("INC-B", end, 2000.0),  # exactly `to`: out
    ]
    await ingest(client, data)
    got = comparable(await series(client, "DAY", start, end))
    assert [(p["start"], p["count"], p["mean"]) for p in got] == [
        (utc(2026, 3, 2), 1, 10.0),
        (utc(2026, 3, 3), 0, None),
        (utc(2026, 3, 4), 1, 20.0),
    ]


async def test_offsets_are_read_as_instants_and_buckets_are_utc_days(client: Any) -> None:
    await setup_probe(client)
    # 01:30+03:00 on the 3rd is 22:30Z on the 2nd; 23:30-02:00 on the 2nd is 01:30Z on the 3rd
    data = [
        Obs("INC-B", datetime.fromisoformat("2026-03-03T01:30:00+03:00"), 4.0),
        Obs("INC-B", datetime.fromisoformat("2026-03-02T23:30:00-02:00"), 8.0),
        Obs("INC-C", datetime.fromisoformat("2026-03-02T10:00:00.250000+00:00"), 6.0),
        Obs("INC-C", utc(2026, 3, 1, 23, 30), 1.0),
        Obs("INC-C", utc(2026, 3, 1, 22, 59, 59), 500.0),  # before `from`
    ]
    await ingest(client, data)
    # `from` is 01:00 on the 2nd at +02:00, which is 23:00Z on the 1st
    points = await series(client, "DAY", "2026-03-02T01:00:00+02:00", "2026-03-04T00:00:00Z")
    got = comparable(points)
    assert [(p["start"], p["count"], p["mean"]) for p in got] == [
        (utc(2026, 3, 1), 1, 1.0),
        (utc(2026, 3, 2), 2, 5.0),
        (utc(2026, 3, 3), 1, 8.0),
    ]


async def test_a_single_bucket_shorter_than_a_day(client: Any) -> None:
    await setup_probe(client)
    data = [Obs("INC-B", utc(2026, 3, 2, h), float(h)) for h in range(24)]
    await ingest(client, data)
    start, end = utc(2026, 3, 2, 6), utc(2026, 3, 2, 9)
    points = await series(client, "MONTH", start, end)
    assert_points(points, expected(data, "MONTH", start, end))
    assert comparable(points)[0]["start"] == utc(2026, 3, 1)
    assert points[0]["count"] == 3
    assert points[0]["mean"] == pytest.approx(7.0)


# --- severity, targets and meetsTarget -----------------------------------------------------


async def test_severity_filters_by_the_incidents_severity_and_picks_its_target(
    client: Any,
) -> None:
    await setup_probe(client)
    data = spread(4, utc(2026, 3, 1), utc(2026, 3, 15), 150)
    await ingest(client, data)
    start, end = utc(2026, 3, 1), utc(2026, 3, 15)
    for severity in ("P1", "P2", "P3", "P4"):
        points = await series(client, "DAY", start, end, severity=severity)
        assert_points(points, expected(data, "DAY", start, end, severity=severity))
        target = P1_TARGET if severity == "P1" else GENERAL
        assert all(p["target"] == target for p in points)
        for p in points:
            want = None if p["mean"] is None else p["mean"] <= target["threshold"]
            assert p["meetsTarget"] is want, p
    p4 = await series(client, "DAY", start, end, severity="P4")
    assert {p["count"] for p in p4} == {0}


async def test_target_and_meets_target_per_point(client: Any) -> None:
    await setup_probe(client)
    day = utc(2026, 3, 2)
    data = [
        Obs("INC-B", day, 40.0),  # meets <= 50
        Obs("INC-B", day + timedelta(days=1), 50.0),  # exactly the threshold: meets
        Obs("INC-B", day + timedelta(days=2), 60.0),  # misses
        Obs("INC-A", day + timedelta(days=3), 20.0),  # P1 incident; general target here
        Obs("INC-A", day + timedelta(days=3, hours=1), 100.0),  # mean 60 misses
    ]
    await ingest(client, data)
    points = await series(client, "DAY", day, day + timedelta(days=5))
    assert [p["target"] for p in points] == [GENERAL] * 5
    assert [p["meetsTarget"] for p in points] == [True, True, False, False, None]

    p1 = await series(client, "DAY", day, day + timedelta(days=5), severity="P1")
    assert [p["target"] for p in p1] == [P1_TARGET] * 5
    assert [p["count"] for p in p1] == [0, 0, 0, 2, 0]
    assert [p["meetsTarget"] for p in p1] == [None, None, None, False, None]


async def test_an_at_least_target_and_a_kpi_without_targets(client: Any) -> None:
    at_least = {"severity": None, "persona": None, "comparison": "AT_LEAST", "threshold": 90.0}
    await setup_probe(client, targets=[at_least])
    day = utc(2026, 3, 2)
    await ingest(client, [Obs("INC-B", day, 95.0), Obs("INC-B", day + timedelta(days=1), 80.0)])
    points = await series(client, "DAY", day, day + timedelta(days=2))
    assert [(p["target"], p["meetsTarget"]) for p in points] == [
        (at_least, True),
        (at_least, False),
    ]
    await ok(client, UPDATE, {"slug": PROBE, "input": {"targets": []}})
    points = await series(client, "DAY", day, day + timedelta(days=2))
    assert [(p["target"], p["meetsTarget"]) for p in points] == [(None, None), (None, None)]


async def test_a_target_for_the_callers_persona_beats_the_general_one(client: Any) -> None:
    exec_target = {"severity": None, "persona": "EXEC", "comparison": "AT_MOST", "threshold": 45.0}
    await setup_probe(client, targets=[GENERAL, exec_target])
    day = utc(2026, 3, 2)
    await ingest(client, [Obs("INC-B", day, 48.0)])
    mine = await series(client, "DAY", day, day + timedelta(days=1), persona="exec")
    theirs = await series(client, "DAY", day, day + timedelta(days=1), persona="admin")
    assert (mine[0]["target"], mine[0]["meetsTarget"]) == (exec_target, False)
    assert (theirs[0]["target"], theirs[0]["meetsTarget"]) == (GENERAL, True)


# --- bad windows ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("start", "end"),
    [
        (utc(2026, 3, 2), utc(2026, 3, 2)),
        (utc(2026, 3, 2), utc(2026, 3, 1)),
        (utc(2026, 3, 2, 0, 0, 1), utc(2026, 3, 2)),
    ],
)
async def test_to_not_after_from_is_bad_user_input(
    client: Any, start: datetime, end: datetime
) -> None:
    await setup_probe(client)
    body = await series_body(client, "DAY", start, end)
    assert codes(body) == ["BAD_USER_INPUT"]


@pytest.mark.parametrize(
    ("bucket", "start", "end"),
    [
        ("DAY", utc(2024, 1, 1), utc(2024, 1, 1) + timedelta(days=1001)),
        ("DAY", utc(2000, 1, 1), utc(2100, 1, 1)),
        ("WEEK", utc(2000, 1, 3), utc(2000, 1, 3) + timedelta(weeks=1001)),
        ("MONTH", utc(1970, 1, 1), utc(2060, 1, 1)),
    ],
)
async def test_more_than_1000_buckets_is_bad_user_input(
    client: Any, bucket: str, start: datetime, end: datetime
) -> None:
    await setup_probe(client)
    body = await series_body(client, bucket, start, end)
    assert codes(body) == ["BAD_USER_INPUT"]
    assert "1000" in body["errors"][0]["message"].replace(",", "")


async def test_exactly_1000_buckets_is_fine(client: Any) -> None:
    await setup_probe(client)
    start = utc(2024, 1, 1)
    await ingest(client, [Obs("INC-B", start + timedelta(days=999, hours=5), 3.0)])
    points = await series(client, "DAY", start, start + timedelta(days=1000))
    assert len(points) == 1000
    assert points[-1]["count"] == 1
    assert sum(p["count"] for p in points) == 1
    weeks = await series(client, "WEEK", utc(2024, 1, 1), utc(2024, 1, 1) + timedelta(weeks=1000))
    assert len(weeks) == 1000


async def test_a_naive_from_is_bad_user_input(client: Any) -> None:
    await setup_probe(client)
    body = await series_body(client, "DAY", "2026-03-02T00:00:00", "2026-03-03T00:00:00Z")
    assert codes(body) == ["BAD_USER_INPUT"]


# --- visibility ----------------------------------------------------------------------------


async def test_an_internal_kpis_series_is_unreachable_for_exec_personas(client: Any) -> None:
    await setup_probe(client, visibility="INTERNAL")
    day = utc(2026, 3, 2)
    await ingest(client, [Obs("INC-B", day, 5.0)])
    await ingest(client, [Obs("INC-B", day, 9.0)], slug="mtta")
    for persona in ("exec", "stakeholder"):
        for slug in (PROBE, "mtta"):
            body = await series_body(
                client, "DAY", day, day + timedelta(days=1), slug=slug, persona=persona
            )
            assert "errors" not in body, body
            assert body["data"]["kpi"] is None
        listed = (await ok(client, KPIS, {}, persona=persona))["kpis"]
        assert PROBE not in {k["slug"] for k in listed}
    for persona in ("responder", "ingest", "admin"):
        points = await series(client, "DAY", day, day + timedelta(days=1), persona=persona)
        assert points[0]["count"] == 1


async def test_an_exec_kpis_series_holds_only_its_own_observations(client: Any) -> None:
    await setup_probe(client)
    day = utc(2026, 3, 2)
    data = spread(5, day, day + timedelta(days=7), 60)
    await ingest(client, data)
    # internal data at the same incidents and instants, with wild values
    await ingest(client, [Obs(o.incident, o.at, 10_000 + o.value) for o in data], slug="mtta")
    want = expected(data, "DAY", day, day + timedelta(days=7))
    for persona in ("exec", "stakeholder", "admin"):
        points = await series(client, "DAY", day, day + timedelta(days=7), persona=persona)
        assert_points(points, want)
    internal = await series(client, "DAY", day, day + timedelta(days=7), slug="mtta")
    assert sum(p["count"] for p in internal) == 60
    assert all(p["mean"] is None or p["mean"] > 10_000 for p in internal)


async def test_a_kpi_made_internal_disappears_from_exec_trends(client: Any) -> None:
    await setup_probe(client)
    day = utc(2026, 3, 2)
    await ingest(client, [Obs("INC-B", day, 5.0)])
    assert (await series(client, "DAY", day, day + timedelta(days=1), persona="exec"))[0][
        "count"
    ] == 1
    await ok(client, UPDATE, {"slug": PROBE, "input": {"visibility": "INTERNAL"}})
    body = await series_body(client, "DAY", day, day + timedelta(days=1), persona="exec")
    assert body["data"]["kpi"] is None
    assert "errors" not in body


# --- computed observations feed the trends -------------------------------------------------


async def test_computed_mttr_series(client: Any) -> None:
    resolutions = [  # (key, severity, detected, minutes to resolve)
        ("INC-1", "P1", utc(2026, 3, 2, 9), 30),
        ("INC-2", "P2", utc(2026, 3, 2, 10), 90),
        ("INC-3", "P1", utc(2026, 3, 2, 22), 150),  # resolved on the 3rd
        ("INC-4", "P3", utc(2026, 3, 4, 8), 45),
        ("INC-5", "P1", utc(2026, 3, 4, 9), 15),
        ("INC-6", "P2", utc(2026, 3, 4, 11), 300),
    ]
    for key, severity, detected, minutes in resolutions:
        await ok(
            client,
            UPSERT,
            {
                "input": {
                    "id": key,
                    "title": key,
                    "severity": severity,
                    "detectedAt": iso(detected),
                    "resolvedAt": iso(detected + timedelta(minutes=minutes)),
                }
            },
            persona="ingest",
        )
    await ok(
        client,
        UPSERT,
        {
            "input": {
                "id": "INC-OPEN",
                "title": "open",
                "severity": "P1",
                "detectedAt": iso(utc(2026, 3, 2, 12)),
            }
        },
        persona="ingest",
    )
    day = utc(2026, 3, 2)
    points = await series(client, "DAY", day, day + timedelta(days=3), slug="mttr")
    got = comparable(points)
    assert [p["count"] for p in got] == [2, 1, 3]
    assert [p["mean"] for p in got] == pytest.approx([60.0, 150.0, 120.0])
    assert got[0]["p90"] == pytest.approx(30 + 0.9 * 60)
    assert got[2]["p50"] == pytest.approx(45.0)
    assert got[2]["p90"] == pytest.approx(45 + 0.8 * 255)
    p1 = comparable(
        await series(client, "DAY", day, day + timedelta(days=3), slug="mttr", severity="P1")
    )
    assert [(p["count"], p["mean"]) for p in p1] == [(1, 30.0), (1, 150.0), (1, 15.0)]


async def test_the_series_reads_the_rollups_and_raw_rows_once_per_change(
    client: Any, sql_statements: Any
) -> None:
    await setup_probe(client)
    data = spread(6, utc(2026, 3, 2), utc(2026, 3, 30), 300)
    await ingest(client, data)
    want = expected(data, "WEEK", utc(2026, 3, 2), utc(2026, 3, 30))

    def reads() -> list[str]:
        issued = sql_statements.statements[before:]
        return [s for s in issued if "kpi_rollup" in s or "kpi_observation" in s]

    # The first read summarizes each week from the raw rows: one statement more.
    before = sql_statements.count
    assert_points(await series(client, "WEEK", utc(2026, 3, 2), utc(2026, 3, 30)), want)
    first = reads()
    assert len(first) == 2, first
    assert "kpi_observation" in first[1]
    # The next, with nothing changed, reads the four weeks' rollup rows alone.
    before = sql_statements.count
    assert_points(await series(client, "WEEK", utc(2026, 3, 2), utc(2026, 3, 30)), want)
    again = reads()
    assert len(again) == 1 and "kpi_observation" not in again[0], again
    # A change to one week summarizes that week again, and only it.
    extra = Obs("INC-B", utc(2026, 3, 10, 12), 99.5)
    await ingest(client, [extra])
    before = sql_statements.count
    changed = await series(client, "WEEK", utc(2026, 3, 2), utc(2026, 3, 30))
    assert_points(changed, expected([*data, extra], "WEEK", utc(2026, 3, 2), utc(2026, 3, 30)))
    third = reads()
    assert len(third) == 2, third
    assert third[1].count("o.timestamp >=") == 1, third[1]


async def test_percentiles_for_every_bucket_size_from_1_to_40(client: Any) -> None:
    await setup_probe(client)
    rng = random.Random(7)
    start = utc(2026, 1, 1)
    data = [
        Obs(
            rng.choice(list(INCIDENTS)),
            start + timedelta(days=n - 1, minutes=m),
            rng.uniform(-1000, 1000),
        )
        for n in range(1, 41)
        for m in range(n)
    ]
    await ingest(client, data)
    points = await series(client, "DAY", start, start + timedelta(days=40))
    assert [p["count"] for p in points] == list(range(1, 41))
    assert_points(points, expected(data, "DAY", start, start + timedelta(days=40)))
