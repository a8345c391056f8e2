"""The one place an HTTP status is chosen: each domain error class and its status."""

from __future__ import annotations

from typing import Final

from idlakd.errors import (Busy, Failed, IdlakdError, InvalidRequest, MalformedRequest,
                           NotAuthenticated, NotFound, NotPermitted, RateLimited, TooLarge)

#: Most specific classes first is not needed: the first base in the class's MRO that is listed wins.
STATUS: Final[dict[type[IdlakdError], int]] = {
    MalformedRequest: 400,
    NotAuthenticated: 401,
    NotPermitted: 403,
    NotFound: 404,
    TooLarge: 413,
    InvalidRequest: 422,
    RateLimited: 429,
    Failed: 500,
    Busy: 503,
    IdlakdError: 500,
}


def status_of(exc: IdlakdError) -> int:
    """The HTTP status of a domain error (its nearest listed class)."""
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]  # type: ignore[index]
    return 500


def headers_of(exc: IdlakdError) -> dict[str, str]:
    """The headers that go with a domain error: Retry-After, and the Bearer challenge on 401."""
    headers: dict[str, str] = {}
    if exc.retry_after is not None:
        headers["Retry-After"] = str(exc.retry_after)
    if isinstance(exc, NotAuthenticated):
        headers["WWW-Authenticate"] = "Bearer"
    return headers
