"""The one error a formula raises at compile time."""

from __future__ import annotations

from registry.errors import BadInput


class FormulaError(BadInput):
    """A formula that cannot be compiled; position is the 0-based offset of the problem."""

    position: int

    def __init__(self, message: str, position: int) -> None:
        super().__init__(f"{message} at position {position}")
        self.position = position


def quote(text: str, limit: int = 40) -> str:
    """Return text quoted for an error message: ASCII only, and cut short if long."""
    shown = text if len(text) <= limit else text[:limit] + "..."
    return ascii(shown)
