"""Definitions as code: `mim kpi export | plan | apply | docs` and `applyKpiDefinitions`.

The main flows run the installed `mim` in a subprocess against the test database, as an operator
or a CI job would. The rest run in-process through click's CliRunner in a worker thread (the
commands call asyncio.run, which needs a thread without a running loop): among them every kind of
invalid file, each with a valid change that a wrongly accepted file would really apply, caught by
comparing every definition and revision row before and after. The `--url` tests share one
`mim serve` subprocess on the same database.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp.test_utils import TestClient, TestServer
from click.testing import CliRunner, Result

from registry import definitions_file, kpis
from registry.model import Persona, Viewer, Visibility
from registry.tables import KpiDefinition, KpiRevision
from server.app import create_app
from server.cli import main
from server.config import Settings
from tests.conftest import ENV, codes, gql, make_token

MIM = str(Path(sys.executable).parent / "mim")
ROOT = Path(__file__).resolve().parents[2]
SEED_SLUGS = ["cadence-adherence", "mtta", "mttr", "stakeholder-satisfaction"]
ADMIN = Viewer(subject="test-admin", personas=frozenset({Persona.ADMIN}))
NON_ADMINS: list[Any] = ["exec", "stakeholder", "responder", "ingest", ["responder", "ingest"]]
# The file's fields, in the order registry/definitions_file.py documents (the seed page's order).
FILE_FIELDS = [
    "slug",
    "name",
    "description",
    "formula",
    "expression",
    "units",
    "targets",
    "data_sources",
    "visibility",
    "owner",
    "review_cadence",
    "status",
]

pytestmark = pytest.mark.skipif(not Path(MIM).exists(), reason="the mim command is not installed")


# --- helpers --------------------------------------------------------------------------------


@dataclass
class Ran:
    returncode: int
    stdout: str
    stderr: str
    raw_stdout: bytes


async def mim(*args: str, env: dict[str, str] | None = None) -> Ran:
    """Run the installed `mim` against the test database; return what it did (not asserted)."""
    process = await asyncio.create_subprocess_exec(
        MIM,
        *args,
        cwd=ROOT,
        env={**os.environ, **ENV, **(env or {})},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=120)
    assert process.returncode is not None
    return Ran(process.returncode, out.decode(), err.decode(), out)


async def cli(*args: str, env: dict[str, str] | None = None) -> Result:
    """Run `mim` in-process (CliRunner) in a worker thread, where asyncio.run may start a loop.

    Not while an app is open in this process: on PostgreSQL the app's pool belongs to the tests'
    loop, and the command would borrow it from another (so GraphQL goes through `graphql()`).
    """
    return await asyncio.to_thread(CliRunner().invoke, main, list(args), env=env)


@asynccontextmanager
async def graphql(settings: Settings) -> AsyncIterator[TestClient]:
    """The app over real HTTP for a few requests, closed (its pool too) before `cli()` runs."""
    async with TestClient(TestServer(create_app(settings))) as client:
        yield client


async def snapshot() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Return every definition row and every revision row, in a stable order."""
    definitions = await KpiDefinition.select().order_by(KpiDefinition.slug)
    revisions = await KpiRevision.select().order_by(KpiRevision.kpi).order_by(KpiRevision.version)
    return definitions, revisions


async def versions() -> dict[str, int]:
    rows = await KpiDefinition.select(KpiDefinition.slug, KpiDefinition.version)
    return {row["slug"]: row["version"] for row in rows}


async def exported() -> str:
    """Return the registry as `mim kpi export` writes it (the same function, in-process)."""
    found = await kpis.list_definitions(viewer=ADMIN, include_retired=True)
    return definitions_file.export(found)


def entry_bounds(text: str, slug: str) -> tuple[int, int]:
    start = text.index(f"- slug: {slug}\n")
    end = text.find("\n- slug: ", start)
    return start, len(text) if end < 0 else end + 1


def edit(text: str, slug: str, old: str, new: str) -> str:
    """Return the file with `old` replaced by `new` inside one KPI's entry (exactly once)."""
    start, end = entry_bounds(text, slug)
    block = text[start:end]
    assert block.count(old) == 1, (slug, old, block)
    return text[:start] + block.replace(old, new) + text[end:]


def drop(text: str, slug: str) -> str:
    """Return the file without one KPI's entry."""
    start, end = entry_bounds(text, slug)
    return text[:start] + text[end:]


def problem_lines(stderr: str) -> list[str]:
    """Return the FILE:LINE lines of an invalid-file report, without its closing summary."""
    return [line for line in stderr.splitlines() if "problem(s); nothing was applied" not in line]


def file_target(target: dict[str, Any]) -> dict[str, Any]:
    """Return a GraphQL target as the file writes it: lower-case enums, no key for 'every'."""
    found: dict[str, Any] = {}
    if target["severity"] is not None:
        found["severity"] = target["severity"]
    if target["persona"] is not None:
        found["persona"] = target["persona"].lower()
    found["comparison"] = target["comparison"].lower()
    found["threshold"] = target["threshold"]
    return found


async def create_kpi(slug: str, **fields: Any) -> None:
    """Create a definition through the registry service (as createKpiDefinition does)."""
    values = {
        "slug": slug,
        "name": f"{slug} name",
        "description": f"{slug} description",
        "formula": "f",
        "units": "minutes",
        "visibility": Visibility.EXEC,
        "owner": "Owner",
        "review_cadence": "P30D",
        "expression": None,
        "targets": [],
        "data_sources": [],
        **fields,
    }
    await kpis.create_definition(viewer=ADMIN, fields=values)


APPLY = """
mutation ($document: String!, $note: String, $dryRun: Boolean!) {
  applyKpiDefinitions(document: $document, note: $note, dryRun: $dryRun) {
    changed applied kpis { slug action changes { field before after } }
  }
}
"""
KPI = """
query ($slug: String!) {
  kpi(slug: $slug) {
    slug owner version status visibility expression
    targets { severity persona comparison threshold }
    revisions { version changedBy note changes { field before after } }
  }
}
"""
KPIS = """
{ kpis(includeRetired: true) {
    slug name description formula expression units dataSources visibility owner
    reviewCadence status targets { severity persona comparison threshold }
} }
"""
RETIRE = """
mutation ($slug: String!, $note: String) {
  retireKpiDefinition(slug: $slug, note: $note) { status }
}
"""
UPSERT = "mutation ($input: IncidentInput!) { upsertIncident(input: $input) { id } }"
INCIDENT_KPI = """
query ($id: ID!, $slug: String!) {
  incident(id: $id) { kpis(slugs: [$slug]) { value definitionVersion source } }
}
"""
NEW_KPI = """\
- slug: time-to-close
  name: Time to Close
  description: Minutes from detection to resolution, per incident.
  formula: resolved_at - detected_at
  expression: minutes(resolved_at - detected_at)
  units: minutes
  targets:
  - severity: P1
    comparison: at_most
    threshold: 60.0
  data_sources:
  - incident.resolved_at
  visibility: internal
  owner: SRE
  review_cadence: P30D
  status: active
"""


# --- 1. export --------------------------------------------------------------------------------


async def test_export_writes_every_definition_retired_too_as_documented(settings, tmp_path) -> None:
    async with graphql(settings) as client:
        note = {"slug": "stakeholder-satisfaction", "note": "superseded"}
        retired = await gql(client, RETIRE, note)
        assert "errors" not in retired, retired
        listed = await gql(client, KPIS)
        assert "errors" not in listed, listed

    target = tmp_path / "kpis.yaml"
    to_stdout = await mim("kpi", "export")
    assert to_stdout.returncode == 0, to_stdout.stderr
    to_file = await cli("kpi", "export", "-o", str(target))
    assert to_file.exit_code == 0, to_file.output
    assert to_file.stdout == ""
    assert target.read_bytes() == to_stdout.raw_stdout, "two exports are byte-identical"

    text = to_stdout.stdout
    assert text.startswith("# KPI definitions:")
    entries = yaml.safe_load(text)["kpis"]
    assert [e["slug"] for e in entries] == SEED_SLUGS
    for entry in entries:
        assert list(entry) == FILE_FIELDS, entry["slug"]
    by_slug = {e["slug"]: e for e in entries}
    assert len(listed["data"]["kpis"]) == 4
    for kpi in listed["data"]["kpis"]:
        assert by_slug[kpi["slug"]] == {
            "slug": kpi["slug"],
            "name": kpi["name"],
            "description": kpi["description"],
            "formula": kpi["formula"],
            "expression": kpi["expression"],
            "units": kpi["units"],
            "targets": [file_target(t) for t in kpi["targets"]],
            "data_sources": kpi["dataSources"],
            "visibility": kpi["visibility"].lower(),
            "owner": kpi["owner"],
            "review_cadence": kpi["reviewCadence"],
            "status": kpi["status"].lower(),
        }
    assert by_slug["stakeholder-satisfaction"]["status"] == "retired"
    assert [e["status"] for e in entries].count("active") == 3
    assert by_slug["mtta"]["visibility"] == "internal"
    assert by_slug["mttr"]["targets"][0] == {
        "severity": "P1",
        "comparison": "at_most",
        "threshold": 120.0,
    }
    for upper in ("AT_MOST", "AT_LEAST", "EXEC", "INTERNAL", "ACTIVE", "RETIRED"):
        assert upper not in text

    before = await snapshot()
    planned = await cli("kpi", "plan", str(target))
    assert planned.exit_code == 0, planned.output
    assert planned.stdout.splitlines() == [
        *(f"{slug}: unchanged" for slug in SEED_SLUGS),
        "Nothing to change (4 unchanged).",
    ]
    applied = await cli("kpi", "apply", str(target), "--note", "no-op")
    assert applied.exit_code == 0, applied.output
    assert "Nothing to change (4 unchanged)." in applied.stdout
    assert await snapshot() == before, "export then apply writes nothing"
    assert await versions() == {
        "cadence-adherence": 2,
        "mtta": 2,
        "mttr": 2,
        "stakeholder-satisfaction": 3,
    }


# Text that YAML would misread unless the export quotes or escapes it.
AWKWARD = [
    "null",
    "yes",
    "~",
    "1e3",
    "0o17",
    "- dash",
    "a: b",
    "# not a comment",
    " leading space",
    "trailing space ",
    "line one\nline two",
    "line one\n\nline three\n",
    "tab\there",
    "'single' and \"double\"",
    "emoji 😀, é\u0301, ∑",
    "carriage\r\nreturn",
    "separator\u2028inside",
]


async def test_export_then_plan_changes_nothing_for_awkward_text(tmp_path) -> None:
    for number, text in enumerate(AWKWARD):
        await create_kpi(
            f"awkward-{number}",
            name=f"n {text}",
            description=text,
            formula=text,
            owner=f"o {text}",
            data_sources=[text],
        )
    target = str(tmp_path / "kpis.yaml")
    exported_ = await cli("kpi", "export", "-o", target)
    assert exported_.exit_code == 0, exported_.output
    planned = await cli("kpi", "plan", target)
    assert planned.exit_code == 0, planned.output
    assert planned.stdout.endswith(f"Nothing to change ({len(AWKWARD) + 4} unchanged).\n")


async def test_export_then_plan_changes_nothing_for_a_next_line_character(tmp_path) -> None:
    # U+0085 is a Windows-1252 ellipsis (…) decoded as Latin-1; it comes back as a space.
    await create_kpi("pasted", description="Copied from a spreadsheet\x85")
    target = str(tmp_path / "kpis.yaml")
    assert (await cli("kpi", "export", "-o", target)).exit_code == 0
    planned = await cli("kpi", "plan", target)
    assert planned.exit_code == 0, planned.output


# --- 2. edit, plan, apply, plan again ---------------------------------------------------------


async def test_edit_plan_apply_plan_from_the_command_line(settings, tmp_path) -> None:
    incident = {
        "id": "INC-DAC-1",
        "title": "Checkout down",
        "severity": "P1",
        "detectedAt": "2026-03-02T08:00:00Z",
        "resolvedAt": "2026-03-02T08:42:00Z",
    }
    async with graphql(settings) as client:
        upserted = await gql(client, UPSERT, {"input": incident})
        assert "errors" not in upserted, upserted

    text = await exported()
    text = edit(text, "mttr", "owner: Ops Leader", "owner: SRE Lead")
    text = edit(text, "mttr", "threshold: 120.0", "threshold: 90.0")
    text = edit(text, "cadence-adherence", "status: active", "status: retired")
    text = drop(text, "stakeholder-satisfaction") + NEW_KPI
    path = tmp_path / "kpis.yaml"
    path.write_text(text)

    before = await snapshot()
    planned = await mim("kpi", "plan", str(path))
    assert planned.returncode == 2, planned.stdout + planned.stderr
    lines = planned.stdout.splitlines()
    mttr_targets = (
        '[{"severity": "P1", "persona": null, "comparison": "AT_MOST", "threshold": %s}, '
        '{"severity": "P2", "persona": null, "comparison": "AT_MOST", "threshold": 240.0}]'
    )
    assert lines == [
        "cadence-adherence: retired",
        '    status: "active" -> "retired"',
        "mtta: unchanged",
        "mttr: changed",
        f"    targets: {mttr_targets % '120.0'} -> {mttr_targets % '90.0'}",
        '    owner: "Ops Leader" -> "SRE Lead"',
        "stakeholder-satisfaction: not in the file (left alone)",
        "time-to-close: created",
        "Plan: 1 created, 1 changed, 1 retired, 1 unchanged, 1 not in the file (left alone).",
    ]
    assert await snapshot() == before, "plan writes nothing"

    applied = await mim("kpi", "apply", str(path), "--note", "Q3 review", "--author", "alice")
    assert applied.returncode == 0, applied.stderr
    assert applied.stdout.splitlines()[-1] == (
        "Applied: 1 created, 1 changed, 1 retired, 1 unchanged, 1 not in the file (left alone)."
    )
    again = await cli("kpi", "plan", str(path))
    assert again.exit_code == 0, again.output
    assert again.stdout.splitlines()[-1] == (
        "Nothing to change (4 unchanged, 1 not in the file (left alone))."
    )

    new_revisions = await KpiRevision.select(KpiRevision.kpi).where(KpiRevision.version > 2)
    new_revisions += await KpiRevision.select(KpiRevision.kpi).where(
        KpiRevision.kpi == "time-to-close"
    )
    assert sorted(r["kpi"] for r in new_revisions) == [
        "cadence-adherence",
        "mttr",
        "time-to-close",
    ], "one revision per changed KPI"

    async with graphql(settings) as client:
        await check_read_back(client)


async def check_read_back(client: TestClient) -> None:
    """Check, over GraphQL, what the edited file applied (see the test above)."""
    mttr = (await gql(client, KPI, {"slug": "mttr"}))["data"]["kpi"]
    assert (mttr["owner"], mttr["version"]) == ("SRE Lead", 3)
    assert mttr["targets"][0]["threshold"] == 90.0
    latest = mttr["revisions"][0]
    assert (latest["version"], latest["changedBy"], latest["note"]) == (3, "alice", "Q3 review")
    assert [c["field"] for c in latest["changes"]] == ["targets", "owner"]
    assert latest["changes"][1] == {
        "field": "owner",
        "before": '"Ops Leader"',
        "after": '"SRE Lead"',
    }

    adherence = (await gql(client, KPI, {"slug": "cadence-adherence"}))["data"]["kpi"]
    assert (adherence["status"], adherence["version"]) == ("RETIRED", 3)
    assert adherence["revisions"][0] == {
        "version": 3,
        "changedBy": "alice",
        "note": "Q3 review",
        "changes": [{"field": "status", "before": '"active"', "after": '"retired"'}],
    }

    created = (await gql(client, KPI, {"slug": "time-to-close"}))["data"]["kpi"]
    assert (created["version"], created["visibility"], created["status"]) == (
        1,
        "INTERNAL",
        "ACTIVE",
    )
    assert created["expression"] == "minutes(resolved_at - detected_at)"
    assert [(r["version"], r["changedBy"], r["note"]) for r in created["revisions"]] == [
        (1, "alice", "Q3 review")
    ]
    assert {c["field"] for c in created["revisions"][0]["changes"]} >= {
        "slug",
        "expression",
        "owner",
    }
    observed = await gql(client, INCIDENT_KPI, {"id": "INC-DAC-1", "slug": "time-to-close"})
    assert observed["data"]["incident"]["kpis"] == [
        {"value": 42.0, "definitionVersion": 1, "source": "computed"}
    ], "the new KPI is computed for the incidents already there"

    left_alone = (await gql(client, KPI, {"slug": "stakeholder-satisfaction"}))["data"]["kpi"]
    assert (left_alone["version"], left_alone["status"]) == (2, "ACTIVE")
    assert len(left_alone["revisions"]) == 2
    assert (await gql(client, KPI, {"slug": "mtta"}))["data"]["kpi"]["version"] == 2


async def test_apply_without_an_author_records_the_os_user(tmp_path) -> None:
    path = tmp_path / "kpis.yaml"
    path.write_text(edit(await exported(), "mtta", "owner: MIM Lead", "owner: Duty Manager"))
    applied = await cli("kpi", "apply", str(path), "--note", "handover", env={"LOGNAME": "h3op"})
    assert applied.exit_code == 0, applied.output
    [revision] = await KpiRevision.select(KpiRevision.changed_by, KpiRevision.note).where(
        KpiRevision.kpi == "mtta", KpiRevision.version == 3
    )
    assert revision == {"changed_by": "h3op", "note": "handover"}


async def test_apply_without_a_note_is_refused_and_writes_nothing(tmp_path) -> None:
    path = tmp_path / "kpis.yaml"
    path.write_text(edit(await exported(), "mttr", "owner: Ops Leader", "owner: Someone"))
    before = await snapshot()
    missing = await cli("kpi", "apply", str(path))
    assert missing.exit_code == 2 and "--note" in missing.output
    blank = await cli("kpi", "apply", str(path), "--note", "   ")
    assert blank.exit_code == 1 and "note must not be empty" in blank.stderr
    assert "Traceback" not in blank.output
    assert await snapshot() == before


# --- 3. invalid files, rejected whole --------------------------------------------------------

# Valid on its own (mttr's owner changes, canary-new is created): each case below spoils one
# line of it, and then nothing of it, not even the valid change, may be applied.
VALID = """\
kpis:
- slug: mttr
  name: Mean Time to Resolve
  description: Average time from incident.detected_at to resolved_at.
  formula: avg(resolved_at - detected_at)
  expression: minutes(resolved_at - detected_at)
  units: minutes
  targets:
  - severity: P1
    comparison: at_most
    threshold: 120.0
  - severity: P2
    comparison: at_most
    threshold: 240.0
  data_sources:
  - incident.detected_at
  - incident.resolved_at
  visibility: exec
  owner: Valid Change Owner
  review_cadence: P90D
  status: active
- slug: canary-new
  name: Canary New
  description: A new KPI, valid on its own.
  formula: minutes to close
  expression: minutes(resolved_at - detected_at)
  units: minutes
  targets:
  - severity: P1
    comparison: at_most
    threshold: 60.0
  visibility: internal
  owner: SRE
  review_cadence: P30D
"""


# Lines of VALID, by number: 22 `- slug: canary-new`, 23 name, 25 formula, 26 expression,
# 29 `- severity: P1` (canary-new's), 30 comparison, 31 threshold, 32 visibility, 33 owner,
# 34 review_cadence; 35 is the first line after the file.
def spoiled(changes: dict[int, str | None]) -> str:
    """Return VALID with numbered lines replaced (None: removed); numbers past its end append."""
    lines = VALID.splitlines()
    kept = [changes.get(number, line) for number, line in enumerate(lines, start=1)]
    kept += [changes[number] for number in sorted(changes) if number > len(lines)]
    return "".join(f"{line}\n" for line in kept if line is not None)


@dataclass(frozen=True)
class Invalid:
    text: str
    line: int
    kpi: str | None
    field: str | None
    says: str

    def prefix(self, source: str) -> str:
        where = "".join(f"{part}: " for part in (self.kpi, self.field) if part)
        return f"{source}:{self.line}: {where}"


def case(
    name: str,
    changes: dict[int, str | None],
    line: int,
    kpi: str | None,
    field: str | None,
    says: str,
) -> Any:
    return pytest.param(Invalid(spoiled(changes), line, kpi, field, says), id=name)


KPI_2 = "canary-new"
THRESHOLD = "targets.threshold"
NEW_EXPRESSION = "  expression: minutes(resolved_at - detected_at)"
DUPLICATE = VALID.split("\n- slug: canary-new\n", 1)[0].removeprefix("kpis:\n")
INVALID = [
    case("bad-yaml-syntax", {25: "  formula: a: b"}, 25, None, None, "not YAML: mapping values"),
    case("unknown-top-level-key", {35: "extra: 1"}, 35, None, "extra", "unknown key"),
    case("unknown-kpi-field", {33: "  owner: SRE\n  colour: blue"}, 34, KPI_2, "colour", "unknown"),
    case("list-for-name", {23: "  name: [a, b]"}, 23, KPI_2, "name", "must be a single value"),
    case("number-for-owner", {33: "  owner: 42"}, 33, KPI_2, "owner", "must be text, not int"),
    case("visibility-upper-case", {32: "  visibility: EXEC"}, 32, KPI_2, "visibility", "'EXEC'"),
    case("visibility-unknown", {32: "  visibility: public"}, 32, KPI_2, "visibility", "'public'"),
    case("severity-lower-case", {29: "  - severity: p1"}, 29, KPI_2, "targets.severity", "'p1'"),
    case("severity-unknown", {29: "  - severity: P5"}, 29, KPI_2, "targets.severity", "'P5'"),
    case("comparison", {30: "    comparison: below"}, 30, KPI_2, "targets.comparison", "'below'"),
    case(
        "expression-syntax-error",
        {26: NEW_EXPRESSION.replace("detected_at)", "")},
        26,
        KPI_2,
        "expression",
        "expected a value, got end of formula",
    ),
    case(
        "expression-unknown-function",
        {26: NEW_EXPRESSION.replace("minutes(", "frobnicate(")},
        26,
        KPI_2,
        "expression",
        "'frobnicate' is not a known function",
    ),
    case(
        "review-cadence-not-a-duration",
        {34: "  review_cadence: monthly"},
        34,
        KPI_2,
        "review_cadence",
        "review_cadence must be an ISO 8601 duration such as P90D",
    ),
    case(
        "review-cadence-zero",
        {34: "  review_cadence: P0D"},
        34,
        KPI_2,
        "review_cadence",
        "positive",
    ),
    case("duplicate-slug", {35: DUPLICATE}, 35, "mttr", "slug", "duplicate: also on line 2"),
    case("missing-required-field", {33: None}, 22, KPI_2, "owner", "missing"),
    case(
        "anchor-and-alias",
        {33: "  owner: SRE\n  data_sources: [&source a.b, *source]"},
        34,
        KPI_2,
        "data_sources",
        "anchors and aliases are not allowed",
    ),
    case(
        "alias-on-a-later-line",
        {25: "  formula: &words minutes to close", 33: "  owner: *words"},
        33,
        KPI_2,
        "owner",
        "anchors and aliases are not allowed",
    ),
    case("threshold-infinite", {31: "    threshold: .inf"}, 31, KPI_2, THRESHOLD, "finite"),
    case("threshold-nan", {31: "    threshold: .nan"}, 31, KPI_2, THRESHOLD, "finite"),
    case(
        "threshold-overflowing-float",
        {31: "    threshold: 1.0e+400"},
        31,
        KPI_2,
        THRESHOLD,
        "threshold must be a finite number",
    ),
    case(
        "threshold-too-large",
        {31: "    threshold: 2.0e+12"},
        31,
        KPI_2,
        THRESHOLD,
        "threshold must be between -1e+12 and 1e+12",
    ),
    case(
        "threshold-integer-beyond-a-float",
        {31: "    threshold: " + "9" * 400},
        31,
        KPI_2,
        THRESHOLD,
        "too large",
    ),
    case("threshold-text", {31: "    threshold: '60'"}, 31, KPI_2, THRESHOLD, "number"),
    case(
        "tag-that-fails-to-construct",
        {33: "  owner: !!int abc"},
        33,
        KPI_2,
        "owner",
        "",
    ),
    case(
        "unknown-tag",
        {33: "  owner: !vault sre/owner"},
        33,
        KPI_2,
        "owner",
        "",
    ),
    case(
        "field-given-twice",
        {33: "  owner: SRE\n  owner: Ops"},
        34,
        KPI_2,
        "owner",
        "given twice",
    ),
]


async def test_the_valid_file_the_cases_spoil_is_valid(tmp_path) -> None:
    path = tmp_path / "valid.yaml"
    path.write_text(VALID)
    planned = await cli("kpi", "plan", str(path))
    assert planned.exit_code == 2, planned.output
    assert "canary-new: created" in planned.stdout
    assert 'owner: "Ops Leader" -> "Valid Change Owner"' in planned.stdout


@pytest.mark.parametrize("case", INVALID)
async def test_an_invalid_file_is_rejected_whole_naming_file_line_kpi_and_field(
    case: Invalid, tmp_path: Path
) -> None:
    path = tmp_path / "kpis.yaml"
    path.write_text(case.text)
    before = await snapshot()
    for command in (["plan", str(path)], ["apply", str(path), "--note", "should not land"]):
        result = await cli("kpi", *command)
        assert isinstance(result.exception, SystemExit), result.exception
        assert result.exit_code == 1, result.output
        assert "Traceback" not in result.output
        assert result.stdout == "", "nothing planned, nothing applied"
        problems = problem_lines(result.stderr)
        assert len(problems) == 1, result.stderr
        assert problems[0].startswith(case.prefix(str(path))), problems[0]
        assert case.says in problems[0]
        assert result.stderr.splitlines()[-1] == f"{path}: 1 problem(s); nothing was applied."
    assert await snapshot() == before


async def test_an_invalid_file_reports_every_problem_from_the_real_command(tmp_path) -> None:
    path = tmp_path / "kpis.yaml"
    path.write_text(
        spoiled({32: "  visibility: EXEC", 26: NEW_EXPRESSION.replace("minutes(", "frobnicate(")})
    )
    before = await snapshot()
    result = await mim("kpi", "apply", str(path), "--note", "should not land")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.splitlines() == [
        f"{path}:26: canary-new: expression: 'frobnicate' is not a known function at position 0",
        f"{path}:32: canary-new: visibility: must be one of internal, exec, not 'EXEC'",
        f"{path}: 2 problem(s); nothing was applied.",
    ]
    assert await snapshot() == before


async def test_a_tag_that_fails_to_construct_is_a_problem_not_a_traceback(tmp_path) -> None:
    path = tmp_path / "kpis.yaml"
    path.write_text(spoiled({33: "  owner: !!int abc"}))
    result = await mim("kpi", "plan", str(path))
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 1
    assert result.stderr.startswith(f"{path}:33: canary-new: owner: ")


# --- 4. applyKpiDefinitions over GraphQL ------------------------------------------------------

INVALID_DOCUMENT = spoiled({32: "  visibility: EXEC", 33: "  owner: 42"})
INVALID_PROBLEMS = [
    {
        "line": 32,
        "kpi": "canary-new",
        "field": "visibility",
        "message": "must be one of internal, exec, not 'EXEC'",
    },
    {
        "line": 33,
        "kpi": "canary-new",
        "field": "owner",
        "message": "must be text, not int (quote it)",
    },
]


async def test_graphql_dry_run_plans_and_writes_nothing(client) -> None:
    document = edit(await exported(), "mttr", "owner: Ops Leader", "owner: Planner")
    before = await snapshot()
    body = await gql(client, APPLY, {"document": document, "note": None, "dryRun": True})
    assert "errors" not in body, body
    plan = body["data"]["applyKpiDefinitions"]
    assert (plan["changed"], plan["applied"]) == (True, False)
    assert plan["kpis"] == [
        {"slug": "cadence-adherence", "action": "UNCHANGED", "changes": []},
        {"slug": "mtta", "action": "UNCHANGED", "changes": []},
        {
            "slug": "mttr",
            "action": "CHANGE",
            "changes": [{"field": "owner", "before": '"Ops Leader"', "after": '"Planner"'}],
        },
        {"slug": "stakeholder-satisfaction", "action": "UNCHANGED", "changes": []},
    ]
    assert await snapshot() == before


async def test_graphql_apply_writes_with_the_tokens_subject_as_author(client) -> None:
    document = edit(await exported(), "mttr", "owner: Ops Leader", "owner: Deployer")
    token = make_token("admin", sub="ci-bot")
    variables = {"document": document, "note": "from CI", "dryRun": False}
    body = await gql(client, APPLY, variables, token=token)
    assert "errors" not in body, body
    plan = body["data"]["applyKpiDefinitions"]
    assert (plan["changed"], plan["applied"]) == (True, True)
    mttr = (await gql(client, KPI, {"slug": "mttr"}))["data"]["kpi"]
    assert (mttr["owner"], mttr["version"]) == ("Deployer", 3)
    assert mttr["revisions"][0] == {
        "version": 3,
        "changedBy": "ci-bot",
        "note": "from CI",
        "changes": [{"field": "owner", "before": '"Ops Leader"', "after": '"Deployer"'}],
    }
    again = await gql(client, APPLY, variables, token=token)
    assert again["data"]["applyKpiDefinitions"]["changed"] is False
    assert (await versions())["mttr"] == 3


@pytest.mark.parametrize("persona", NON_ADMINS, ids=str)
async def test_graphql_non_admins_are_forbidden_before_the_document_is_read(
    client, persona: Any
) -> None:
    valid = edit(await exported(), "mttr", "owner: Ops Leader", "owner: Intruder")
    before = await snapshot()
    for document in (valid, INVALID_DOCUMENT, "kpis: [unclosed"):
        for dry_run in (True, False):
            variables = {"document": document, "note": "sneaky", "dryRun": dry_run}
            body = await gql(client, APPLY, variables, persona=persona)
            assert body["data"] is None, body
            assert codes(body) == ["FORBIDDEN"], body
            error = body["errors"][0]
            assert "problems" not in error["extensions"], error
            for hint in ("line", "canary-new", "EXEC", "YAML", "visibility"):
                assert hint not in error["message"], error
    assert await snapshot() == before


async def test_graphql_non_admin_without_a_note_is_forbidden(client) -> None:
    body = await gql(
        client, APPLY, {"document": VALID, "note": None, "dryRun": False}, persona="exec"
    )
    assert codes(body) == ["FORBIDDEN"], body


async def test_graphql_invalid_document_lists_its_problems_to_an_admin(client) -> None:
    before = await snapshot()
    for dry_run in (True, False):
        variables = {"document": INVALID_DOCUMENT, "note": "bad", "dryRun": dry_run}
        body = await gql(client, APPLY, variables)
        assert body["data"] is None, body
        assert codes(body) == ["BAD_USER_INPUT"], body
        assert body["errors"][0]["extensions"]["problems"] == INVALID_PROBLEMS
    document = "kpis:\n- slug: a\n  name: a: b\n"
    syntax = await gql(client, APPLY, {"document": document, "note": "x", "dryRun": True})
    assert codes(syntax) == ["BAD_USER_INPUT"]
    [problem] = syntax["errors"][0]["extensions"]["problems"]
    assert (problem["line"], problem["kpi"], problem["field"]) == (3, None, None)
    assert problem["message"] == "not YAML: mapping values are not allowed here"
    assert await snapshot() == before


async def test_graphql_a_tag_that_fails_to_construct_is_bad_user_input(client) -> None:
    document = spoiled({33: "  owner: !!int abc"})
    body = await gql(client, APPLY, {"document": document, "note": None, "dryRun": True})
    assert codes(body) == ["BAD_USER_INPUT"], body
    [problem] = body["errors"][0]["extensions"]["problems"]
    assert (problem["line"], problem["kpi"], problem["field"]) == (33, "canary-new", "owner")


async def test_graphql_apply_needs_a_note(client) -> None:
    document = edit(await exported(), "mttr", "owner: Ops Leader", "owner: Noteless")
    before = await snapshot()
    for note in (None, "", "   "):
        body = await gql(client, APPLY, {"document": document, "note": note, "dryRun": False})
        assert codes(body) == ["BAD_USER_INPUT"], body
        assert "note" in body["errors"][0]["message"]
    assert await snapshot() == before


# --- 5. --url and --token against a running service ------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def service(seeded: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`mim serve` on a free port and the tests' database, for every --url test; its base URL."""
    port = free_port()
    log_path = tmp_path_factory.mktemp("serve") / "mim-serve.log"
    env = {**os.environ, **ENV, "PYTHONUNBUFFERED": "1"}
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [MIM, "serve", "--host", "127.0.0.1", "--port", str(port)],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, f"mim serve exited:\n{log_path.read_text()}"
            try:
                with urllib.request.urlopen(base + "/readyz", timeout=2) as response:
                    if response.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            assert time.monotonic() < deadline, f"mim serve not ready:\n{log_path.read_text()}"
            time.sleep(0.1)
        yield base
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def test_url_plan_exits_2_with_a_change_and_0_without(service: str, tmp_path) -> None:
    token = make_token("admin", sub="ci-plan", ttl=600)
    unchanged, changed = tmp_path / "same.yaml", tmp_path / "changed.yaml"
    text = await exported()
    unchanged.write_text(text)
    changed.write_text(edit(text, "mttr", "owner: Ops Leader", "owner: Remote Owner"))
    before = await snapshot()
    same = await cli("kpi", "plan", str(unchanged), "--url", service, "--token", token)
    other = await cli("kpi", "plan", str(changed), "--url", service + "/graphql", "--token", token)
    assert same.exit_code == 0, same.output
    assert same.stdout.splitlines()[-1] == "Nothing to change (4 unchanged)."
    assert other.exit_code == 2, other.output
    assert "mttr: changed" in other.stdout
    assert '    owner: "Ops Leader" -> "Remote Owner"' in other.stdout
    assert await snapshot() == before


async def test_url_apply_applies_with_the_tokens_subject_as_author(service: str, tmp_path) -> None:
    path = tmp_path / "kpis.yaml"
    path.write_text(edit(await exported(), "mttr", "owner: Ops Leader", "owner: Remote Owner"))
    token = make_token("admin", sub="ci-deployer", ttl=600)
    applied = await mim(
        "kpi", "apply", str(path), "--note", "deploy 42", "--url", service, "--token", token
    )
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert applied.stdout.splitlines()[-1] == "Applied: 1 changed, 3 unchanged."
    [row] = await KpiDefinition.select(KpiDefinition.owner, KpiDefinition.version).where(
        KpiDefinition.slug == "mttr"
    )
    assert row == {"owner": "Remote Owner", "version": 3}
    [revision] = await KpiRevision.select(KpiRevision.changed_by, KpiRevision.note).where(
        KpiRevision.kpi == "mttr", KpiRevision.version == 3
    )
    assert revision == {"changed_by": "ci-deployer", "note": "deploy 42"}


async def test_url_refusals_exit_1_with_a_clear_message(service: str, tmp_path) -> None:
    invalid, valid = tmp_path / "invalid.yaml", tmp_path / "valid.yaml"
    invalid.write_text(INVALID_DOCUMENT)
    valid.write_text(VALID)
    admin = make_token("admin", ttl=600)
    responder = {"MIM_TOKEN": make_token("responder", ttl=600)}
    nowhere = f"http://127.0.0.1:{free_port()}"
    before = await snapshot()
    bad_file = await cli(
        "kpi", "apply", str(invalid), "--note", "x", "--url", service, "--token", admin
    )
    forbidden = await cli(
        "kpi", "apply", str(valid), "--note", "x", "--url", service, env=responder
    )
    unreachable = await cli("kpi", "plan", str(valid), "--url", nowhere, "--token", admin)
    with_author = await cli(
        "kpi", "apply", str(valid), "--note", "x", "--author", "me", "--url", service,
        "--token", admin,
    )  # fmt: skip
    for ran in (bad_file, forbidden, unreachable, with_author):
        assert isinstance(ran.exception, SystemExit), ran.exception
        assert "Traceback" not in ran.output, ran.output
    assert bad_file.exit_code == 1, bad_file.output
    assert bad_file.stderr.splitlines() == [
        f"{invalid}:32: canary-new: visibility: must be one of internal, exec, not 'EXEC'",
        f"{invalid}:33: canary-new: owner: must be text, not int (quote it)",
        f"{invalid}: 2 problem(s); nothing was applied.",
    ]
    assert forbidden.exit_code == 1, forbidden.output
    assert "FORBIDDEN" in forbidden.stderr and f"{service}/graphql refused it" in forbidden.stderr
    assert unreachable.exit_code == 1, unreachable.output
    assert unreachable.stderr.startswith("Error: cannot reach http://127.0.0.1:")
    assert with_author.exit_code == 2, with_author.output
    assert "--author" in with_author.stderr
    assert await snapshot() == before


# --- 6. docs ----------------------------------------------------------------------------------

CANARY = {
    "slug": "canary-internal-okapi",
    "name": "Canary Name Zebra",
    "description": "Canary description quokka",
    "owner": "Canary Owner Narwhal",
    "formula": "canary formula ocelot",
}
MTTA_TEXT = ("mtta", "Mean Time to Acknowledge", "MIM Lead", "first MIM action")


async def test_docs_for_exec_hold_no_internal_kpi_and_for_admin_hold_them(tmp_path) -> None:
    await create_kpi(
        CANARY["slug"],
        **{k: v for k, v in CANARY.items() if k != "slug"},
        visibility=Visibility.INTERNAL,
    )
    page = tmp_path / "kpis.md"
    for_exec = await mim("kpi", "docs", "--persona", "exec", "-o", str(page))
    assert for_exec.returncode == 0, for_exec.stderr
    for_admin = await cli("kpi", "docs", "--persona", "admin")
    assert for_admin.exit_code == 0, for_admin.output
    assert for_exec.stdout == ""
    exec_page = page.read_text()
    assert exec_page.startswith("# KPI Source of Truth")
    assert "| mttr | Mean Time to Resolve |" in exec_page
    for text in (*CANARY.values(), *MTTA_TEXT):
        assert text not in exec_page, text
        assert text in for_admin.stdout, text
    assert "canary" not in exec_page.lower()
