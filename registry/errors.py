"""The one family of errors services raise; the API layers map each to a contract code."""

from __future__ import annotations


class AppError(Exception):
    """An error whose message is safe to show the caller (and its details, if any)."""

    code = "INTERNAL"
    # More for a client to act on, sent as the error's extensions beside the code.
    details: dict[str, object] | None = None

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadInput(AppError):
    code = "BAD_USER_INPUT"


class NotFound(BadInput):
    """A referenced thing does not exist, or the caller may not see it: the same to the caller."""


class Conflict(AppError):
    code = "CONFLICT"


class Forbidden(AppError):
    code = "FORBIDDEN"


class Unauthenticated(AppError):
    code = "UNAUTHENTICATED"


class Unavailable(AppError):
    """The database cannot be reached or is overloaded; the same request may succeed later."""

    code = "UNAVAILABLE"
