"""The generated typed client (clients/python/mim_client) against the real app over real HTTP.

Each shipped operation runs through its typed method as its persona, with real signed tokens, and
comes back as pydantic models holding the values the data makes. The app trusts only the shipped
operations for exec and stakeholder tokens (MIM_TRUSTED_OPERATIONS), as a deployment for exec
dashboards would: the client sends each operation's exact text, so it passes.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime

import pytest
from aiohttp.test_utils import TestServer
from mim_client import (
    Bucket,
    Comparison,
    CreateKpiDefinitionInput,
    GraphQLClientGraphQLMultiError,
    IncidentInput,
    KpiStatus,
    MimClient,
    PlanAction,
    RecordObservationInput,
    Severity,
    UpdateKpiDefinitionInput,
    Visibility,
)

from schema.operations import SHIPPED
from server.app import create_app
from server.config import Settings
from tests.conftest import ENV, make_token

DETECTED = datetime(2026, 2, 4, 9, 0, tzinfo=UTC)  # a Wednesday
RESOLVED = datetime(2026, 2, 4, 10, 30, tzinfo=UTC)  # mttr: 90 minutes
FROM, TO = datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 4, 1, tzinfo=UTC)
INTERNAL_SLUG = "typed-internal-probe"

Connect = Callable[[str], MimClient]


@pytest.fixture
async def connect() -> AsyncIterator[Connect]:
    """Serve the app on a real port and return a maker of typed clients, one per persona."""
    settings = Settings.from_env({**ENV, "MIM_TRUSTED_OPERATIONS": "exec,stakeholder"})
    clients: list[MimClient] = []
    async with TestServer(create_app(settings)) as server:

        def make(persona: str) -> MimClient:
            token = make_token(persona, sub=f"typed-{persona}")
            clients.append(
                MimClient(str(server.make_url("/graphql")), {"Authorization": f"Bearer {token}"})
            )
            return clients[-1]

        yield make
        for client in clients:
            await client.http_client.aclose()


@pytest.fixture
async def incident(connect: Connect) -> str:
    """An ingest worker's P1 incident, resolved after 90 minutes, and an internal KPI by admin."""
    upserted = await connect("ingest").upsert_incident(
        IncidentInput(
            id="INC-TYPED",
            title="Checkout down",
            severity=Severity.P1,
            detected_at=DETECTED,
            resolved_at=RESOLVED,
        )
    )
    created = await connect("admin").create_kpi_definition(
        CreateKpiDefinitionInput(
            slug=INTERNAL_SLUG,
            name="Internal probe",
            description="Seen by responders only.",
            formula="minutes to resolve",
            expression="minutes(resolved_at - detected_at)",
            units="minutes",
            visibility=Visibility.INTERNAL,
            owner="MIM Lead",
            review_cadence="P30D",
        )
    )
    assert created.create_kpi_definition.version == 1
    return upserted.upsert_incident.id


def test_the_client_has_a_typed_method_for_every_shipped_operation() -> None:
    snake = {re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower() for name in SHIPPED}
    assert snake <= set(vars(MimClient)), snake - set(vars(MimClient))


async def test_exec_dashboard_is_typed_and_names_no_internal_kpi(
    connect: Connect, incident: str
) -> None:
    dashboard = await connect("exec").exec_dashboard(severity=Severity.P1)
    by_slug = {kpi.slug: kpi for kpi in dashboard.kpis}
    assert set(by_slug) == {"mttr", "cadence-adherence", "stakeholder-satisfaction"}
    mttr = by_slug["mttr"].summary
    assert (mttr.count, mttr.value, mttr.meets_target) == (1, 90.0, True)
    assert mttr.target is not None and mttr.target.comparison is Comparison.AT_MOST
    assert mttr.target.threshold == 120.0 and mttr.as_of.tzinfo is not None
    text = dashboard.model_dump_json()
    assert "mtta" not in text and INTERNAL_SLUG not in text
    # The twin: a responder's list names both internal KPIs.
    listed = await connect("responder").kpi_list()
    assert {"mtta", INTERNAL_SLUG} <= {kpi.slug for kpi in listed.kpis}


async def test_stakeholder_views_are_typed_and_hold_the_data(
    connect: Connect, incident: str
) -> None:
    stakeholder = connect("stakeholder")
    report = await stakeholder.stakeholder_report(from_=FROM, to=TO)
    [mttr] = [kpi for kpi in report.kpis if kpi.slug == "mttr"]
    assert (mttr.p_1.count, mttr.p_1.value, mttr.p_2.count, mttr.p_2.value) == (1, 90.0, 0, None)
    assert sum(point.count for point in mttr.series) == 1
    assert {kpi.slug for kpi in report.kpis}.isdisjoint({"mtta", INTERNAL_SLUG})
    listed = await stakeholder.kpi_list(visibility=Visibility.EXEC)
    assert {kpi.visibility for kpi in listed.kpis} == {Visibility.EXEC}


async def test_exec_trend_and_definition_as_of_are_typed(connect: Connect, incident: str) -> None:
    exec_ = connect("exec")
    trend = await exec_.kpi_trend(slug="mttr", bucket=Bucket.WEEK, from_=FROM, to=TO)
    assert trend.kpi is not None
    [week] = [point for point in trend.kpi.series if point.count]
    assert (week.start, week.mean, week.p_50) == (datetime(2026, 2, 2, tzinfo=UTC), 90.0, 90.0)
    as_of = await exec_.kpi_definition_as_of(slug="mttr", as_of=datetime(2030, 1, 1, tzinfo=UTC))
    assert as_of.kpi is not None and as_of.kpi.expression == "minutes(resolved_at - detected_at)"
    assert as_of.kpi.status is KpiStatus.ACTIVE
    hidden = await exec_.kpi_definition_as_of(slug="mtta", as_of=datetime(2030, 1, 1, tzinfo=UTC))
    assert hidden.kpi is None


async def test_responder_views_are_typed_and_hold_the_data(connect: Connect, incident: str) -> None:
    responder = connect("responder")
    scorecard = await responder.incident_scorecard(id=incident)
    assert scorecard.incident is not None
    assert (scorecard.incident.severity, scorecard.incident.detected_at) == (Severity.P1, DETECTED)
    values = {o.kpi.slug: o.value for o in scorecard.incident.kpis}
    assert values == {"mttr": 90.0, INTERNAL_SLUG: 90.0}
    readiness = await responder.responder_readiness(severity=Severity.P1)
    assert readiness.incidents.total_count == 1
    [edge] = readiness.incidents.edges
    assert (edge.node.id, edge.node.resolved_at) == (incident, RESOLVED)


async def test_ingest_and_admin_mutations_are_typed(connect: Connect, incident: str) -> None:
    [recorded] = (
        await connect("ingest").record_observations(
            inputs=[
                RecordObservationInput(
                    kpi_slug="cadence-adherence",
                    incident_id=incident,
                    timestamp=RESOLVED,
                    value=95.0,
                    source="manual",
                )
            ]
        )
    ).record_observations
    assert (recorded.value, recorded.timestamp, recorded.meets_target) == (95.0, RESOLVED, True)
    admin = connect("admin")
    updated = await admin.update_kpi_definition(
        slug="mttr", input=UpdateKpiDefinitionInput(owner="Ops"), note="typed"
    )
    [newest, *_] = updated.update_kpi_definition.revisions
    assert (newest.version, newest.note) == (updated.update_kpi_definition.version, "typed")
    assert [(c.field, c.before, c.after) for c in newest.changes] == [
        ("owner", '"Ops Leader"', '"Ops"')
    ]
    retired = await admin.retire_kpi_definition(slug=INTERNAL_SLUG, note="typed")
    assert retired.retire_kpi_definition.status is KpiStatus.RETIRED
    plan = await admin.apply_kpi_definitions(document="kpis: []\n", dry_run=True)
    assert not plan.apply_kpi_definitions.applied
    actions = {kpi.slug: kpi.action for kpi in plan.apply_kpi_definitions.kpis}
    assert actions["mttr"] is PlanAction.ABSENT, "an empty file names none of the KPIs"


async def test_a_trusted_persona_sending_other_text_is_refused(connect: Connect) -> None:
    # The twin of the tests above: the trusted-operations setting is on for these tokens.
    exec_ = connect("exec")
    response = await exec_.execute(query="{ kpis { slug } }")
    with pytest.raises(GraphQLClientGraphQLMultiError) as refused:
        exec_.get_data(response)
    assert [error.extensions for error in refused.value.errors] == [{"code": "FORBIDDEN"}]
