"""The `mim` command."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Coroutine
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import click

from registry.model import Persona, Viewer
from server import definitions_cli, logs
from server.config import ConfigError, Settings

if TYPE_CHECKING:
    from aiohttp import web


def _run(coro: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(coro)


def _settings() -> Settings:
    try:
        return Settings.from_env()
    except (ConfigError, OSError) as error:
        raise click.ClickException(str(error)) from None


@click.group()
def main() -> None:
    """The KPI source of truth for incident management."""


@main.command()
def migrate() -> None:
    """Bring the database schema up to date (one process at a time; a newer database is refused)."""
    from registry import migrate as migrations
    from registry.errors import AppError

    def waiting() -> None:
        click.echo("another mim migrate holds the migration lock; waiting for it", err=True)

    try:
        ran = _run(migrations.migrate(waiting=waiting))
    except AppError as error:
        raise click.ClickException(error.message) from None
    plural = "" if len(ran) == 1 else "s"
    click.echo(f"applied {len(ran)} migration{plural}" if ran else "the database is up to date")


MAX_WORKERS = 64


@main.command()
@click.option("--host", default=None, help="Listen address (default MIM_HOST or 127.0.0.1).")
@click.option("--port", default=None, type=int, help="Port (default MIM_PORT or 8080).")
@click.option(
    "--workers",
    default=1,
    show_default=True,
    type=click.IntRange(1, MAX_WORKERS),
    help="Server processes sharing the port (SO_REUSEPORT); 1 serves in this process. With more, "
    "this process supervises them: SIGINT or SIGTERM stops them all and exits 0; if one exits, "
    "it stops the others and exits 1.",
)
def serve(host: str | None, port: int | None, workers: int) -> None:
    """Serve GraphQL, the REST mirror and health checks."""
    settings = _settings()
    if workers > 1:
        _serve_workers(settings, host or settings.host, port or settings.port, workers)
        return

    from server.app import create_app

    logs.configure(settings.log_format)
    if settings.metrics and (shared := os.environ.get("PROMETHEUS_MULTIPROC_DIR")):
        from server.metrics import prepare_directory

        prepare_directory(shared)
    try:
        app = create_app(settings)
    except ConfigError as error:
        raise click.ClickException(str(error)) from None
    _run(_serve_one(app, settings, host or settings.host, port or settings.port))


async def _serve_one(app: web.Application, settings: Settings, host: str, port: int) -> None:
    """Serve `app` on host:port until SIGINT or SIGTERM, then finish what is in flight."""
    from aiohttp import web

    from server.shed import Runner, freeze_heap

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    runner = Runner(
        app,
        handle_signals=False,
        access_log_class=logs.AccessLogger,
        shutdown_timeout=settings.request_timeout_seconds,
    )
    await runner.setup()
    freeze_heap()
    try:
        await web.TCPSite(runner, host, port).start()
        for address in runner.addresses:
            click.echo(f"======== Running on http://{address[0]}:{address[1]} ========")
        click.echo("(Press CTRL+C to quit)")
        await stop.wait()
    finally:
        await runner.cleanup()


def _serve_workers(settings: Settings, host: str, port: int, workers: int) -> None:
    from server import workers as pool
    from server.auth import TokenVerifier

    if port == 0:
        raise click.UsageError("--workers needs a fixed port: each worker would pick its own")
    logs.configure(settings.log_format, who="supervisor")
    try:
        TokenVerifier(settings)  # a key set-up the service refuses is refused once, here
        pool.check_address(host, port)
    except ConfigError as error:
        raise click.ClickException(str(error)) from None
    except OSError as error:
        raise click.ClickException(f"cannot listen on {host}:{port}: {error}") from None
    try:
        pool.serve(settings, host=host, port=port, workers=workers)
    except pool.WorkerFailed as error:
        raise click.ClickException(f"{error}; stopped the other workers") from None


@main.command()
@click.option(
    "--persona",
    "personas",
    multiple=True,
    required=True,
    type=click.Choice(["exec", "stakeholder", "responder", "ingest", "admin"]),
)
@click.option(
    "--sub", "subject", default="local-user", show_default=True, help="The token's subject."
)
@click.option(
    "--ttl",
    default=3600,
    show_default=True,
    type=click.IntRange(1, 366 * 86400),
    help="Seconds until it expires (at most MIM_JWT_MAX_TTL, 86400 by default).",
)
def token(personas: tuple[str, ...], subject: str, ttl: int) -> None:
    """Print a signed token for local use."""
    from server.auth import issue_token

    settings = _settings()
    if ttl > settings.jwt_max_ttl_seconds:
        raise click.BadParameter(
            f"{ttl} seconds is longer than MIM_JWT_MAX_TTL ({settings.jwt_max_ttl_seconds}): "
            "the service would refuse the token",
            param_hint="--ttl",
        )
    try:
        click.echo(issue_token(settings, personas=personas, subject=subject, ttl_seconds=ttl))
    except ValueError as error:
        raise click.ClickException(str(error)) from None


@main.command()
@click.option(
    "--incidents", "count", default=300, show_default=True, type=click.IntRange(1, 1_000_000)
)
@click.option(
    "--seed", default=2041, show_default=True, help="Random seed, for a repeatable data set."
)
@click.option(
    "--if-empty", is_flag=True, help="Do nothing when the database already holds incidents."
)
def demo(count: int, seed: int, if_empty: bool) -> None:
    """Load a synthetic data set of incidents, their data and KPI observations."""
    from server import demo as demo_data

    async def go() -> None:
        if if_empty and await demo_data.has_incidents():
            click.echo("demo data already present; leaving it as it is")
            return
        loaded = await demo_data.load(count=count, seed=seed)
        click.echo(f"loaded {loaded} demo incidents")

    _run(go())


@main.group()
def kpi() -> None:
    """KPI definitions."""


for _command in (
    definitions_cli.export,
    definitions_cli.plan,
    definitions_cli.apply,
    definitions_cli.docs,
):
    kpi.add_command(_command)


@kpi.command("list")
def kpi_list() -> None:
    """List every KPI definition (as an admin sees them)."""
    from registry import kpis

    operator = Viewer(subject="cli", personas=frozenset({Persona.ADMIN}))
    rows = _run(kpis.list_definitions(viewer=operator))
    width = max((len(d.slug) for d in rows), default=4)
    click.echo(f"{'slug':<{width}}  {'visibility':<10}  {'units':<8}  {'version':>7}  owner")
    for d in rows:
        click.echo(
            f"{d.slug:<{width}}  {d.visibility.value:<10}  {d.units:<8}  {d.version:>7}  {d.owner}"
        )


@kpi.command("backfill")
@click.option("--kpi", "slugs", multiple=True, help="A KPI slug to recompute (repeatable).")
@click.option("--all", "every", is_flag=True, help="Recompute every KPI that has an expression.")
@click.option(
    "--since",
    type=click.DateTime(formats=["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S"]),
    help="Only incidents detected on or after this UTC date.",
)
@click.option("--batch-size", default=1000, show_default=True, type=click.IntRange(1, 10000))
def kpi_backfill(
    slugs: tuple[str, ...], every: bool, since: datetime | None, batch_size: int
) -> None:
    """Recompute observations from incident data, overwriting computed ones by key."""
    if every == bool(slugs):
        raise click.UsageError("give --kpi SLUG (one or more) or --all")
    from registry import compute, rollups
    from registry.errors import AppError

    operator = Viewer(subject="cli", personas=frozenset({Persona.ADMIN}))
    start = since.replace(tzinfo=UTC) if since else None

    async def go() -> list[compute.BackfillResult]:
        total = await compute.incident_count(since=start)
        # A bar only on a terminal: piped output gets the summary lines alone.
        label = "incidents" if sys.stderr.isatty() else ""
        with click.progressbar(length=total, label=label, file=sys.stderr, show_pos=True) as bar:
            return await compute.backfill(
                viewer=operator,
                slugs=list(slugs) if slugs else None,
                since=start,
                batch_size=batch_size,
                progress=bar.update,
            )

    try:
        results = _run(go())
        # The rollups are kept by the database; rebuilding them here mends any damage by hand.
        _run(rollups.rebuild(list(slugs) if slugs else None))
    except AppError as error:
        raise click.ClickException(error.message) from None
    for r in results:
        click.echo(
            f"{r.kpi_slug}: scanned {r.incidents_scanned}, written {r.observations_written}, "
            f"skipped {r.skipped}"
        )
    click.echo(f"rollups rebuilt for {', '.join(slugs) if slugs else 'every KPI'}")


if __name__ == "__main__":
    sys.exit(main())
