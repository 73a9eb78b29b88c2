"""DataLoaders: every nested list costs one query per request, whatever the page size."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable, Mapping, Sequence
from typing import TypeVar

from strawberry.dataloader import DataLoader as StrawberryDataLoader

from registry import incidents, kpis, observations, recompute, trends
from registry.model import (
    Alert,
    Definition,
    Incident,
    Milestone,
    Observation,
    Recompute,
    Revision,
    Summary,
    SurveyResponse,
    TimelineEvent,
    Viewer,
)

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")
V = TypeVar("V")


class DataLoader(StrawberryDataLoader[K, T]):
    """A DataLoader whose callers cannot cancel each other's answers.

    Every caller asking for a key awaits the one cached future for it. When the executor cancels
    a field's resolver (it does once a sibling field raises), the cancellation would reach that
    shared future, and every other field waiting on the same key would get CancelledError, which
    no error handler catches. Each caller awaits its own shield of the future instead.
    """

    def load(self, key: K) -> Awaitable[T]:
        return asyncio.shield(super().load(key))


class Loaders:
    """One set per request, so no cache is ever shared between callers."""

    def __init__(self, viewer: Viewer) -> None:
        self.viewer = viewer
        self.definition = DataLoader[str, Definition | None](self._definitions)
        self.revisions = DataLoader[str, list[Revision]](self._revisions)
        self.recompute = DataLoader[str, Recompute | None](self._recomputes)
        self.summary = DataLoader[tuple[Definition, kpis.SummaryWindow], Summary](self._summaries)
        self.series = DataLoader[tuple[Definition, trends.Window], list[trends.Point]](self._series)
        self.incident = DataLoader[int, Incident | None](self._incidents)
        self.alerts = DataLoader[int, list[Alert]](self._children(incidents.alerts_for))
        self.timeline = DataLoader[int, list[TimelineEvent]](self._children(incidents.timeline_for))
        self.milestones = DataLoader[int, list[Milestone]](self._children(incidents.milestones_for))
        self.surveys = DataLoader[int, list[SurveyResponse]](self._children(incidents.surveys_for))
        self.observations = DataLoader[tuple[int, tuple[str, ...] | None], list[Observation]](
            self._observations
        )

    async def _definitions(self, slugs: Sequence[str]) -> list[Definition | None]:
        found = await kpis.definitions_by_slug(viewer=self.viewer, slugs=slugs)
        return [found.get(slug) for slug in slugs]

    async def _recomputes(self, slugs: Sequence[str]) -> list[Recompute | None]:
        found = await recompute.jobs_by_slug(viewer=self.viewer, slugs=slugs)
        return [found.get(slug) for slug in slugs]

    async def _revisions(self, slugs: Sequence[str]) -> list[list[Revision]]:
        found = await kpis.revisions_by_slug(viewer=self.viewer, slugs=slugs)
        return [found.get(slug, []) for slug in slugs]

    async def _summaries(
        self, keys: Sequence[tuple[Definition, kpis.SummaryWindow]]
    ) -> list[Summary]:
        return await kpis.summaries(viewer=self.viewer, keys=keys)

    async def _series(
        self, keys: Sequence[tuple[Definition, trends.Window]]
    ) -> list[list[trends.Point]]:
        return await trends.series(viewer=self.viewer, keys=keys)

    async def _incidents(self, pks: Sequence[int]) -> list[Incident | None]:
        found = await incidents.by_pk(viewer=self.viewer, pks=pks)
        return [found.get(pk) for pk in pks]

    def _children(
        self, fetch: Callable[..., Awaitable[Mapping[int, list[V]]]]
    ) -> Callable[[Sequence[int]], Awaitable[list[list[V]]]]:
        async def load(pks: Sequence[int]) -> list[list[V]]:
            found = await fetch(viewer=self.viewer, pks=pks)
            return [found.get(pk, []) for pk in pks]

        return load

    async def _observations(
        self, keys: Sequence[tuple[int, tuple[str, ...] | None]]
    ) -> list[list[Observation]]:
        by_slugs: dict[tuple[str, ...] | None, list[int]] = {}
        for pk, slugs in keys:
            by_slugs.setdefault(slugs, []).append(pk)
        found: dict[tuple[int, tuple[str, ...] | None], list[Observation]] = {}
        for slugs, pks in by_slugs.items():
            rows = await observations.for_incidents(viewer=self.viewer, pks=pks, slugs=slugs)
            for pk, items in rows.items():
                found[(pk, slugs)] = items
        return [found.get(key, []) for key in keys]
