"""The per-request context: who is asking, and DataLoaders whose cache lives for this request."""

from __future__ import annotations

from dataclasses import dataclass, field

from strawberry.types import Info as StrawberryInfo

from schema.loaders import Loaders
from server.auth import Viewer


@dataclass(slots=True)
class Context:
    viewer: Viewer
    loaders: Loaders = field(init=False)

    def __post_init__(self) -> None:
        self.loaders = Loaders(self.viewer)


Info = StrawberryInfo[Context, None]
