"""The recompute runner of one worker process: runs queued jobs as background tasks.

Jobs live in the database (registry/recompute.py), so every worker sees them. A runner looks for
jobs waiting for a runner when it starts (a job whose worker died resumes), whenever this process
queues one, and every `poll_seconds`; it runs each in a task of its own, outside any request, so
a job outlives the request that queued it and is stopped only when the process stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable, Coroutine
from typing import Any

from registry import db, recompute

log = logging.getLogger("mim.jobs")


class RecomputeRunner:
    """Claims and runs recompute jobs; one per application."""

    def __init__(
        self, *, poll_seconds: float, on_finish: Callable[[str, float], None] | None = None
    ) -> None:
        self.poll_seconds = poll_seconds
        # Told each job run's outcome (done, failed, paused) and its seconds on this worker.
        self.on_finish = on_finish
        self.name = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._poller: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Resume the jobs waiting for a runner, then look again every poll_seconds (0: never)."""
        await self._look_quietly()
        if self.poll_seconds > 0:
            self._poller = self._spawn(self._poll())

    async def stop(self) -> None:
        """Stop every job task: its last committed batch stays, and the job resumes elsewhere."""
        tasks = [t for t in (self._poller, *self._tasks.values()) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()

    async def look(self) -> None:
        """Start a task for every job that waits for a runner (unless this runner runs it)."""
        for slug in await recompute.claimable():
            if slug not in self._tasks:
                self._tasks[slug] = self._spawn(self._run(slug))

    async def settle(self, slug: str, seconds: float) -> None:
        """Start the KPI's job if it waits, and give it up to `seconds` to finish."""
        await self.look()
        task = self._tasks.get(slug)
        if task is not None:
            # The job goes on in the background if it needs longer.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(task), seconds)

    def _spawn(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        # A fresh context: a task started from a request must not inherit its transaction.
        return asyncio.create_task(work, context=contextvars.Context())

    async def _run(self, slug: str) -> None:
        started = time.perf_counter()
        outcome = "done"
        try:
            # False: queued again (or taken over) while it ran; look once more for the new job.
            while not await recompute.run(slug, self.name):
                if slug not in await recompute.claimable():
                    outcome = "superseded"
                    return
        except asyncio.CancelledError:
            outcome = "stopped"
            raise
        except Exception as error:
            if db.is_transient(error) or db.is_timeout(error):
                outcome = "paused"
                log.warning("recompute of %s paused: %s", slug, type(error).__name__)
            else:
                outcome = "failed"
                log.exception("recompute of %s failed", slug)
        finally:
            self._tasks.pop(slug, None)
            if self.on_finish is not None:
                self.on_finish(outcome, time.perf_counter() - started)

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.poll_seconds)
            await self._look_quietly()

    async def _look_quietly(self) -> None:
        # The service starts, and stays up, while the database is down or not yet migrated
        # (/readyz says which); the next look finds the jobs.
        try:
            await self.look()
        except Exception as error:
            log.warning("could not look for recompute jobs: %s", type(error).__name__)
