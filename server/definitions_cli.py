"""`mim kpi export | plan | apply | docs`: the KPI page kept as code (docs/definitions-as-code.md).

`plan` and `apply` work on the database DATABASE_URL names, or, with `--url` and `--token`, through
a running service's `applyKpiDefinitions` mutation (an admin token), so a CI job that holds only
a token can gate on drift and deploy. `plan` exits 0 when nothing would change, 2 when something
would, 1 on an invalid file; an invalid file is reported problem by problem, `FILE:LINE: kpi:
field: message`, and nothing of it is applied.
"""

from __future__ import annotations

import asyncio
import getpass
import json
import os
import sys
import tempfile
from collections.abc import Coroutine, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import click

from registry.model import FieldChange, Persona, Viewer

# Exit statuses of `mim kpi plan` (and apply): CI gates on them.
NO_CHANGES, INVALID, CHANGES = 0, 1, 2
OPERATOR = Viewer(subject="cli", personas=frozenset({Persona.ADMIN}))
REQUEST_SECONDS = 120.0
MUTATION = """
mutation Apply($document: String!, $note: String, $dryRun: Boolean!) {
  applyKpiDefinitions(document: $document, note: $note, dryRun: $dryRun) {
    changed applied kpis { slug action changes { field before after } }
  }
}
"""
VERBS = {
    "create": "created",
    "change": "changed",
    "retire": "retired",
    "reactivate": "reactivated",
    "unchanged": "unchanged",
    "absent": "not in the file (left alone)",
}


def _run(coro: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(coro)


def _remote_options(command: Any) -> Any:
    command = click.option(
        "--token",
        envvar="MIM_TOKEN",
        help="An admin token for --url (or MIM_TOKEN).",
    )(command)
    return click.option(
        "--url",
        help="A running service (e.g. https://kpi.example.com) instead of DATABASE_URL.",
    )(command)


@click.command("export")
@click.option("--output", "-o", type=click.Path(dir_okay=False), help="A file instead of stdout.")
def export(output: str | None) -> None:
    """Write every definition (retired ones too) as a definitions file."""
    from registry import definitions_file, kpis

    found = _run(kpis.list_definitions(viewer=OPERATOR, include_retired=True))
    _write(definitions_file.export(found), output)


@click.command("plan")
@click.argument("file", type=click.Path(dir_okay=False, allow_dash=True))
@_remote_options
def plan(file: str, url: str | None, token: str | None) -> None:
    """Show what applying FILE would change; exit 0 if nothing, 2 if something, 1 if invalid."""
    text = _read(file)
    planned = (
        _remote(url, token, text, file, None, dry_run=True) if url else _local_plan(text, file)
    )
    _show(planned, applied=False)
    sys.exit(CHANGES if _changes(planned) else NO_CHANGES)


@click.command("apply")
@click.argument("file", type=click.Path(dir_okay=False, allow_dash=True))
@click.option("--note", required=True, help="Why: recorded on every revision this makes.")
@click.option("--author", help="Who, for the revisions (default: the OS user; --url: the token).")
@_remote_options
def apply(file: str, note: str, author: str | None, url: str | None, token: str | None) -> None:
    """Apply FILE in one transaction: all of it or, if any entry is invalid, nothing."""
    text = _read(file)
    if url:
        if author is not None:
            raise click.UsageError(
                "--author goes with the database: over --url the token's subject is the author"
            )
        planned = _remote(url, token, text, file, note, dry_run=False)
    else:
        planned = _local_apply(text, file, note, author or _os_user())
    _show(planned, applied=True)


@click.command("docs")
@click.option(
    "--persona",
    type=click.Choice([p.value for p in Persona]),
    default="admin",
    show_default=True,
    help="Render only what this persona may see.",
)
@click.option("--output", "-o", type=click.Path(dir_okay=False), help="A file instead of stdout.")
def docs(persona: str, output: str | None) -> None:
    """Render the KPI Source of Truth page (Markdown) from the registry."""
    from registry import kpi_page

    viewer = Viewer(subject="cli", personas=frozenset({Persona(persona)}))
    _write(_run(kpi_page.render(viewer=viewer, now=datetime.now(UTC))), output)


# --- local: the database DATABASE_URL names --------------------------------------------------


def _local_plan(text: str, source: str) -> list[dict[str, Any]]:
    from registry import kpis

    desired = _parse(text, source)
    return [_plain(p) for p in _run(kpis.plan_definitions(viewer=OPERATOR, desired=desired))]


def _local_apply(text: str, source: str, note: str, author: str) -> list[dict[str, Any]]:
    from registry import kpis, recompute
    from registry.errors import AppError

    desired = _parse(text, source)

    async def go() -> list[kpis.PlannedKpi]:
        done = await kpis.apply_definitions(
            viewer=OPERATOR, desired=desired, note=note, author=author
        )
        # What the apply queued is recomputed here, unless a running service took it already.
        runner = f"mim-kpi-apply:{os.getpid()}"
        for slug in sorted(await recompute.claimable()):
            if any(p.slug == slug for p in done):
                await recompute.run(slug, runner)
        return done

    try:
        return [_plain(p) for p in _run(go())]
    except AppError as error:
        raise click.ClickException(error.message) from None


def _parse(text: str, source: str) -> list[dict[str, Any]]:
    from registry import definitions_file

    try:
        return definitions_file.parse(text)
    except definitions_file.InvalidFile as invalid:
        _invalid(
            source,
            [(p.line, p.kpi, p.field, p.message) for p in invalid.problems],
        )
        raise AssertionError("unreachable") from None


def _plain(planned: Any) -> dict[str, Any]:
    return {
        "slug": planned.slug,
        "action": planned.action.value,
        "changes": [_change(c) for c in planned.changes],
    }


def _change(change: FieldChange) -> dict[str, Any]:
    return {"field": change.field, "before": change.before, "after": change.after}


# --- remote: a running service's applyKpiDefinitions ---------------------------------------


def _remote(
    url: str, token: str | None, text: str, source: str, note: str | None, *, dry_run: bool
) -> list[dict[str, Any]]:
    if not token:
        raise click.UsageError("--url needs --token (or MIM_TOKEN): an admin token")
    endpoint = url.rstrip("/")
    if not endpoint.endswith("/graphql"):
        endpoint += "/graphql"
    variables = {"document": text, "note": note, "dryRun": dry_run}
    body = _run(_post(endpoint, token, {"query": MUTATION, "variables": variables}))
    errors = body.get("errors") or []
    problems = [p for e in errors for p in (e.get("extensions") or {}).get("problems") or []]
    if problems:
        _invalid(source, [(p["line"], p["kpi"], p["field"], p["message"]) for p in problems])
    if errors:
        codes = ", ".join(str((e.get("extensions") or {}).get("code")) for e in errors)
        messages = "; ".join(str(e.get("message")) for e in errors)
        raise click.ClickException(f"{endpoint} refused it ({codes}): {messages}")
    found: list[dict[str, Any]] = body["data"]["applyKpiDefinitions"]["kpis"]
    for entry in found:
        entry["action"] = str(entry["action"]).lower()
    return found


async def _post(endpoint: str, token: str, payload: dict[str, Any]) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
    timeout = aiohttp.ClientTimeout(total=REQUEST_SECONDS)
    try:
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.post(endpoint, json=payload, headers=headers) as response,
        ):
            text = await response.text()
            try:
                body = json.loads(text)
            except ValueError:
                body = None
            if not isinstance(body, dict) or ("data" not in body and "errors" not in body):
                raise click.ClickException(
                    f"{endpoint} answered HTTP {response.status}, not a GraphQL response"
                )
            return body
    except (aiohttp.ClientError, TimeoutError, OSError) as error:
        raise click.ClickException(
            f"cannot reach {endpoint}: {error or type(error).__name__}"
        ) from None


# --- output ---------------------------------------------------------------------------------


def _show(planned: Sequence[dict[str, Any]], *, applied: bool) -> None:
    counts: dict[str, int] = {}
    for entry in planned:
        action = entry["action"]
        counts[action] = counts.get(action, 0) + 1
        click.echo(f"{entry['slug']}: {VERBS.get(action, action)}")
        if action == "create":
            continue
        for change in entry["changes"]:
            click.echo(f"    {change['field']}: {change['before']} -> {change['after']}")
    summary = ", ".join(f"{counts[a]} {VERBS[a]}" for a in VERBS if counts.get(a))
    if not _changes(planned):
        click.echo(f"Nothing to change ({summary or 'no KPIs'}).")
    else:
        click.echo(f"{'Applied' if applied else 'Plan'}: {summary}.")


def _changes(planned: Sequence[dict[str, Any]]) -> bool:
    return any(entry["action"] not in ("unchanged", "absent") for entry in planned)


def _invalid(source: str, problems: Sequence[tuple[Any, Any, Any, Any]]) -> None:
    """Report every problem of an invalid file and exit 1: nothing of it was applied."""
    for line, kpi, field, message in problems:
        where = ": ".join(str(part) for part in (kpi, field) if part)
        click.echo(f"{source}:{line}: {where + ': ' if where else ''}{message}", err=True)
    click.echo(f"{source}: {len(problems)} problem(s); nothing was applied.", err=True)
    sys.exit(INVALID)


def _read(file: str) -> str:
    try:
        if file == "-":
            return sys.stdin.read()
        return Path(file).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise click.ClickException(f"{file}: no such file") from None
    except UnicodeDecodeError as error:
        raise click.ClickException(
            f"{file}: not UTF-8 text ({error.reason} at byte {error.start})"
        ) from None
    except OSError as error:
        raise click.ClickException(f"{file}: {error.strerror}") from None


def _write(text: str, output: str | None) -> None:
    """Write to stdout, or replace `output` whole (never a half-written file)."""
    if output is None:
        click.echo(text, nl=False)
        return
    target = Path(output)
    with tempfile.NamedTemporaryFile(
        "w", encoding="utf-8", dir=target.parent or ".", delete=False, prefix=f".{target.name}."
    ) as handle:
        handle.write(text)
    os.replace(handle.name, target)


def _os_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"
