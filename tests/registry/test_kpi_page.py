"""The KPI Source of Truth page rendered from the registry: its golden form, its escaping, and
that an exec or stakeholder page holds no trace of an internal KPI.

The golden files (tests/registry/golden/kpi-page-*.md) are the pages of the seed KPIs with fixed
timestamps. After a deliberate change to the page, regenerate them and read the diff:

    MIM_UPDATE_GOLDEN=1 .venv/bin/pytest tests/registry/test_kpi_page.py -k golden
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from registry import kpi_page, kpis
from registry.errors import Forbidden
from registry.model import Comparison, Persona, Severity, Target, Viewer, Visibility
from registry.tables import KpiDefinition, KpiRevision
from tests.conftest import EXEC_ONLY, gql, make_token

GOLDEN = Path(__file__).parent / "golden"
UPDATE_GOLDEN = os.environ.get("MIM_UPDATE_GOLDEN") == "1"
NOW = datetime(2026, 4, 15, 12, 0, tzinfo=UTC)
CREATED = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)  # the seed page: every version 1
EXPRESSED = datetime(2026, 1, 5, 9, 30, tzinfo=UTC)  # the machine formulas: every version 2
MTTR_REVIEWED = datetime(2026, 3, 1, 10, 0, tzinfo=UTC)  # due 2026-05-30, after NOW
RETIRED_AT = datetime(2026, 4, 10, 8, 0, tzinfo=UTC)

ADMIN = Viewer(subject="page", personas=frozenset({Persona.ADMIN}))

CREATE = """
mutation ($input: CreateKpiDefinitionInput!) { createKpiDefinition(input: $input) { slug } }
"""
UPDATE = """
mutation ($slug: String!, $input: UpdateKpiDefinitionInput!, $note: String) {
  updateKpiDefinition(slug: $slug, input: $input, note: $note) { version }
}
"""
RETIRE = """
mutation ($slug: String!, $note: String) {
  retireKpiDefinition(slug: $slug, note: $note) { status }
}
"""

# Distinctive strings for the canary KPIs, found nowhere else.
CANARY = {
    "slug": "canary-page-kpi",
    "name": "Canary Page Name 5e1d",
    "description": "Canary page description 9b2c",
    "formula": "count(canary_page_formula)",
    "units": "canary-units",
    "owner": "Canary Page Owner 77af",
    "reviewCadence": "P30D",
}
CANARY_NOTES = ("Canary page note 3f0a", "Canary page note 8c4e")


def viewer(persona: str) -> Viewer:
    return Viewer(subject=f"{persona}-reader", personas=frozenset({Persona(persona)}))


async def fix_timestamps() -> None:
    """Give the seed rows fixed times in place of the migration run's."""
    await KpiDefinition.update(
        {KpiDefinition.created_at: CREATED, KpiDefinition.updated_at: EXPRESSED}, force=True
    )
    await KpiDefinition.update({KpiDefinition.last_reviewed_at: MTTR_REVIEWED}).where(
        KpiDefinition.slug == "mttr"
    )
    for version, at in ((1, CREATED), (2, EXPRESSED)):
        await KpiRevision.update({KpiRevision.changed_at: at}).where(KpiRevision.version == version)


async def render(persona: str) -> str:
    return await kpi_page.render(viewer=viewer(persona), now=NOW)


def ok(body: dict[str, Any]) -> dict[str, Any]:
    assert "errors" not in body, body
    data: dict[str, Any] = body["data"]
    return data


async def create(client: Any, visibility: str, **fields: Any) -> str:
    kpi = {**CANARY, "visibility": visibility, **fields}
    ok(await gql(client, CREATE, {"input": kpi}, token=make_token("admin", sub="page-admin")))
    return str(kpi["slug"])


async def update(client: Any, slug: str, note: str, **fields: Any) -> None:
    variables = {"slug": slug, "input": fields, "note": note}
    ok(await gql(client, UPDATE, variables, token=make_token("admin", sub="page-admin")))


def sections(page: str) -> dict[str, str]:
    """Return the page's sections by heading."""
    found = {}
    for part in page.split("\n## ")[1:]:
        heading, _, body = part.partition("\n")
        found[heading] = body
    return found


def cells(line: str) -> list[str]:
    """Return a table row's cells as a GFM renderer splits them (a backslash escapes a pipe)."""
    assert line.startswith("| ") and line.endswith(" |"), line
    found, current, chars = [], "", iter(line[1:-1])
    for char in chars:
        if char == "\\":
            current += char + next(chars)
        elif char == "|":
            found.append(current.strip())
            current = ""
        else:
            current += char
    return [*found, current.strip()]


def rows(section: str) -> list[list[str]]:
    """Return the rows of the table in a section, without its header."""
    lines = [line for line in section.splitlines() if line.startswith("|")]
    return [cells(line) for line in lines[2:]]


def slugs_in(section: str) -> list[str]:
    return [row[0] for row in rows(section)]


async def internal_texts() -> list[str]:
    """Return the slug, name, description and owner of every internal KPI, as written and as
    escaped for a table cell."""
    internal = await kpis.list_definitions(
        viewer=ADMIN, visibility=Visibility.INTERNAL, include_retired=True
    )
    assert internal, "the check needs an internal KPI"
    texts = [t for d in internal for t in (d.slug, d.name, d.description, d.owner)]
    return sorted({form for t in texts for form in (t, kpi_page.cell(t))})


def assert_no_trace(page: str, texts: list[str]) -> None:
    leaked = [t for t in texts if t in page]
    assert not leaked, f"internal KPI text on the page: {leaked}"


@pytest.mark.parametrize("persona", ["admin", "exec"])
async def test_page_of_the_seed_kpis_matches_the_golden_file(persona: str) -> None:
    await fix_timestamps()
    page = await render(persona)
    golden = GOLDEN / f"kpi-page-{persona}.md"
    if UPDATE_GOLDEN:
        golden.parent.mkdir(exist_ok=True)
        golden.write_bytes(page.encode())
    assert page.encode() == golden.read_bytes()


async def test_rendering_twice_gives_the_same_page() -> None:
    await fix_timestamps()
    assert await render("admin") == await render("admin")


async def test_current_kpis_are_ordered_by_slug_and_say_when_a_review_is_overdue() -> None:
    await fix_timestamps()
    current = rows(sections(await render("admin"))["Current KPIs"])
    assert [row[0] for row in current] == sorted(row[0] for row in current)
    due = {row[0]: row[-1] for row in current}
    assert due["mttr"] == "2026-05-30"
    assert due["mtta"] == "2026-04-05 (overdue)"
    assert due["stakeholder-satisfaction"] == "2026-07-04"


async def test_change_log_is_newest_first_then_by_slug_then_newest_version() -> None:
    await fix_timestamps()
    await KpiRevision.update({KpiRevision.changed_at: EXPRESSED}).where(KpiRevision.kpi == "mttr")
    log = rows(sections(await render("admin"))["Change log"])
    order = [(row[0], row[1], row[2]) for row in log]
    assert order[:5] == [
        ("2026-01-05 09:30", "cadence-adherence", "2"),
        ("2026-01-05 09:30", "mtta", "2"),
        ("2026-01-05 09:30", "mttr", "2"),
        ("2026-01-05 09:30", "mttr", "1"),
        ("2026-01-05 09:30", "stakeholder-satisfaction", "2"),
    ]


@pytest.mark.parametrize("persona", EXEC_ONLY)
async def test_exec_page_holds_no_trace_of_an_internal_kpi_or_its_revisions(
    client: Any, persona: str
) -> None:
    await fix_timestamps()
    before = await render(persona)
    slug = await create(client, "INTERNAL", targets=[{"comparison": "AT_MOST", "threshold": 7}])
    await update(client, slug, CANARY_NOTES[0], description=CANARY["description"] + " v2")
    await update(client, slug, CANARY_NOTES[1], owner=CANARY["owner"] + " v3")
    texts = [*await internal_texts(), *CANARY_NOTES]
    assert "mtta" in texts and slug in texts
    page = await render(persona)
    assert_no_trace(page, texts)
    # Not even a count: the page is the one it was before the internal KPI existed.
    assert page == before
    assert slug in await render("admin")


@pytest.mark.parametrize("persona", EXEC_ONLY)
async def test_a_kpi_moved_from_exec_to_internal_leaves_the_exec_page_with_its_revisions(
    client: Any, persona: str
) -> None:
    await fix_timestamps()
    before = await render(persona)
    slug = await create(client, "EXEC")
    await update(client, slug, CANARY_NOTES[0], formula="count(canary_page_formula_v2)")
    shown = await render(persona)
    assert slug in slugs_in(sections(shown)["Current KPIs"])
    assert CANARY_NOTES[0] in shown  # the control: its revisions showed while it was exec
    await update(client, slug, CANARY_NOTES[1], visibility="INTERNAL")
    # Its earlier revisions follow its current visibility.
    assert await kpis.revisions_by_slug(viewer=viewer(persona), slugs=[slug]) == {slug: []}
    page = await render(persona)
    assert_no_trace(page, [*await internal_texts(), *CANARY_NOTES, "canary_page_formula"])
    assert page == before


async def test_a_description_with_a_pipe_and_a_newline_stays_one_table_row(client: Any) -> None:
    await fix_timestamps()
    description = "left | right\nnext line, a \\| and <b>html</b>"
    slug = await create(client, "EXEC", name="Pipe | name", description=description)
    await update(client, slug, "note with | a pipe\nand a line", units="a|b")
    page = await render("admin")
    current = [line for line in page.splitlines() if line.startswith(f"| {slug} |")]
    assert len(current) == 1
    row = cells(current[0])
    assert len(row) == len(kpi_page.CURRENT_HEADER)
    assert row[1:4] == [
        "Pipe \\| name",
        "left \\| right<br>next line, a \\\\\\| and &lt;b&gt;html&lt;/b&gt;",
        "a\\|b",
    ]
    log = [row for row in rows(sections(page)["Change log"]) if row[1] == slug]
    assert [len(row) for row in log] == [len(kpi_page.CHANGE_LOG_HEADER)] * 2
    assert log[0][4:] == ["note with \\| a pipe<br>and a line", "units"]


@pytest.mark.parametrize("persona", ["admin", *EXEC_ONLY])
async def test_a_retired_kpi_moves_from_current_kpis_to_retired_kpis(
    client: Any, persona: str
) -> None:
    await fix_timestamps()
    assert "Retired KPIs" not in sections(await render(persona))
    variables = {"slug": "mttr", "note": "superseded by mttr-v2"}
    data = ok(await gql(client, RETIRE, variables, token=make_token("admin", sub="ops")))
    assert data == {"retireKpiDefinition": {"status": "RETIRED"}}
    await KpiRevision.update({KpiRevision.changed_at: RETIRED_AT}).where(
        KpiRevision.kpi == "mttr", KpiRevision.version == 3
    )
    found = sections(await render(persona))
    assert "mttr" not in slugs_in(found["Current KPIs"])
    assert rows(found["Retired KPIs"]) == [
        ["mttr", "Mean Time to Resolve", "2026-04-10 08:00", "3", "superseded by mttr-v2"]
    ]
    assert rows(found["Change log"])[0] == [
        "2026-04-10 08:00",
        "mttr",
        "3",
        "ops",
        "superseded by mttr-v2",
        "status",
    ]


@pytest.mark.parametrize("persona", EXEC_ONLY)
async def test_a_retired_internal_kpi_adds_no_retired_section_to_the_exec_page(
    client: Any, persona: str
) -> None:
    await fix_timestamps()
    before = await render(persona)
    ok(await gql(client, RETIRE, {"slug": "mtta", "note": "gone"}))
    assert "mtta" in sections(await render("admin"))["Retired KPIs"]
    assert await render(persona) == before


def test_targets_are_written_as_the_seed_page_writes_them() -> None:
    targets = (
        Target(Comparison.AT_MOST, 240.0, Severity.P2),
        Target(Comparison.AT_MOST, 60.0, Severity.P1, Persona.EXEC),
        Target(Comparison.AT_MOST, 120.0, Severity.P1),
        Target(Comparison.AT_LEAST, 0.25, None, Persona.STAKEHOLDER),
        Target(Comparison.AT_LEAST, 1e12),
    )
    assert kpi_page.targets_text(targets, "minutes") == (
        "≥1000000000000 minutes, stakeholder persona: ≥0.25 minutes, P1: ≤120 minutes,"
        " P1 (exec persona): ≤60 minutes, P2: ≤240 minutes"
    )
    assert kpi_page.targets_text((Target(Comparison.AT_LEAST, 90.0),), "%") == "≥90 %"
    assert kpi_page.targets_text((), "%") == "—"


def test_review_cadences_of_one_unit_are_written_in_words() -> None:
    assert kpi_page.cadence_text("P90D") == "90 days (P90D)"
    assert kpi_page.cadence_text("P1Y") == "1 year (P1Y)"
    assert kpi_page.cadence_text("P1M15D") == "P1M15D"


async def test_a_viewer_without_a_known_persona_gets_no_page() -> None:
    with pytest.raises(Forbidden):
        await kpi_page.render(viewer=Viewer(subject="x", personas=frozenset()), now=NOW)


async def test_now_must_carry_its_offset() -> None:
    with pytest.raises(ValueError, match="aware"):
        await kpi_page.render(viewer=ADMIN, now=datetime(2026, 4, 15, 12, 0))
