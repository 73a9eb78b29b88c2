"""The per-request context: who is asking, and DataLoaders whose cache lives for this request."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from strawberry.types import Info as StrawberryInfo

from registry.model import Viewer
from schema.loaders import Loaders


async def _no_runner(slug: str) -> None:
    """Without a recompute runner (a context made outside a server), queued jobs just wait."""


@dataclass(slots=True)
class Context:
    viewer: Viewer
    # Gives the recompute a definition mutation queued its time to finish (server/jobs.py).
    settle: Callable[[str], Awaitable[None]] = _no_runner
    loaders: Loaders = field(init=False)

    def __post_init__(self) -> None:
        self.loaders = Loaders(self.viewer)


Info = StrawberryInfo[Context, None]
