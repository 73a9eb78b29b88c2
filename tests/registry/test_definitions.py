"""KPI definitions: the seed migration, the admin mutations and their audit trail, summaries."""

from __future__ import annotations

import calendar
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from registry.tables import KpiDefinition, KpiRevision
from tests.conftest import codes, gql, make_token

SEED_SLUGS = ["cadence-adherence", "mtta", "mttr", "stakeholder-satisfaction"]
# Each seed KPI has two revisions: the page (version 1) and its machine expression (version 2).
SEED_VERSION = 2
SEEDED = (4, 4 * SEED_VERSION)
SEED_NOTE = "Seeded from the KPI source-of-truth page"
EXPRESSION_NOTE = "The service computes this KPI from incident data"

DEFINITION = """
    slug name description formula expression units
    targets { severity persona comparison threshold }
    dataSources visibility owner reviewCadence lastReviewedAt reviewDueAt
    version createdAt updatedAt
    revisions { version changedAt changedBy note changes { field before after } }
"""

KPI = f"query($slug: String!) {{ kpi(slug: $slug) {{ {DEFINITION} }} }}"
CREATE = (
    "mutation($input: CreateKpiDefinitionInput!) "
    f"{{ createKpiDefinition(input: $input) {{ {DEFINITION} }} }}"
)
UPDATE = (
    "mutation($slug: String!, $input: UpdateKpiDefinitionInput!, $note: String) "
    f"{{ updateKpiDefinition(slug: $slug, input: $input, note: $note) {{ {DEFINITION} }} }}"
)
REVIEW = (
    "mutation($slug: String!, $note: String) "
    f"{{ markKpiReviewed(slug: $slug, note: $note) {{ {DEFINITION} }} }}"
)

# The seed page, field by field (visibility and targets in their GraphQL spelling).
SEED_PAGE: dict[str, dict[str, Any]] = {
    "mttr": {
        "name": "Mean Time to Resolve",
        "description": "Average time from incident.detected_at to resolved_at.",
        "formula": "avg(resolved_at - detected_at)",
        "expression": "minutes(resolved_at - detected_at)",
        "units": "minutes",
        "targets": [("P1", None, "AT_MOST", 120.0), ("P2", None, "AT_MOST", 240.0)],
        "visibility": "EXEC",
        "owner": "Ops Leader",
    },
    "mtta": {
        "name": "Mean Time to Acknowledge",
        "description": "Average time from alert issue to first MIM action (phase 1 → 2).",
        "formula": "avg(phase_entered_at(gather) - alert.issueTime)",
        "expression": 'minutes(phase_entered_at("gather") - first(alerts.issue_time))',
        "units": "minutes",
        "targets": [("P1", None, "AT_MOST", 10.0), ("P2", None, "AT_MOST", 20.0)],
        "visibility": "INTERNAL",
        "owner": "MIM Lead",
    },
    "cadence-adherence": {
        "name": "Update Cadence Adherence",
        "description": "Percent of milestones delivered on/before committed ETA.",
        "formula": "on_time_milestones / total_milestones",
        "expression": (
            "100 * count(milestones where delivered_at <= committed_eta) / count(milestones)"
        ),
        "units": "%",
        "targets": [(None, None, "AT_LEAST", 90.0)],
        "visibility": "EXEC",
        "owner": "Comms Lead",
    },
    "stakeholder-satisfaction": {
        "name": "Stakeholder Signal Score",
        "description": "Rolling survey score post-incident (1–5).",  # noqa: RUF001
        "formula": "avg(survey_score)",
        "expression": "avg(surveys.score)",
        "units": "score",
        "targets": [(None, None, "AT_LEAST", 4.5)],
        "visibility": "EXEC",
        "owner": "Customer Ops",
    },
}


def ts(value: str) -> datetime:
    parsed = datetime.fromisoformat(value)
    assert parsed.tzinfo is not None, f"{value!r} has no UTC offset"
    return parsed


def target_tuples(targets: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return sorted(
        ((t["severity"], t["persona"], t["comparison"], t["threshold"]) for t in targets),
        key=repr,
    )


def plus_months(value: datetime, months: int) -> datetime:
    """Return `value` plus calendar months, clamping the day to the month's last."""
    index = value.month - 1 + months
    year, month = value.year + index // 12, index % 12 + 1
    day = min(value.day, calendar.monthrange(year, month)[1])
    return value.replace(year=year, month=month, day=day)


def changes_of(revision: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Return a revision's changes as field -> (before, after), JSON-decoded."""
    found = {}
    for change in revision["changes"]:
        assert change["field"] not in found, f"{change['field']} recorded twice"
        before = None if change["before"] is None else json.loads(change["before"])
        after = None if change["after"] is None else json.loads(change["after"])
        found[change["field"]] = (before, after)
    return found


def new_kpi(**overrides: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "slug": "mean-time-to-detect",
        "name": "Mean Time to Detect",
        "description": "Average time from the first alert to incident.detected_at.",
        "formula": "avg(detected_at - first_alert.issueTime)",
        "units": "minutes",
        "targets": [{"severity": "P1", "comparison": "AT_MOST", "threshold": 15.0}],
        "dataSources": ["alert.issue_time", "incident.detected_at"],
        "visibility": "INTERNAL",
        "owner": "SRE Lead",
        "reviewCadence": "P30D",
    }
    fields.update(overrides)
    return fields


async def counts() -> tuple[int, int]:
    return await KpiDefinition.count(), await KpiRevision.count()


async def kpi(client, slug: str, persona: str = "admin") -> dict[str, Any] | None:
    body = await gql(client, KPI, {"slug": slug}, persona=persona)
    assert "errors" not in body, body
    return body["data"]["kpi"]


# --- the seed migration --------------------------------------------------------------------


async def test_seed_migration_holds_exactly_the_four_kpis_of_the_page(client) -> None:
    body = await gql(client, "{ kpis { slug } }")
    assert [k["slug"] for k in body["data"]["kpis"]] == SEED_SLUGS
    assert await counts() == SEEDED


@pytest.mark.parametrize("slug", SEED_SLUGS)
async def test_seed_kpi_has_every_field_of_the_page(client, slug: str) -> None:
    found = await kpi(client, slug)
    assert found is not None
    page = SEED_PAGE[slug]
    assert found["slug"] == slug
    for field in ("name", "description", "formula", "expression", "units", "visibility", "owner"):
        assert found[field] == page[field], field
    assert target_tuples(found["targets"]) == sorted(page["targets"], key=repr)
    assert found["dataSources"], "the page asks which events/fields power each KPI"
    assert all(isinstance(s, str) and s.strip() for s in found["dataSources"])


@pytest.mark.parametrize("slug", SEED_SLUGS)
async def test_seed_kpi_is_version_2_with_a_review_cadence_and_two_migration_revisions(
    client, slug: str
) -> None:
    found = await kpi(client, slug)
    assert found is not None
    assert found["version"] == SEED_VERSION
    assert found["lastReviewedAt"] is None
    created = ts(found["createdAt"])
    expressed, revision = found["revisions"]
    assert ts(revision["changedAt"]) == created
    assert ts(found["updatedAt"]) == ts(expressed["changedAt"]) >= created
    # The cadence is a positive ISO 8601 duration and the first review is due a cadence after
    # creation; the seed uses whole days.
    cadence = found["reviewCadence"]
    assert cadence.startswith("P") and cadence.endswith("D"), cadence
    days = int(cadence[1:-1])
    assert days > 0
    assert ts(found["reviewDueAt"]) == created + timedelta(days=days)

    # Newest first: the expression migration, then the page itself.
    assert expressed["version"] == 2
    assert expressed["changedBy"] == "migration"
    assert expressed["note"] == EXPRESSION_NOTE
    assert changes_of(expressed) == {"expression": (None, SEED_PAGE[slug]["expression"])}
    assert [c["before"] for c in expressed["changes"]] == [None]

    assert revision["version"] == 1
    assert revision["changedBy"] == "migration"
    assert revision["note"] == SEED_NOTE
    changes = changes_of(revision)
    for field in ("name", "description", "formula", "units", "owner", "reviewCadence"):
        assert changes[field] == (None, found[field]), field
    assert changes["slug"] == (None, slug)
    assert str(changes["visibility"][1]).upper() == found["visibility"]
    assert changes["targets"][0] is None
    assert sorted(t["threshold"] for t in changes["targets"][1]) == sorted(
        t["threshold"] for t in found["targets"]
    )


# --- createKpiDefinition -------------------------------------------------------------------


async def test_create_returns_version_1_timestamps_and_review_due_a_cadence_later(client) -> None:
    before = datetime.now(UTC)
    body = await gql(client, CREATE, {"input": new_kpi()}, token=make_token(sub="alice"))
    after = datetime.now(UTC)
    assert "errors" not in body, body
    created = body["data"]["createKpiDefinition"]
    assert created["slug"] == "mean-time-to-detect"
    assert created["version"] == 1
    created_at = ts(created["createdAt"])
    assert before - timedelta(seconds=1) <= created_at <= after + timedelta(seconds=1)
    assert ts(created["updatedAt"]) == created_at
    assert created["lastReviewedAt"] is None
    assert ts(created["reviewDueAt"]) == created_at + timedelta(days=30)
    assert created["targets"] == [
        {"severity": "P1", "persona": None, "comparison": "AT_MOST", "threshold": 15.0}
    ]
    assert created["dataSources"] == ["alert.issue_time", "incident.detected_at"]
    assert created["visibility"] == "INTERNAL"
    assert created["expression"] is None


async def test_create_persists_the_definition_for_later_reads(client) -> None:
    body = await gql(client, CREATE, {"input": new_kpi()})
    assert "errors" not in body, body
    stored = await kpi(client, "mean-time-to-detect")
    assert stored is not None
    assert stored == body["data"]["createKpiDefinition"]
    assert await counts() == (SEEDED[0] + 1, SEEDED[1] + 1)
    listed = await gql(client, "{ kpis { slug } }")
    assert "mean-time-to-detect" in [k["slug"] for k in listed["data"]["kpis"]]


async def test_create_records_one_revision_by_the_token_subject_with_every_field(client) -> None:
    body = await gql(client, CREATE, {"input": new_kpi()}, token=make_token(sub="alice"))
    assert "errors" not in body, body
    created = body["data"]["createKpiDefinition"]
    [revision] = created["revisions"]
    assert revision["version"] == 1
    assert revision["changedBy"] == "alice"
    assert ts(revision["changedAt"]) == ts(created["createdAt"])
    for change in revision["changes"]:
        assert change["before"] is None, change
    changes = changes_of(revision)
    given = new_kpi()
    for field in ("slug", "name", "description", "formula", "units", "owner", "reviewCadence"):
        assert changes[field] == (None, given[field]), field
    assert changes["dataSources"] == (None, given["dataSources"])
    assert str(changes["visibility"][1]).upper() == "INTERNAL"
    [target] = changes["targets"][1]
    assert target["threshold"] == 15.0
    assert str(target["severity"]).upper() == "P1"
    assert str(target["comparison"]).upper() == "AT_MOST"


async def test_create_with_monthly_cadence_is_due_one_calendar_month_later(client) -> None:
    body = await gql(client, CREATE, {"input": new_kpi(reviewCadence="P1M")})
    assert "errors" not in body, body
    created = body["data"]["createKpiDefinition"]
    assert created["reviewCadence"] == "P1M"
    created_at = ts(created["createdAt"])
    assert ts(created["reviewDueAt"]) == plus_months(created_at, 1)


async def test_create_with_an_existing_slug_is_a_conflict_and_changes_nothing(client) -> None:
    original = await kpi(client, "mttr")
    body = await gql(client, CREATE, {"input": new_kpi(slug="mttr", name="Another MTTR")})
    assert codes(body) == ["CONFLICT"]
    assert body["data"] is None
    assert await kpi(client, "mttr") == original
    assert await counts() == SEEDED


@pytest.mark.parametrize(
    "slug",
    [
        pytest.param("Mttr", id="uppercase"),
        pytest.param("1mttr", id="leading-digit"),
        pytest.param("mean--time", id="double-hyphen"),
        pytest.param("mean-time-", id="trailing-hyphen"),
        pytest.param("a" * 65, id="65-chars"),
        pytest.param("", id="empty"),
        pytest.param("-mttr", id="leading-hyphen"),
        pytest.param("mean_time", id="underscore"),
        pytest.param("mean time", id="space"),
        pytest.param("new-kpi\n", id="trailing-newline"),
        pytest.param("mttr\n", id="existing-slug-and-newline"),
    ],
)
async def test_create_with_a_bad_slug_is_bad_input_and_writes_nothing(client, slug: str) -> None:
    body = await gql(client, CREATE, {"input": new_kpi(slug=slug)})
    assert codes(body) == ["BAD_USER_INPUT"]
    assert body["data"] is None
    assert await counts() == SEEDED


async def test_create_accepts_a_slug_of_exactly_64_characters(client) -> None:
    slug = "a" * 30 + "-" + "b" * 33
    assert len(slug) == 64
    body = await gql(client, CREATE, {"input": new_kpi(slug=slug)})
    assert "errors" not in body, body
    assert body["data"]["createKpiDefinition"]["slug"] == slug


@pytest.mark.parametrize(
    "cadence",
    [
        "90 days",
        "P0D",
        "-P1D",
        "",
        "PT0S",
        "P",
        " P30D",
        pytest.param("P30D\n", id="trailing-newline"),
    ],
)
async def test_create_with_a_bad_review_cadence_is_bad_input_and_writes_nothing(
    client, cadence: str
) -> None:
    body = await gql(client, CREATE, {"input": new_kpi(reviewCadence=cadence)})
    assert codes(body) == ["BAD_USER_INPUT"]
    assert body["data"] is None
    assert await counts() == SEEDED


@pytest.mark.parametrize("field", ["name", "description", "formula", "units", "owner"])
@pytest.mark.parametrize("blank", ["", "   "])
async def test_create_with_a_blank_required_text_is_bad_input(
    client, field: str, blank: str
) -> None:
    body = await gql(client, CREATE, {"input": new_kpi(**{field: blank})})
    assert codes(body) == ["BAD_USER_INPUT"]
    assert await counts() == SEEDED


@pytest.mark.parametrize(
    ("field", "limit"),
    [("name", 200), ("units", 64), ("owner", 200), ("description", 4000), ("formula", 4000)],
)
async def test_create_with_an_over_long_text_is_bad_input(client, field: str, limit: int) -> None:
    body = await gql(client, CREATE, {"input": new_kpi(**{field: "x" * (limit + 1)})})
    assert codes(body) == ["BAD_USER_INPUT"]
    assert await counts() == SEEDED


async def test_create_with_a_nul_character_is_bad_input(client) -> None:
    body = await gql(client, CREATE, {"input": new_kpi(name="Mean\x00Time")})
    assert codes(body) == ["BAD_USER_INPUT"]
    assert await counts() == SEEDED


async def test_create_with_an_invalid_expression_is_bad_input(client) -> None:
    body = await gql(client, CREATE, {"input": new_kpi(expression="avg(((")})
    assert codes(body) == ["BAD_USER_INPUT"]
    assert await counts() == SEEDED


@pytest.mark.parametrize("literal", ["1e400", "-1e400"])
async def test_create_with_an_infinite_threshold_literal_is_bad_input(client, literal: str) -> None:
    query = (
        'mutation { createKpiDefinition(input: { slug: "inf", name: "n", description: "d", '
        'formula: "f", units: "u", visibility: EXEC, owner: "o", reviewCadence: "P30D", '
        f"targets: [{{ comparison: AT_MOST, threshold: {literal} }}] }}) {{ slug }} }}"
    )
    body = await gql(client, query)
    assert codes(body) == ["BAD_USER_INPUT"]
    assert await counts() == SEEDED


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
async def test_create_with_a_non_finite_threshold_variable_is_bad_input(
    client, value: float
) -> None:
    # Python's JSON encoder writes NaN / Infinity, which a lenient JSON parser accepts.
    targets = [{"comparison": "AT_MOST", "threshold": value}]
    body = await gql(client, CREATE, {"input": new_kpi(targets=targets)})
    assert codes(body) == ["BAD_USER_INPUT"]
    assert await counts() == SEEDED


@pytest.mark.parametrize(
    "targets",
    [
        [
            {"severity": "P1", "comparison": "AT_MOST", "threshold": 10.0},
            {"severity": "P1", "comparison": "AT_MOST", "threshold": 20.0},
        ],
        [
            {"comparison": "AT_LEAST", "threshold": 1.0},
            {"comparison": "AT_MOST", "threshold": 2.0},
        ],
        [
            {"severity": "P2", "persona": "EXEC", "comparison": "AT_MOST", "threshold": 1.0},
            {"severity": "P2", "persona": "EXEC", "comparison": "AT_MOST", "threshold": 1.0},
        ],
    ],
    ids=["same-severity", "two-general", "same-severity-and-persona"],
)
async def test_create_with_duplicate_severity_persona_targets_is_bad_input(
    client, targets: list[dict[str, Any]]
) -> None:
    body = await gql(client, CREATE, {"input": new_kpi(targets=targets)})
    assert codes(body) == ["BAD_USER_INPUT"]
    assert await counts() == SEEDED


async def test_create_accepts_targets_differing_only_by_persona(client) -> None:
    targets = [
        {"severity": "P1", "comparison": "AT_MOST", "threshold": 10.0},
        {"severity": "P1", "persona": "EXEC", "comparison": "AT_MOST", "threshold": 20.0},
    ]
    body = await gql(client, CREATE, {"input": new_kpi(targets=targets)})
    assert "errors" not in body, body
    assert len(body["data"]["createKpiDefinition"]["targets"]) == 2


@pytest.mark.parametrize("persona", ["exec", "stakeholder", "responder", "ingest"])
async def test_only_admins_may_create_update_or_review_definitions(client, persona: str) -> None:
    created = await gql(client, CREATE, {"input": new_kpi()}, persona=persona)
    updated = await gql(
        client, UPDATE, {"slug": "mttr", "input": {"owner": "Someone"}}, persona=persona
    )
    reviewed = await gql(client, REVIEW, {"slug": "mttr"}, persona=persona)
    assert codes(created) == codes(updated) == codes(reviewed) == ["FORBIDDEN"]
    assert await counts() == SEEDED
    found = await kpi(client, "mttr")
    assert found is not None and found["version"] == SEED_VERSION
    assert found["owner"] == "Ops Leader"


# --- updateKpiDefinition -------------------------------------------------------------------


async def test_update_bumps_the_version_by_one_and_records_only_the_changed_fields(client) -> None:
    original = await kpi(client, "mttr")
    assert original is not None
    body = await gql(
        client,
        UPDATE,
        {
            "slug": "mttr",
            # name is given unchanged: it must not appear in the revision.
            "input": {"name": "Mean Time to Resolve", "owner": "Head of Ops", "units": "min"},
            "note": "ownership moved to the head of ops",
        },
        token=make_token(sub="bob"),
    )
    assert "errors" not in body, body
    updated = body["data"]["updateKpiDefinition"]
    assert updated["version"] == 3
    assert updated["owner"] == "Head of Ops"
    assert updated["units"] == "min"
    assert updated["name"] == original["name"]
    assert ts(updated["createdAt"]) == ts(original["createdAt"])
    assert ts(updated["updatedAt"]) > ts(original["updatedAt"])

    newest, *older = updated["revisions"]
    assert [newest["version"], *(r["version"] for r in older)] == [3, 2, 1]
    assert older == original["revisions"]
    assert newest["changedBy"] == "bob"
    assert newest["note"] == "ownership moved to the head of ops"
    assert ts(newest["changedAt"]) == ts(updated["updatedAt"])
    assert changes_of(newest) == {
        "owner": ("Ops Leader", "Head of Ops"),
        "units": ("minutes", "min"),
    }
    # Before and after are JSON documents, not bare strings.
    raw = {c["field"]: c for c in newest["changes"]}
    assert raw["owner"]["before"] == json.dumps("Ops Leader")
    assert raw["owner"]["after"] == json.dumps("Head of Ops")
    assert await KpiRevision.count().where(KpiRevision.kpi == "mttr") == 3


async def test_update_of_targets_records_them_before_and_after(client) -> None:
    targets = [{"severity": "P1", "comparison": "AT_MOST", "threshold": 90.0}]
    body = await gql(client, UPDATE, {"slug": "mttr", "input": {"targets": targets}})
    assert "errors" not in body, body
    updated = body["data"]["updateKpiDefinition"]
    assert updated["version"] == 3
    assert updated["targets"] == [
        {"severity": "P1", "persona": None, "comparison": "AT_MOST", "threshold": 90.0}
    ]
    changes = changes_of(updated["revisions"][0])
    assert set(changes) == {"targets"}
    before, after = changes["targets"]
    assert sorted(t["threshold"] for t in before) == [120.0, 240.0]
    assert [t["threshold"] for t in after] == [90.0]


async def test_update_of_review_cadence_moves_the_review_due_date(client) -> None:
    body = await gql(client, UPDATE, {"slug": "mttr", "input": {"reviewCadence": "P30D"}})
    assert "errors" not in body, body
    updated = body["data"]["updateKpiDefinition"]
    assert updated["reviewCadence"] == "P30D"
    assert ts(updated["reviewDueAt"]) == ts(updated["createdAt"]) + timedelta(days=30)
    assert changes_of(updated["revisions"][0]) == {"reviewCadence": ("P90D", "P30D")}


async def test_update_of_visibility_hides_the_kpi_from_execs(client) -> None:
    body = await gql(client, UPDATE, {"slug": "mttr", "input": {"visibility": "INTERNAL"}})
    assert "errors" not in body, body
    updated = body["data"]["updateKpiDefinition"]
    assert updated["visibility"] == "INTERNAL"
    [field] = changes_of(updated["revisions"][0])
    assert field == "visibility"
    assert await kpi(client, "mttr", persona="exec") is None


async def test_successive_updates_list_revisions_newest_first(client) -> None:
    for owner, note in (("A", "first"), ("B", "second"), ("C", None)):
        body = await gql(
            client, UPDATE, {"slug": "cadence-adherence", "input": {"owner": owner}, "note": note}
        )
        assert "errors" not in body, body
    found = await kpi(client, "cadence-adherence")
    assert found is not None
    assert found["version"] == 5
    assert [r["version"] for r in found["revisions"]] == [5, 4, 3, 2, 1]
    assert [r["note"] for r in found["revisions"][:3]] == [None, "second", "first"]
    assert changes_of(found["revisions"][0]) == {"owner": ("B", "C")}
    assert changes_of(found["revisions"][1]) == {"owner": ("A", "B")}
    stamps = [ts(r["changedAt"]) for r in found["revisions"]]
    assert stamps == sorted(stamps, reverse=True)


@pytest.mark.parametrize(
    "given",
    [
        {},
        {"name": "Mean Time to Resolve"},
        {"owner": "Ops Leader", "units": "minutes", "reviewCadence": "P90D"},
        {"expression": "minutes(resolved_at - detected_at)"},
        {
            "targets": [
                {"severity": "P1", "comparison": "AT_MOST", "threshold": 120.0},
                {"severity": "P2", "comparison": "AT_MOST", "threshold": 240.0},
            ]
        },
        {
            "targets": [
                {"severity": "P1", "comparison": "AT_MOST", "threshold": 120},
                {"severity": "P2", "comparison": "AT_MOST", "threshold": 240},
            ]
        },
    ],
    ids=[
        "empty",
        "same-name",
        "same-several",
        "same-expression",
        "same-targets",
        "same-targets-as-integers",
    ],
)
async def test_update_that_changes_nothing_keeps_the_version(client, given: dict[str, Any]) -> None:
    original = await kpi(client, "mttr")
    body = await gql(client, UPDATE, {"slug": "mttr", "input": given, "note": "no-op"})
    assert "errors" not in body, body
    assert body["data"]["updateKpiDefinition"]["version"] == SEED_VERSION
    assert await kpi(client, "mttr") == original
    assert await counts() == SEEDED


async def test_update_of_a_null_expression_to_null_keeps_the_version(client) -> None:
    created = await gql(client, CREATE, {"input": new_kpi()})
    assert "errors" not in created, created
    original = await kpi(client, "mean-time-to-detect")
    assert original is not None and original["expression"] is None
    body = await gql(client, UPDATE, {"slug": "mean-time-to-detect", "input": {"expression": None}})
    assert "errors" not in body, body
    assert body["data"]["updateKpiDefinition"]["version"] == 1
    assert await kpi(client, "mean-time-to-detect") == original
    assert await counts() == (SEEDED[0] + 1, SEEDED[1] + 1)


async def test_update_of_an_unknown_slug_is_bad_input(client) -> None:
    body = await gql(client, UPDATE, {"slug": "no-such-kpi", "input": {"owner": "X"}})
    assert codes(body) == ["BAD_USER_INPUT"]
    assert body["data"] is None
    assert await counts() == SEEDED


@pytest.mark.parametrize(
    "field",
    ["name", "description", "formula", "units", "visibility", "owner", "reviewCadence"],
)
async def test_update_setting_a_required_field_to_null_is_bad_input(client, field: str) -> None:
    original = await kpi(client, "mttr")
    body = await gql(client, UPDATE, {"slug": "mttr", "input": {field: None}})
    assert codes(body) == ["BAD_USER_INPUT"]
    assert await kpi(client, "mttr") == original
    assert await counts() == SEEDED


@pytest.mark.parametrize(
    "given",
    [
        {"owner": "New owner", "reviewCadence": "90 days"},
        {"owner": "New owner", "name": "  "},
        {"owner": "New owner", "slug": "renamed"},
        {
            "owner": "New owner",
            "targets": [
                {"comparison": "AT_MOST", "threshold": 1.0},
                {"comparison": "AT_MOST", "threshold": 2.0},
            ],
        },
        {"owner": "New owner", "expression": "avg((("},
    ],
    ids=["bad-cadence", "blank-name", "slug", "duplicate-targets", "invalid-expression"],
)
async def test_rejected_update_writes_nothing(client, given: dict[str, Any]) -> None:
    original = await kpi(client, "mttr")
    definitions_before = await KpiDefinition.select().where(KpiDefinition.slug == "mttr")
    body = await gql(client, UPDATE, {"slug": "mttr", "input": given, "note": "rejected"})
    assert codes(body) == ["BAD_USER_INPUT"]
    if "slug" in given:  # no such input field: a request error, so nothing ran
        assert "data" not in body
    else:
        assert body["data"] is None
    assert await kpi(client, "mttr") == original
    assert await KpiDefinition.select().where(KpiDefinition.slug == "mttr") == definitions_before
    assert await counts() == SEEDED
    assert await KpiRevision.count().where(KpiRevision.note == "rejected") == 0


# --- markKpiReviewed -----------------------------------------------------------------------


async def test_mark_reviewed_sets_last_reviewed_now_and_the_next_review_a_cadence_later(
    client,
) -> None:
    before = datetime.now(UTC)
    body = await gql(
        client,
        REVIEW,
        {"slug": "mttr", "note": "quarterly review: definition still right"},
        token=make_token(sub="carol"),
    )
    after = datetime.now(UTC)
    assert "errors" not in body, body
    reviewed = body["data"]["markKpiReviewed"]
    last = ts(reviewed["lastReviewedAt"])
    assert before - timedelta(seconds=1) <= last <= after + timedelta(seconds=1)
    assert ts(reviewed["reviewDueAt"]) == last + timedelta(days=90)
    assert reviewed["version"] == 3
    assert ts(reviewed["updatedAt"]) == last

    revision = reviewed["revisions"][0]
    assert revision["version"] == 3
    assert revision["changedBy"] == "carol"
    assert revision["note"] == "quarterly review: definition still right"
    changes = changes_of(revision)
    assert set(changes) == {"lastReviewedAt"}
    previous, now = changes["lastReviewedAt"]
    assert previous is None
    assert ts(now) == last
    assert len(reviewed["revisions"]) == 3


async def test_mark_reviewed_twice_records_the_previous_review_as_before(client) -> None:
    first = await gql(client, REVIEW, {"slug": "stakeholder-satisfaction"})
    second = await gql(client, REVIEW, {"slug": "stakeholder-satisfaction", "note": "again"})
    assert "errors" not in first and "errors" not in second, (first, second)
    one = first["data"]["markKpiReviewed"]
    two = second["data"]["markKpiReviewed"]
    assert two["version"] == 4
    assert ts(two["lastReviewedAt"]) >= ts(one["lastReviewedAt"])
    assert ts(two["reviewDueAt"]) == ts(two["lastReviewedAt"]) + timedelta(days=180)
    previous, now = changes_of(two["revisions"][0])["lastReviewedAt"]
    assert ts(previous) == ts(one["lastReviewedAt"])
    assert ts(now) == ts(two["lastReviewedAt"])


async def test_mark_reviewed_with_a_monthly_cadence_is_due_a_calendar_month_later(client) -> None:
    created = await gql(client, CREATE, {"input": new_kpi(reviewCadence="P1M")})
    assert "errors" not in created, created
    body = await gql(client, REVIEW, {"slug": "mean-time-to-detect"})
    assert "errors" not in body, body
    reviewed = body["data"]["markKpiReviewed"]
    assert ts(reviewed["reviewDueAt"]) == plus_months(ts(reviewed["lastReviewedAt"]), 1)


async def test_mark_reviewed_of_an_unknown_slug_is_bad_input_and_writes_nothing(client) -> None:
    body = await gql(client, REVIEW, {"slug": "no-such-kpi"})
    assert codes(body) == ["BAD_USER_INPUT"]
    assert await counts() == SEEDED


# --- summary -------------------------------------------------------------------------------

SUMMARY = """
query($slug: String!, $from: DateTime, $to: DateTime, $severity: Severity) {
  kpi(slug: $slug) {
    summary(from: $from, to: $to, severity: $severity) {
      count value meetsTarget target { severity persona comparison threshold }
    }
  }
}
"""
UPSERT = "mutation($input: IncidentInput!) { upsertIncident(input: $input) { id severity } }"
RECORD = (
    "mutation($inputs: [RecordObservationInput!]!) "
    "{ recordObservations(inputs: $inputs) { value } }"
)


async def add_incident(client, key: str, severity: str, resolved_at: str | None = None) -> None:
    """Ingest an incident; left unresolved (and with no alerts, milestones or surveys) no KPI is
    computed for it, so a summary sees only the observations the test records."""
    body = await gql(
        client,
        UPSERT,
        {
            "input": {
                "id": key,
                "title": f"{key}: checkout latency",
                "severity": severity,
                "detectedAt": "2026-01-01T00:00:00Z",
                "resolvedAt": resolved_at,
            }
        },
        persona="ingest",
    )
    assert "errors" not in body, body


async def observe(client, slug: str, rows: list[tuple[str, str, float]]) -> None:
    inputs = [
        {"kpiSlug": slug, "incidentId": key, "timestamp": at, "value": value, "source": "manual"}
        for key, at, value in rows
    ]
    body = await gql(client, RECORD, {"inputs": inputs}, persona="ingest")
    assert "errors" not in body, body
    assert len(body["data"]["recordObservations"]) == len(rows)


async def summary(client, slug: str, persona: str = "admin", **window: Any) -> dict[str, Any]:
    body = await gql(client, SUMMARY, {"slug": slug, **window}, persona=persona)
    assert "errors" not in body, body
    assert body["data"]["kpi"] is not None
    result: dict[str, Any] = body["data"]["kpi"]["summary"]
    return result


@pytest.fixture
async def mttr_observations(client) -> None:
    await add_incident(client, "INC-1", "P1")
    await add_incident(client, "INC-2", "P2")
    await add_incident(client, "INC-3", "P1")
    await observe(
        client,
        "mttr",
        [
            ("INC-1", "2026-01-10T00:00:00Z", 100.0),
            ("INC-2", "2026-01-15T00:00:00Z", 200.0),
            ("INC-3", "2026-01-20T00:00:00Z", 160.0),
        ],
    )


@pytest.mark.usefixtures("mttr_observations")
async def test_summary_counts_and_averages_every_observation(client) -> None:
    found = await summary(client, "mttr")
    assert found["count"] == 3
    assert found["value"] == pytest.approx((100 + 200 + 160) / 3)


@pytest.mark.usefixtures("mttr_observations")
async def test_summary_without_severity_has_no_target_when_the_kpi_has_no_general_one(
    client,
) -> None:
    found = await summary(client, "mttr")
    assert found["target"] is None
    assert found["meetsTarget"] is None


@pytest.mark.usefixtures("mttr_observations")
async def test_summary_for_a_severity_uses_its_incidents_and_its_target(client) -> None:
    p1 = await summary(client, "mttr", severity="P1")
    assert p1["count"] == 2
    assert p1["value"] == pytest.approx(130.0)
    assert p1["target"] == {
        "severity": "P1",
        "persona": None,
        "comparison": "AT_MOST",
        "threshold": 120.0,
    }
    assert p1["meetsTarget"] is False

    p2 = await summary(client, "mttr", severity="P2")
    assert p2["count"] == 1
    assert p2["value"] == pytest.approx(200.0)
    assert p2["target"]["threshold"] == 240.0
    assert p2["meetsTarget"] is True


@pytest.mark.usefixtures("mttr_observations")
async def test_summary_window_includes_from_and_excludes_to(client) -> None:
    found = await summary(
        client, "mttr", **{"from": "2026-01-10T00:00:00Z"}, to="2026-01-20T00:00:00Z"
    )
    assert found["count"] == 2
    assert found["value"] == pytest.approx(150.0)

    only_last = await summary(client, "mttr", **{"from": "2026-01-20T00:00:00Z"})
    assert (only_last["count"], only_last["value"]) == (1, pytest.approx(160.0))

    before_last = await summary(client, "mttr", to="2026-01-20T00:00:00Z")
    assert (before_last["count"], before_last["value"]) == (2, pytest.approx(150.0))


@pytest.mark.usefixtures("mttr_observations")
async def test_summary_window_honours_utc_offsets(client) -> None:
    # 01:00+01:00 is 00:00Z: the first observation is on the inclusive bound.
    found = await summary(
        client, "mttr", **{"from": "2026-01-10T01:00:00+01:00"}, to="2026-01-15T01:00:00+01:00"
    )
    assert found["count"] == 1
    assert found["value"] == pytest.approx(100.0)


@pytest.mark.usefixtures("mttr_observations")
async def test_summary_window_and_severity_combine(client) -> None:
    found = await summary(client, "mttr", severity="P1", to="2026-01-15T00:00:00Z")
    assert found["count"] == 1
    assert found["value"] == pytest.approx(100.0)
    assert found["meetsTarget"] is True


@pytest.mark.usefixtures("mttr_observations")
async def test_summary_with_no_observations_has_no_value_and_no_verdict(client) -> None:
    empty = await summary(client, "mttr", **{"from": "2027-01-01T00:00:00Z"})
    assert empty == {"count": 0, "value": None, "meetsTarget": None, "target": None}

    p1 = await summary(client, "mttr", severity="P1", **{"from": "2027-01-01T00:00:00Z"})
    assert p1["count"] == 0
    assert p1["value"] is None
    assert p1["meetsTarget"] is None
    assert p1["target"]["threshold"] == 120.0

    untouched = await summary(client, "stakeholder-satisfaction")
    assert untouched["count"] == 0
    assert untouched["value"] is None
    assert untouched["meetsTarget"] is None


@pytest.mark.usefixtures("mttr_observations")
async def test_several_summary_windows_in_one_request_each_get_their_own_aggregate(
    client,
) -> None:
    body = await gql(
        client,
        """{ kpis { slug
             all: summary { count value }
             p1: summary(severity: P1) { count value target { threshold } }
             late: summary(from: "2026-01-15T00:00:00Z") { count value } } }""",
    )
    assert "errors" not in body, body
    by_slug = {k["slug"]: k for k in body["data"]["kpis"]}
    mttr = by_slug["mttr"]
    assert mttr["all"] == {"count": 3, "value": pytest.approx(460 / 3)}
    assert mttr["p1"] == {"count": 2, "value": pytest.approx(130.0), "target": {"threshold": 120.0}}
    assert mttr["late"] == {"count": 2, "value": pytest.approx(180.0)}
    for slug in ("mtta", "cadence-adherence", "stakeholder-satisfaction"):
        assert by_slug[slug]["all"] == {"count": 0, "value": None}, slug


async def test_summary_aggregates_computed_observations_with_ingested_ones(client) -> None:
    # Resolving INC-4 computes its MTTR (150 minutes) as of its resolution.
    await add_incident(client, "INC-4", "P1", resolved_at="2026-01-01T02:30:00Z")
    await add_incident(client, "INC-5", "P1")
    await observe(client, "mttr", [("INC-5", "2026-01-10T00:00:00Z", 100.0)])

    found = await summary(client, "mttr", severity="P1")
    assert found["count"] == 2
    assert found["value"] == pytest.approx(125.0)
    assert found["target"]["threshold"] == 120.0
    assert found["meetsTarget"] is False

    computed = await summary(
        client, "mttr", **{"from": "2026-01-01T02:30:00Z"}, to="2026-01-01T02:30:01Z"
    )
    assert (computed["count"], computed["value"]) == (1, pytest.approx(150.0))
    for slug in ("mtta", "cadence-adherence", "stakeholder-satisfaction"):
        assert (await summary(client, slug))["count"] == 0, slug


async def test_summary_uses_the_general_target_without_or_despite_a_severity(client) -> None:
    await add_incident(client, "INC-7", "P3")
    await add_incident(client, "INC-8", "P1")
    await observe(
        client,
        "cadence-adherence",
        [("INC-7", "2026-02-01T00:00:00Z", 95.0), ("INC-8", "2026-02-02T00:00:00Z", 80.0)],
    )
    general = {"severity": None, "persona": None, "comparison": "AT_LEAST", "threshold": 90.0}
    everything = await summary(client, "cadence-adherence")
    assert (everything["count"], everything["value"]) == (2, pytest.approx(87.5))
    assert everything["target"] == general
    assert everything["meetsTarget"] is False

    p3 = await summary(client, "cadence-adherence", severity="P3")
    assert (p3["count"], p3["value"]) == (1, pytest.approx(95.0))
    assert p3["target"] == general
    assert p3["meetsTarget"] is True


async def test_summary_uses_the_callers_persona_target(client) -> None:
    targets = [
        {"comparison": "AT_LEAST", "threshold": 4.0},
        {"persona": "EXEC", "comparison": "AT_LEAST", "threshold": 4.8},
    ]
    created = await gql(
        client,
        CREATE,
        {"input": new_kpi(slug="exec-signal", visibility="EXEC", units="score", targets=targets)},
    )
    assert "errors" not in created, created
    await add_incident(client, "INC-9", "P2")
    await observe(client, "exec-signal", [("INC-9", "2026-03-01T00:00:00Z", 4.5)])

    as_exec = await summary(client, "exec-signal", persona="exec")
    assert as_exec["count"] == 1
    assert as_exec["target"] == {
        "severity": None,
        "persona": "EXEC",
        "comparison": "AT_LEAST",
        "threshold": 4.8,
    }
    assert as_exec["meetsTarget"] is False

    for persona in ("admin", "stakeholder"):
        other = await summary(client, "exec-signal", persona=persona)
        assert other["count"] == 1
        assert other["target"] == {
            "severity": None,
            "persona": None,
            "comparison": "AT_LEAST",
            "threshold": 4.0,
        }, persona
        assert other["meetsTarget"] is True, persona


@pytest.mark.parametrize(
    "sources",
    [
        pytest.param(["ok", "  "], id="blank"),
        pytest.param(["x" * 201], id="too-long"),
        pytest.param([f"source-{n}" for n in range(51)], id="too-many"),
        pytest.param(["alert\x00issue_time"], id="nul"),
    ],
)
async def test_create_with_bad_data_sources_is_bad_input_and_writes_nothing(
    client, sources: list[str]
) -> None:
    body = await gql(client, CREATE, {"input": new_kpi(dataSources=sources)})
    assert codes(body) == ["BAD_USER_INPUT"]
    assert "dataSources" in body["errors"][0]["message"]
    assert await counts() == SEEDED


async def test_a_note_over_4000_characters_is_bad_input_and_writes_nothing(client) -> None:
    before = await kpi(client, "mttr")
    for query, variables in (
        (UPDATE, {"slug": "mttr", "input": {"name": "Renamed"}, "note": "n" * 4001}),
        (REVIEW, {"slug": "mttr", "note": "n" * 4001}),
    ):
        body = await gql(client, query, variables)
        assert codes(body) == ["BAD_USER_INPUT"]
        assert "note" in body["errors"][0]["message"]
    assert await kpi(client, "mttr") == before
    assert await counts() == SEEDED
