"""A realistic synthetic data set: incidents, their data, and KPI observations."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from registry import compute, db
from registry.tables import (
    Alert,
    Incident,
    Milestone,
    SurveyResponse,
    TimelineEvent,
)

SEVERITIES = (("P1", 0.1), ("P2", 0.3), ("P3", 0.4), ("P4", 0.2))
# Typical minutes to resolve by severity; actuals scatter around these.
RESOLVE_MINUTES = {"P1": 100, "P2": 220, "P3": 600, "P4": 1800}
SERVICES = ("checkout", "payments", "search", "login", "notifications", "billing", "api-gateway")
SYMPTOMS = ("elevated error rate", "latency spike", "partial outage", "degraded throughput")
PHASES = ("detect", "gather", "mitigate", "resolve")
BATCH = 500


@dataclass
class DemoRows:
    incidents: list[Incident] = field(default_factory=list)
    alerts: list[Alert] = field(default_factory=list)
    events: list[TimelineEvent] = field(default_factory=list)
    milestones: list[Milestone] = field(default_factory=list)
    surveys: list[SurveyResponse] = field(default_factory=list)


async def has_incidents() -> bool:
    """Return whether the database holds any incident."""
    return bool(await Incident.exists())


async def load(*, count: int = 300, seed: int = 2041, now: datetime | None = None) -> int:
    """Insert `count` demo incidents with their data, then compute their KPIs; return how many."""
    now = now or datetime.now(UTC).replace(microsecond=0)
    rng = random.Random(seed)
    async with db.transaction():
        start = await Incident.count()
        incidents = sorted((_incident(rng, now) for _ in range(count)), key=lambda i: i.detected_at)
        for n, incident in enumerate(incidents):  # ids in the order incidents were detected
            incident.key = f"INC-{1000 + start + n}"
        for chunk in _chunks(incidents):
            await Incident.insert(*chunk)
        keys = [i.key for i in incidents]
        pks = {
            r["key"]: r["id"]
            for r in await Incident.select(Incident.id, Incident.key).where(
                Incident.key.is_in(keys)
            )
        }
        rows = DemoRows()
        for incident in incidents:
            _children(rng, incident, pks[incident.key], now, rows)
        for table_rows in (
            rows.alerts,
            rows.events,
            rows.milestones,
            rows.surveys,
        ):
            for chunk in _chunks(table_rows):
                await type(chunk[0]).insert(*chunk)
    await compute.run(await compute.computed_kpis())
    return count


def _chunks(rows: list) -> list[list]:  # type: ignore[type-arg]
    return [rows[i : i + BATCH] for i in range(0, len(rows), BATCH)]


def _incident(rng: random.Random, now: datetime) -> Incident:
    severity = rng.choices([s for s, _ in SEVERITIES], [w for _, w in SEVERITIES])[0]
    detected = now - timedelta(seconds=rng.randint(86_400, 86_400 * 180))
    minutes = max(5.0, rng.gauss(RESOLVE_MINUTES[severity], RESOLVE_MINUTES[severity] * 0.35))
    resolved = detected + timedelta(minutes=round(minutes)) if rng.random() < 0.96 else None
    service, symptom = rng.choice(SERVICES), rng.choice(SYMPTOMS)
    return Incident(
        title=f"{service}: {symptom}",
        severity=severity,
        detected_at=detected,
        resolved_at=resolved,
    )


def _children(
    rng: random.Random, incident: Incident, pk: int, now: datetime, rows: DemoRows
) -> None:
    detected: datetime = incident.detected_at
    resolved: datetime | None = incident.resolved_at
    issue_times = sorted(
        detected - timedelta(minutes=rng.randint(0, 8)) for _ in range(rng.randint(1, 3))
    )
    for issued in issue_times:
        rows.alerts.append(
            Alert(
                incident=pk,
                issue_time=issued,
                source=rng.choice(("pagerduty", "datadog", "statuspage")),
            )
        )
    ack = {"P1": 6, "P2": 14, "P3": 30, "P4": 60}[incident.severity]
    # Gathering starts after detection, however early the first alert fired.
    waited = timedelta(seconds=max(60, round(rng.gauss(ack, ack * 0.4) * 60)))
    gather = max(issue_times[0] + waited, detected + timedelta(minutes=1))
    end = resolved or now
    stamps = [detected, gather, gather + (end - gather) / 2, end]
    for phase, at in zip(PHASES, stamps, strict=True):
        if phase == "resolve" and resolved is None:
            break
        rows.events.append(
            TimelineEvent(incident=pk, kind="phase_entered", phase=phase, occurred_at=at, note=None)
        )
    for m in range(rng.randint(2, 4)):
        eta = detected + timedelta(minutes=30 * (m + 1))
        late = rng.random() < 0.15
        delivered = eta + timedelta(minutes=rng.randint(1, 20) if late else -rng.randint(0, 10))
        if delivered > end:
            continue
        rows.milestones.append(
            Milestone(
                incident=pk, name=f"update-{m + 1}", committed_eta=eta, delivered_at=delivered
            )
        )
    scores = (
        [min(5, max(1, round(rng.gauss(4.3, 0.7)))) for _ in range(rng.randint(0, 3))]
        if resolved
        else []
    )
    for n, score in enumerate(scores):
        rows.surveys.append(
            SurveyResponse(incident=pk, score=score, submitted_at=end + timedelta(hours=2 + n))
        )
