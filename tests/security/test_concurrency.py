"""Concurrency: 200 ingest writes racing a backfill of every seed KPI, and write-write races.

Every request goes over real HTTP with a real token, all at once through one `asyncio.gather`.
Afterwards the tables are read directly (registry/tables.py), so a lost or duplicated row cannot
hide behind the API. Runs on SQLite (WAL, IMMEDIATE write transactions, a 30 s busy timeout) and on
PostgreSQL (a connection pool), whichever TEST_DATABASE_URL names.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from registry.tables import (
    Alert,
    Incident,
    KpiObservation,
    Milestone,
    SurveyResponse,
    TimelineEvent,
)
from server.config import Settings
from tests.conftest import ENV, codes, make_token
from tests.registry.test_rollups import assert_rollups_exact


@pytest.fixture
def settings() -> Settings:
    """The app of these tests admits every request they send at once (200 and more): they test
    how the database serializes concurrent writes; shedding is tests/server/test_shed.py's."""
    return replace(Settings.from_env(ENV), max_inflight=10_000)


pytestmark = pytest.mark.security

SEEDS = ("cadence-adherence", "mtta", "mttr", "stakeholder-satisfaction")
TOKENS = {persona: make_token(persona, ttl=3600) for persona in ("ingest", "admin")}

UPSERT = "mutation ($input: IncidentInput!) { upsertIncident(input: $input) { id title } }"
ALERT = "mutation ($input: AlertInput!) { recordAlert(input: $input) { id } }"
EVENT = "mutation ($input: TimelineEventInput!) { recordTimelineEvent(input: $input) { note } }"
MILESTONE = "mutation ($input: MilestoneInput!) { recordMilestone(input: $input) { name } }"
SURVEY = "mutation ($input: SurveyResponseInput!) { recordSurveyResponse(input: $input) { score } }"
RECORD = """
mutation ($input: RecordObservationInput!) { recordObservation(input: $input) { value source } }
"""
RECORD_MANY = """
mutation ($inputs: [RecordObservationInput!]!) {
  recordObservations(inputs: $inputs) { kpi { slug } timestamp value }
}
"""
BACKFILL = """
mutation ($slug: String!) {
  backfillKpi(slug: $slug) { kpiSlug incidentsScanned observationsWritten skipped }
}
"""

DETECTED = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)
INGESTED_AT = datetime(2025, 1, 1, tzinfo=UTC)  # ingested observations: far from computed keys
BASE_INCIDENTS = [f"INC-C{n:02d}" for n in range(10)]
SEVERITIES = ("P1", "P2", "P3", "P4")
FAULTS = ("UNAVAILABLE", "TIMEOUT")


def iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()


def utc(moment: datetime) -> datetime:
    return moment.astimezone(UTC)


class Answer:
    """One HTTP answer: status and JSON body (or the raw text when it is not JSON)."""

    def __init__(self, label: str, status: int, body: dict[str, Any] | None, text: str) -> None:
        self.label = label
        self.status = status
        self.body = body or {}
        self.text = text

    @property
    def codes(self) -> list[str]:
        try:
            return codes(self.body)
        except (KeyError, TypeError):
            return ["<error without extensions.code>"]

    @property
    def ok(self) -> bool:
        return self.status == 200 and not self.body.get("errors") and bool(self.body.get("data"))

    @property
    def fault(self) -> bool:
        """A retryable database fault: UNAVAILABLE or TIMEOUT, as HTTP 503 or a GraphQL error."""
        return any(code in FAULTS for code in self.codes)

    @property
    def internal(self) -> bool:
        """A fault of the service itself: HTTP 500 (or any 5xx but 503), or INTERNAL."""
        return (self.status >= 500 and self.status != 503) or "INTERNAL" in self.codes

    def __repr__(self) -> str:
        return f"<{self.label}: HTTP {self.status} {self.text[:300]}>"


async def send(
    client: Any, label: str, query: str, variables: dict[str, Any], persona: str = "ingest"
) -> Answer:
    response = await client.post(
        "/graphql",
        json={"query": query, "variables": variables},
        headers={"Authorization": f"Bearer {TOKENS[persona]}"},
    )
    text = await response.text()
    try:
        body = await response.json(content_type=None)
    except ValueError:
        body = None
    return Answer(label, response.status, body if isinstance(body, dict) else None, text)


async def ok(client: Any, query: str, variables: dict[str, Any], persona: str = "ingest") -> Any:
    answer = await send(client, "setup", query, variables, persona)
    assert answer.ok, answer
    return answer.body["data"]


def incident_input(key: str, n: int, *, resolved: bool = True, title: str = "") -> dict[str, Any]:
    detected = DETECTED + timedelta(hours=n)
    return {
        "id": key,
        "title": title or f"Incident {key}",
        "severity": SEVERITIES[n % len(SEVERITIES)],
        "detectedAt": iso(detected),
        "resolvedAt": iso(detected + timedelta(minutes=30 + 7 * n)) if resolved else None,
    }


async def computed_rows() -> list[tuple[Any, ...]]:
    """Every computed observation as sorted, comparable tuples."""
    rows = await KpiObservation.select(
        KpiObservation.kpi,
        KpiObservation.incident,
        KpiObservation.timestamp,
        KpiObservation.value,
        KpiObservation.definition_version,
    ).where(KpiObservation.source == "computed")
    return sorted(
        (r["kpi"], r["incident"], utc(r["timestamp"]), r["value"], r["definition_version"])
        for r in rows
    )


def lost_or_duplicated(expected: list[Any], found: list[Any]) -> tuple[int, int]:
    """Return (missing, extra) comparing two multisets of row identities."""
    want, have = Counter(expected), Counter(found)
    return sum((want - have).values()), sum((have - want).values())


# --- 200 concurrent ingest writes and four backfills ---------------------------------------


class IngestRace(AssertionError):
    """Concurrent ingest left computed rows a fresh backfill disagrees with, or deadlocked."""


@dataclass
class Request:
    label: str
    query: str
    variables: dict[str, Any]
    persona: str = "ingest"
    rows: list[tuple[str, Any]] = field(default_factory=list)  # (table, identity) it writes


def observations_batch(key: str, first: int) -> Request:
    """Four observations (one per seed KPI) at unique instants: 200 rows over 50 batches."""
    inputs, rows = [], []
    for n, slug in enumerate(SEEDS):
        moment = INGESTED_AT + timedelta(minutes=first + n)
        value = float(first + n)
        inputs.append(
            {
                "kpiSlug": slug,
                "incidentId": key,
                "timestamp": iso(moment),
                "value": value,
                "source": "load",
                "confidence": 0.5,
            }
        )
        rows.append(("observation", (slug, key, moment, value)))
    return Request(f"recordObservations {key}@{first}", RECORD_MANY, {"inputs": inputs}, rows=rows)


def incident_requests(n: int, key: str) -> list[Request]:
    """Eighteen writes to one existing incident; all but the observation batches recompute it."""
    base = DETECTED + timedelta(hours=n)
    requests = [observations_batch(key, 20 * n + 4 * b) for b in range(5)]
    tag = f"{key}/alert"
    alert = {"incidentId": key, "issueTime": iso(base + timedelta(minutes=1)), "source": tag}
    requests.append(Request(f"recordAlert {tag}", ALERT, {"input": alert}, rows=[("alert", tag)]))
    tag = f"{key}/gather"
    event = {
        "incidentId": key,
        "kind": "phase",
        "phase": "gather",
        "occurredAt": iso(base + timedelta(minutes=4 + n)),
        "note": tag,
    }
    requests.append(
        Request(f"recordTimelineEvent {tag}", EVENT, {"input": event}, rows=[("event", tag)])
    )
    for m in range(5):
        tag = f"{key}/{m}"
        eta = base + timedelta(hours=1, minutes=m)
        milestone = {
            "incidentId": key,
            "name": tag,
            "committedEta": iso(eta),
            "deliveredAt": iso(eta + timedelta(minutes=(-10, 10, 0, 5, -5)[m])),
        }
        requests.append(
            Request(f"recordMilestone {tag}", MILESTONE, {"input": milestone}, rows=[("ms", tag)])
        )
        submitted = base + timedelta(days=1, minutes=m)
        score = 1 + (n + m) % 5
        survey = {"incidentId": key, "score": score, "submittedAt": iso(submitted)}
        requests.append(
            Request(
                f"recordSurveyResponse {tag}",
                SURVEY,
                {"input": survey},
                rows=[("survey", (key, submitted, score))],
            )
        )
    changed = incident_input(key, n, title=f"Retitled {key}")
    changed["resolvedAt"] = iso(base + timedelta(minutes=90))
    requests.append(Request(f"upsertIncident {key}", UPSERT, {"input": changed}))
    return requests


def ingest_load() -> list[Request]:
    """Return 200 ingest writes: 18 for each of ten existing incidents, 20 new incidents.

    The writes that do not recompute KPIs (observation batches, incident updates) go first,
    shuffled; then, incident by incident, the twelve others that recompute its KPIs, side by side
    so that several are in flight for one incident at once: where live recompute can race itself.
    """
    shuffle = random.Random(2041).shuffle
    plain: list[Request] = []
    recomputing: list[Request] = []
    for n, key in enumerate(BASE_INCIDENTS):
        for m in (2 * n, 2 * n + 1):
            new = f"INC-N{m:02d}"
            upsert = Request(f"upsertIncident {new}", UPSERT, {"input": incident_input(new, m)})
            upsert.rows.append(("incident", new))
            recomputing.append(upsert)
        group = incident_requests(n, key)
        plain += [r for r in group if r.query in (RECORD_MANY, UPSERT)]
        writes = [r for r in group if r.query not in (RECORD_MANY, UPSERT)]
        shuffle(writes)
        recomputing += writes
    shuffle(plain)
    load = plain + recomputing
    assert len(load) == 200
    return load


async def stored_ingest_rows() -> list[tuple[str, Any]]:
    """Every row the load writes, as (table, identity), read straight from the tables."""
    keys = {row["id"]: row["key"] for row in await Incident.select(Incident.id, Incident.key)}
    found: list[tuple[str, Any]] = [
        ("observation", (r["kpi"], keys[r["incident"]], utc(r["timestamp"]), r["value"]))
        for r in await KpiObservation.select().where(KpiObservation.source == "load")
    ]
    found += [("alert", r["source"]) for r in await Alert.select()]
    found += [("event", r["note"]) for r in await TimelineEvent.select()]
    found += [("ms", r["name"]) for r in await Milestone.select()]
    found += [
        ("survey", (keys[r["incident"]], utc(r["submitted_at"]), r["score"]))
        for r in await SurveyResponse.select()
    ]
    found += [("incident", key) for key in keys.values() if key not in BASE_INCIDENTS]
    return found


def logged_causes(caplog: pytest.LogCaptureFixture) -> list[str]:
    """Return the exception type of every unexpected error the in-process server logged."""
    return [
        type(r.exc_info[1]).__name__
        for r in caplog.records
        if r.exc_info and r.exc_info[1] is not None and r.name.startswith("mim")
    ]


async def check_computed_rows(client: Any, incidents: int, figure: Any) -> None:
    """Computed rows are one per (KPI, incident), and exactly what a fresh backfill produces."""
    before = await computed_rows()
    assert before, "the writes should leave computed rows"
    per_key = Counter((row[0], row[1]) for row in before)
    doubled = sorted(key for key, count in per_key.items() if count > 1)
    wrong = [row for row in before if row[3] == -1.0]
    written = {}
    for slug in SEEDS:
        result = (await ok(client, BACKFILL, {"slug": slug}, persona="admin"))["backfillKpi"]
        assert result["incidentsScanned"] == incidents, result
        written[slug] = result["observationsWritten"]
    after = await computed_rows()
    stale = len(set(before) ^ set(after))
    figure("computed rows stale after concurrent writes", stale)
    if doubled or wrong or stale or any(written.values()):
        raise IngestRace(
            f"live recompute under concurrent writes left {len(before)} computed rows of which "
            f"{stale} differ from a fresh backfill ({len(after)} rows): (kpi, incident pk) with "
            f"more than one computed row: {doubled[:8]}; rows never recomputed: {wrong[:3]}; "
            f"a fresh backfill wrote {written}"
        )


async def test_200_concurrent_ingest_writes_during_backfills_lose_and_duplicate_nothing(
    client: Any, figure: Any, caplog: pytest.LogCaptureFixture
) -> None:
    for n, key in enumerate(BASE_INCIDENTS):
        await ok(client, UPSERT, {"input": incident_input(key, n, resolved=n % 2 == 0)})
    # Make every computed row wrong, so that the backfills have real work to race the ingest.
    await KpiObservation.update({KpiObservation.value: -1.0}).where(
        KpiObservation.source == "computed"
    )

    load = ingest_load()
    backfills = [
        Request(f"backfillKpi {slug}", BACKFILL, {"slug": slug}, "admin") for slug in SEEDS
    ]
    requests = list(load)
    for n, backfill in enumerate(backfills):  # the backfills start among the writes
        requests.insert(5 + 15 * n, backfill)
    answers: list[Answer] = await asyncio.gather(
        *(send(client, r.label, r.query, r.variables, r.persona) for r in requests)
    )
    done = dict(zip((r.label for r in requests), answers, strict=True))

    internal = [a for a in answers if a.internal]
    faults = [a for a in answers if a.fault]
    other = [a for a in answers if not (a.ok or a.internal or a.fault)]
    figure("concurrent writes sent", len(load))
    figure("concurrent backfills sent", len(backfills))
    figure("concurrent requests answered 500 or INTERNAL", len(internal))
    figure("concurrent requests answered UNAVAILABLE or TIMEOUT", len(faults))
    causes = logged_causes(caplog)
    assert not other, f"unexpected errors under load: {other[:5]}"
    # No fault is injected here: the busy timeout (SQLite) and the pool (PostgreSQL) must absorb
    # 200 writers; a retryable answer would be a finding of its own, so it is named precisely.
    assert not faults, f"retryable faults with no fault injected: {faults[:5]}"
    unexplained = [c for c in causes if c != "DeadlockDetectedError"]
    assert not (internal and unexplained), f"500 or INTERNAL under load: {internal[:5]} {causes}"

    # Every row a successful write made exists exactly once; a failed write left nothing.
    expected = [row for r in load if done[r.label].ok for row in r.rows]
    found = await stored_ingest_rows()
    missing, extra = lost_or_duplicated(expected, found)
    figure("rows expected", len(expected))
    figure("rows found", len(found))
    figure("rows lost or duplicated", missing + extra)
    assert (missing, extra) == (0, 0), f"{missing} rows lost, {extra} duplicated or stray"
    titles = await Incident.select(Incident.key, Incident.title).where(
        Incident.key.is_in(BASE_INCIDENTS)
    )
    assert {r["title"] for r in titles} == {f"Retitled {key}" for key in BASE_INCIDENTS}
    for answer in (done[r.label] for r in load if r.query == RECORD_MANY):
        assert len(answer.body["data"]["recordObservations"]) == len(SEEDS), answer

    if internal:
        raise IngestRace(f"deadlocked writes answered INTERNAL: {internal[:3]} {causes}")
    await check_computed_rows(client, len(BASE_INCIDENTS) + 20, figure)


async def test_concurrent_writes_to_one_incident_leave_the_rows_a_backfill_produces(
    client: Any, figure: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Eight survey responses for each of ten incidents, all at once."""
    for n, key in enumerate(BASE_INCIDENTS):
        await ok(client, UPSERT, {"input": incident_input(key, n)})
    answers: list[Answer] = await asyncio.gather(
        *(
            send(
                client,
                f"survey {key} #{m}",
                SURVEY,
                {
                    "input": {
                        "incidentId": key,
                        "score": 1 + (m + n) % 5,
                        "submittedAt": iso(DETECTED + timedelta(days=1, minutes=m)),
                    }
                },
            )
            for n, key in enumerate(BASE_INCIDENTS)
            for m in range(8)  # one incident's eight side by side
        )
    )
    figure("concurrent writes sent", len(answers))
    causes = logged_causes(caplog)
    failed = [a for a in answers if not a.ok]
    assert all(a.internal for a in failed), failed[:5]
    assert all(c == "DeadlockDetectedError" for c in causes), causes
    surveys = await SurveyResponse.count()
    figure("rows lost or duplicated", abs(surveys - (len(answers) - len(failed))))
    assert surveys == len(answers) - len(failed)
    if failed:
        raise IngestRace(f"deadlocked writes answered INTERNAL: {failed[:3]} {causes}")
    await check_computed_rows(client, len(BASE_INCIDENTS), figure)


# --- write-write races on one key -----------------------------------------------------------


async def race_incidents(client: Any, count: int) -> list[str]:
    keys = [f"INC-R{n:02d}" for n in range(count)]
    for n, key in enumerate(keys):
        await ok(client, UPSERT, {"input": incident_input(key, n)})
    return keys


def observation(key: str, value: float) -> dict[str, Any]:
    return {
        "kpiSlug": "mttr",
        "incidentId": key,
        "timestamp": iso(INGESTED_AT),
        "value": value,
        "source": "race",
    }


async def raced_rows() -> dict[str, list[float]]:
    keys = {row["id"]: row["key"] for row in await Incident.select(Incident.id, Incident.key)}
    found: dict[str, list[float]] = {}
    for r in await KpiObservation.select().where(KpiObservation.source == "race"):
        found.setdefault(keys[r["incident"]], []).append(r["value"])
    return found


async def test_two_identical_observations_at_once_give_one_row_and_both_succeed(
    client: Any, figure: Any
) -> None:
    keys = await race_incidents(client, 10)
    calls = [
        send(client, f"recordObservation {key} #{n}", RECORD, {"input": observation(key, 42.5)})
        for key in keys
        for n in range(2)
    ]
    answers = await asyncio.gather(*calls)
    figure("concurrent writes sent", len(answers))
    assert all(a.ok for a in answers), [a for a in answers if not a.ok]
    assert all(a.body["data"]["recordObservation"]["value"] == 42.5 for a in answers)
    found = await raced_rows()
    figure("rows expected", len(keys))
    figure("rows found", sum(len(v) for v in found.values()))
    figure("rows lost or duplicated", sum(abs(len(found.get(k, [])) - 1) for k in keys))
    assert found == {key: [42.5] for key in keys}


async def test_one_key_with_two_values_at_once_gives_one_success_and_one_conflict(
    client: Any, figure: Any
) -> None:
    keys = await race_incidents(client, 10)
    calls = [
        send(client, f"{key} value {value}", RECORD, {"input": observation(key, value)})
        for key in keys
        for value in (1.0, 2.0)
    ]
    answers = await asyncio.gather(*calls)
    figure("concurrent writes sent", len(answers))
    assert not [a for a in answers if a.internal or a.fault], answers
    found = await raced_rows()
    conflicts = 0
    for n, key in enumerate(keys):
        pair = answers[2 * n : 2 * n + 2]
        winners = [a for a in pair if a.ok]
        losers = [a for a in pair if not a.ok]
        assert len(winners) == 1, f"{key}: expected one success, got {pair}"
        assert losers[0].codes == ["CONFLICT"], losers[0]
        assert losers[0].body.get("data") is None, losers[0]
        conflicts += 1
        winner = winners[0].body["data"]["recordObservation"]["value"]
        assert found.get(key) == [winner], f"{key}: stored {found.get(key)}, winner {winner}"
    figure("conflicts answered", conflicts)
    figure("rows lost or duplicated", sum(abs(len(found.get(k, [])) - 1) for k in keys))


async def test_many_upserts_of_one_new_incident_at_once_give_one_row(
    client: Any, figure: Any
) -> None:
    titles = [f"Racing title {n}" for n in range(25)]
    calls = [
        send(client, title, UPSERT, {"input": incident_input("INC-RACE", 3, title=title)})
        for title in titles
    ]
    answers = await asyncio.gather(*calls)
    figure("concurrent writes sent", len(answers))
    assert all(a.ok for a in answers), [a for a in answers if not a.ok]
    rows = await Incident.select().where(Incident.key == "INC-RACE")
    figure("rows lost or duplicated", abs(len(rows) - 1))
    assert len(rows) == 1, rows
    assert rows[0]["title"] in titles
    # The incident's computed MTTR exists once, at the resolution time.
    mttr = await KpiObservation.select().where(
        KpiObservation.incident == rows[0]["id"], KpiObservation.kpi == "mttr"
    )
    assert len(mttr) == 1, mttr


async def test_many_milestones_of_one_name_at_once_give_one_row(client: Any, figure: Any) -> None:
    await ok(client, UPSERT, {"input": incident_input("INC-MS", 1)})
    etas = [DETECTED + timedelta(hours=2, minutes=n) for n in range(20)]
    calls = [
        send(
            client,
            f"milestone eta {n}",
            MILESTONE,
            {"input": {"incidentId": "INC-MS", "name": "fix deployed", "committedEta": iso(eta)}},
        )
        for n, eta in enumerate(etas)
    ]
    answers = await asyncio.gather(*calls)
    figure("concurrent writes sent", len(answers))
    assert all(a.ok for a in answers), [a for a in answers if not a.ok]
    rows = await Milestone.select()
    figure("rows lost or duplicated", abs(len(rows) - 1))
    assert len(rows) == 1, rows
    assert utc(rows[0]["committed_eta"]) in etas


# --- ingest racing severity changes of the same incidents -----------------------------------

SEVERITY_RACE_INCIDENTS = ("INC-S0", "INC-S1")
SEVERITY_RACE_WRITERS = 4
# Each flip changes every racing incident's severity, P1 to P2 or back; an odd number, so they
# end on P2. The code before d716cd3 left rows under the old severity in nearly every flip.
SEVERITY_RACE_FLIPS = 15


def severity_race_batch(writer: int, batch: int) -> list[dict[str, Any]]:
    """Ten observations of each racing incident, at instants no other batch uses."""
    inputs = []
    for n, key in enumerate(SEVERITY_RACE_INCIDENTS):
        for i in range(10):
            serial = ((writer * 10_000 + batch) * len(SEVERITY_RACE_INCIDENTS) + n) * 10 + i
            inputs.append(
                {
                    "kpiSlug": "mtta",
                    "incidentId": key,
                    "timestamp": iso(INGESTED_AT + timedelta(minutes=serial)),
                    "value": 0.25 + serial % 97,
                    "source": f"severity-race-{writer}",
                }
            )
    return inputs


def severity_input(key: str, severity: str) -> dict[str, Any]:
    return {"id": key, "title": key, "severity": severity, "detectedAt": iso(DETECTED)}


async def test_ingest_racing_severity_changes_leaves_rollups_equal_to_the_raw_rows(
    client: Any, figure: Any
) -> None:
    """Observation batches for two incidents while their severity flips: the severity trigger
    moves the rows of every batch that commits around it, none stays under the old severity."""
    for key in SEVERITY_RACE_INCIDENTS:
        await ok(client, UPSERT, {"input": severity_input(key, "P1")})
    flipped = asyncio.Event()
    answers: list[Answer] = []
    acknowledged: list[tuple[str, str, datetime, float]] = []

    async def writer(w: int) -> None:
        batch = 0
        while not flipped.is_set():
            inputs = severity_race_batch(w, batch)
            answer = await send(client, f"writer {w} #{batch}", RECORD_MANY, {"inputs": inputs})
            answers.append(answer)
            batch += 1
            if answer.ok:
                acknowledged.extend(
                    (
                        i["kpiSlug"],
                        i["incidentId"],
                        datetime.fromisoformat(i["timestamp"]),
                        i["value"],
                    )
                    for i in inputs
                )

    async def flipper() -> None:
        for flip in range(SEVERITY_RACE_FLIPS):
            severity = ("P2", "P1")[flip % 2]
            for key in SEVERITY_RACE_INCIDENTS:
                variables = {"input": severity_input(key, severity)}
                answers.append(await send(client, f"{key} to {severity}", UPSERT, variables))
        flipped.set()

    await asyncio.gather(flipper(), *(writer(w) for w in range(SEVERITY_RACE_WRITERS)))
    figure("concurrent writes sent", len(answers))
    assert all(a.ok for a in answers), [a for a in answers if not a.ok][:5]
    assert len(acknowledged) > 10 * SEVERITY_RACE_WRITERS * len(SEVERITY_RACE_INCIDENTS)
    severities = await Incident.select(Incident.key, Incident.severity).where(
        Incident.key.is_in(list(SEVERITY_RACE_INCIDENTS))
    )
    assert {r["key"]: r["severity"] for r in severities} == dict.fromkeys(
        SEVERITY_RACE_INCIDENTS, "P2"
    )

    keys = {row["id"]: row["key"] for row in await Incident.select(Incident.id, Incident.key)}
    stored = [
        (r["kpi"], keys[r["incident"]], utc(r["timestamp"]), r["value"])
        for r in await KpiObservation.select().where(KpiObservation.source.like("severity-race-%"))
    ]
    missing, extra = lost_or_duplicated(acknowledged, stored)
    figure("rows lost or duplicated", missing + extra)
    assert (missing, extra) == (0, 0), f"{missing} acknowledged rows lost, {extra} stray"
    await assert_rollups_exact()
