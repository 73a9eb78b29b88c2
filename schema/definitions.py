"""Definitions as code over GraphQL: plan or apply a definitions file (registry/definitions_file).

`mim kpi plan|apply --url URL --token TOKEN` sends the file here, so a CI job holding only an
admin token can gate on drift and deploy definitions.
"""

from __future__ import annotations

from typing import Annotated, Any

import strawberry

from registry import definitions_file, kpis, policy
from registry.errors import BadInput
from registry.model import Viewer
from schema.cache_keys import VALUE
from schema.context import Info
from schema.enums import PlanAction
from schema.kpis import FieldChange


@strawberry.type(description="What applying a definitions file does (or did) to one KPI." + VALUE)
class PlannedKpi:
    slug: str = strawberry.field(description="The KPI's slug.")
    action: PlanAction = strawberry.field(
        description="ABSENT: in the registry but not in the file, left alone."
    )
    changes: list[FieldChange] = strawberry.field(
        description="Field by field, before and after, JSON-encoded as revisions record them: "
        "every field of the file for CREATE, the fields that differ otherwise, none for "
        "UNCHANGED and ABSENT."
    )

    @classmethod
    def of(cls, planned: kpis.PlannedKpi) -> PlannedKpi:
        return cls(
            slug=planned.slug,
            action=planned.action,
            changes=[
                FieldChange(field=c.field, before=c.before, after=c.after) for c in planned.changes
            ],
        )


@strawberry.type(description="What applying a definitions file does, or did, KPI by KPI." + VALUE)
class DefinitionsPlan:
    changed: bool = strawberry.field(
        description="Whether applying creates, changes, retires or reactivates any KPI (or did)."
    )
    applied: bool = strawberry.field(
        description="True when the file was applied; false for a dry run, which writes nothing."
    )
    kpis: list[PlannedKpi] = strawberry.field(
        description="Every KPI in the file or in the registry, retired ones included, by slug."
    )


@strawberry.type
class DefinitionsMutation:
    @strawberry.mutation(
        description="Plan (dryRun) or apply a definitions file, all or nothing; admin only "
        "(others: FORBIDDEN, before the document is read). Each created or changed KPI gets one "
        "revision by the token's subject with the note. An invalid file is BAD_USER_INPUT with "
        "extensions.problems (line, kpi, field, message)."
    )
    async def apply_kpi_definitions(
        self,
        info: Info,
        document: Annotated[
            str,
            strawberry.argument(
                description="The file's YAML text (docs/definitions-as-code.md): at most "
                "1,000,000 bytes and 1,000 KPIs."
            ),
        ],
        note: Annotated[
            str | None,
            strawberry.argument(
                description="Why, recorded on each revision; at most 4,000 characters. "
                "Required, not blank, unless dryRun."
            ),
        ] = None,
        dry_run: Annotated[
            bool,
            strawberry.argument(
                description="Only plan: say what applying would do, write nothing."
            ),
        ] = False,
    ) -> DefinitionsPlan:
        viewer = info.context.viewer
        policy.require(viewer, policy.Action.DEFINE)  # before anything of the request is judged
        if dry_run:
            plan = await kpis.plan_definitions(viewer=viewer, desired=_parsed(viewer, document))
        else:
            if note is None or not note.strip():
                raise BadInput("note: say why, for the revisions (required unless dryRun)")
            desired = _parsed(viewer, document)
            plan = await kpis.apply_definitions(
                viewer=viewer, desired=desired, note=note, author=viewer.subject
            )
            for planned in plan:
                if planned.action is not PlanAction.UNCHANGED:
                    await info.context.settle(planned.slug)
        changed = any(p.action not in (PlanAction.UNCHANGED, PlanAction.ABSENT) for p in plan)
        return DefinitionsPlan(
            changed=changed, applied=not dry_run, kpis=[PlannedKpi.of(p) for p in plan]
        )


def _parsed(viewer: Viewer, document: str) -> list[dict[str, Any]]:
    # Admins only, before the document is read: no one else learns whether it is valid.
    policy.require(viewer, policy.Action.DEFINE)
    return definitions_file.parse(document)
