"""The domain errors: what went wrong, in words a caller may see; no HTTP status here.

Each front door renders them its own way: `idlakd.web.errors` maps every class to a status
in one table; the CLI prints the message.
"""

from __future__ import annotations


class IdlakdError(Exception):
    """A failure explained to the caller: a message safe to show, and when to retry if that helps."""

    def __init__(self, message: str, retry_after: int | None = None,
                 code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = None if retry_after is None else max(1, retry_after)
        self.code = code


class MalformedRequest(IdlakdError):
    """The request cannot be served as asked (unreadable body, unknown voice for speech)."""


class InvalidRequest(IdlakdError):
    """A field is missing or wrong, or the request breaks a rule (user exists, last admin...)."""


class NotAuthenticated(IdlakdError):
    """No usable credentials (missing, invalid, expired or revoked token; wrong password)."""


class NotPermitted(IdlakdError):
    """Authenticated or not, the caller may not do this (CSRF, non-local /metrics)."""


class NotFound(IdlakdError):
    """The thing asked for does not exist."""


class Conflict(IdlakdError):
    """The thing is not in a state that allows this now (a job's audio before it is done)."""


class RangeNotSatisfiable(IdlakdError):
    """A byte range outside what is there; size is the whole length."""

    def __init__(self, message: str, size: int) -> None:
        super().__init__(message)
        self.size = size


class TooLarge(IdlakdError):
    """A body, a text or the audio it would make is over its configured limit."""


class RateLimited(IdlakdError):
    """Too many attempts or too much use: retry after retry_after seconds."""

    def __init__(self, message: str, retry_after: int, code: str | None = None) -> None:
        super().__init__(message, retry_after, code)


class Busy(IdlakdError):
    """The server is busy or stopping: retry after retry_after seconds."""

    def __init__(self, message: str = "Server is busy, try again later",
                 retry_after: int = 1, code: str | None = None) -> None:
        super().__init__(message, retry_after, code)


class Failed(IdlakdError):
    """The server could not do its part (synthesis failed); the message says what, not why."""


class StoreError(Exception):
    """The database could not do what was asked (locked too long, corrupt ...)."""


class DatabaseBusy(StoreError, Busy):
    """Another writer (the CLI) held the database past busy_timeout: busy for callers, an error to the CLI."""


class DatabaseUnwritable(StoreError, Busy):
    """The database takes no writes (read-only file or filesystem, disk full, I/O error)."""

    def __init__(self, message: str = "The database cannot be written right now, try again later",
                 retry_after: int = 10) -> None:
        super().__init__(message, retry_after=retry_after)
