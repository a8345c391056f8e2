"""The one error hierarchy: each class carries its HTTP status; the middleware renders it."""

from __future__ import annotations

from typing import Mapping


class APIError(Exception):
    """An error answered to the client as {"message": ...} with `status`."""

    status = 500

    def __init__(self, message: str, headers: Mapping[str, str] | None = None,
                 code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = dict(headers or {})
        self.code = code


class BadRequest(APIError):
    """400: the request cannot be served as asked (e.g. unknown voice for /speech)."""

    status = 400


class Unauthorized(APIError):
    """401: no usable credentials; always carries WWW-Authenticate: Bearer."""

    status = 401

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"WWW-Authenticate": "Bearer"})


class Forbidden(APIError):
    """403: authenticated or not, this request may not do this (CSRF, non-local /metrics)."""

    status = 403


class NotFound(APIError):
    """404: the thing asked for does not exist."""

    status = 404


class PayloadTooLarge(APIError):
    """413: body or text over the configured limit."""

    status = 413


class Unprocessable(APIError):
    """422: validation failed, or the request breaks a rule (user exists, last admin...)."""

    status = 422


class TooManyRequests(APIError):
    """429: throttled; carries Retry-After."""

    status = 429

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message, headers={"Retry-After": str(max(1, retry_after))})


class ServiceUnavailable(APIError):
    """503: busy or stopping; carries Retry-After."""

    status = 503

    def __init__(self, message: str = "Server is busy, try again later",
                 retry_after: int = 1) -> None:
        super().__init__(message, headers={"Retry-After": str(max(1, retry_after))})


class StoreError(Exception):
    """The database could not do what was asked (locked too long, corrupt ...)."""


class DatabaseBusy(StoreError, ServiceUnavailable):
    """Another writer (the CLI) held the database past busy_timeout: 503 to clients, an error to the CLI."""


class DatabaseUnwritable(StoreError, ServiceUnavailable):
    """The database takes no writes (read-only file or filesystem, disk full, I/O error): 503."""

    def __init__(self, message: str = "The database cannot be written right now, try again later",
                 retry_after: int = 10) -> None:
        super().__init__(message, retry_after=retry_after)
