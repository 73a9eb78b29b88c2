"""One spelling of the visibility policy: every read of KPI definitions or observations that serves
a viewer applies `policy.visible`, and the reads that serve no viewer are listed here, each with
the reason it may see every KPI."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from registry import kpis, observations, policy, recompute
from registry.errors import Forbidden
from registry.model import Persona, Viewer
from registry.tables import KpiDefinition

ROOT = Path(__file__).resolve().parents[2]
# What a read of definitions or observations looks like in the domain's code.
READS = (
    "kpi_definition",
    "kpi_observation",
    "kpi_rollup",
    "KpiDefinition.select",
    "KpiDefinition.exists",
    "KpiObservation.select",
    "KpiObservation.count",
    "KpiRevision.select",
)
# Reads that serve no viewer: the service's own work, or a write's own check. Each may see every
# KPI; none returns rows to a caller who could be restricted.
UNFILTERED = {
    "registry.compute.computed_kpis": "the KPIs the service computes, for its own computation",
    "registry.compute.forget_kpi": "deletes a KPI's computed rows (an admin's definition change)",
    "registry.compute._stored": "the stored rows a recompute compares with, never returned",
    "registry.compute._write": "writes computed rows",
    "registry.compute._delete": "deletes computed rows the data no longer produces",
    "registry.setbased._write_postgres": "writes computed rows in SQL",
    "registry.setbased._write_sqlite": "writes computed rows in SQL",
    "registry.setbased._batch_members": "a condition of the two statements above",
    "registry.kpis.create_definition": "an admin's write checks whether the slug is taken",
    "registry.kpis._current": "an admin's plan or apply, after policy.require(DEFINE)",
    "registry.observations._stored": "ingest's check of the keys it writes (slugs already checked)",
    "registry.recompute.request": "an admin's request, after policy.require(DEFINE)",
    "registry.rollups._apply": "the triggers' write of a change into the rollups",
    "registry.rollups.triggers": "the triggers that keep the rollups: writes, in the database",
    "registry.rollups.rebuilding": "rebuilds the rollups from the raw rows; returns nothing",
}


def functions_reading() -> dict[str, bool]:
    """Return every function of the domain that reads definitions or observations, and whether it
    applies policy.visible itself."""
    found: dict[str, bool] = {}
    for path in sorted((ROOT / "registry").glob("*.py")):
        module = f"registry.{path.stem}"
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            text = ast.unparse(node)
            if any(read in text for read in READS):
                found[f"{module}.{node.name}"] = "policy.visible(" in text
    return found


def test_every_read_that_serves_a_viewer_applies_the_one_policy_function() -> None:
    reading = functions_reading()
    unfiltered = sorted(name for name, applies in reading.items() if not applies)
    listed = sorted(name for name, why in UNFILTERED.items() if why)
    assert unfiltered == listed, "a read without policy.visible: apply it, or list it with why"


def test_the_reader_finds_the_reads_it_must_find() -> None:
    # The control: the reads of the services are seen, and seen to apply the policy.
    reading = functions_reading()
    for name in (
        "registry.kpis.definition_rows",
        "registry.kpis.revisions_by_slug",
        "registry.rollups.totals",
        "registry.rollups.buckets",
        "registry.rollups._summarize_groups",
        "registry.rollups._raw_values",
        "registry.observations.rows_for_incidents",
        "registry.observations.incident_with_observations",
        "registry.observations._known_slugs",
        "registry.recompute.jobs_by_slug",
    ):
        assert reading.get(name) is True, name


def test_no_other_spelling_of_the_policy_is_left() -> None:
    for path in [*(ROOT / "registry").rglob("*.py"), *(ROOT / "schema").rglob("*.py")]:
        text = path.read_text()
        for old in ("policy.readable", "kpi_filter", "observation_filter", ".is_in(readable"):
            assert old not in text, f"{path.relative_to(ROOT)} still spells {old}"


NOBODY = Viewer(subject="nobody", personas=frozenset())
EXEC = Viewer(subject="exec", personas=frozenset({Persona.EXEC}))


def test_the_condition_names_only_what_the_viewer_may_see() -> None:
    where = policy.visible(EXEC, KpiDefinition.visibility)
    assert str(where) == '"kpi_definition"."visibility" IN (\'exec\')'

    class Collect:
        def __init__(self) -> None:
            self.values: list[str] = []

        def one_of(self, values: list[str]) -> str:
            self.values.extend(values)
            return "IN (...)"

    collected = Collect()
    assert policy.visible(EXEC, "d.visibility", collected) == "d.visibility IN (...)"
    assert collected.values == ["exec"]


@pytest.mark.parametrize(
    "read",
    [
        lambda: kpis.list_definitions(viewer=NOBODY),
        lambda: kpis.definitions_by_slug(viewer=NOBODY, slugs=["mttr"]),
        lambda: kpis.revisions_by_slug(viewer=NOBODY, slugs=["mttr"]),
        lambda: observations.rows_for_incidents(viewer=NOBODY, pks=[1]),
        lambda: observations.incident_with_observations(viewer=NOBODY, key="INC-1"),
        lambda: recompute.jobs_by_slug(viewer=NOBODY, slugs=["mttr"]),
    ],
    ids=["list", "by-slug", "revisions", "observations", "incident", "recompute"],
)
async def test_a_viewer_with_no_persona_reads_nothing_at_all(read) -> None:
    with pytest.raises(Forbidden):
        await read()


def test_no_layer_above_the_domain_reads_the_tables_itself() -> None:
    # Resolvers, plans, REST handlers and pages read through the services, which apply the policy.
    for path in [*(ROOT / "schema").rglob("*.py"), *(ROOT / "server").rglob("*.py")]:
        code = ast.unparse(ast.parse(path.read_text()))  # without comments and docstring layout
        for read in ("FROM kpi_", "JOIN kpi_", "registry.tables", "import tables"):
            if path.name == "demo.py" and read == "registry.tables":
                continue  # the demo data set is written straight into the tables, read by no one
            assert read not in code, f"{path.relative_to(ROOT)} reads {read!r} itself"
