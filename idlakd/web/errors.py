"""The one place an HTTP status is chosen: each domain error class and its status; /v1's shape."""

from __future__ import annotations

import re
from typing import Any, Final

from idlakd.errors import (Busy, Conflict, Failed, IdlakdError, InvalidRequest, MalformedRequest,
                           NotAuthenticated, NotFound, NotPermitted, RangeNotSatisfiable,
                           RateLimited, TooLarge)

#: Most specific classes first is not needed: the first base in the class's MRO that is listed wins.
STATUS: Final[dict[type[IdlakdError], int]] = {
    MalformedRequest: 400,
    NotAuthenticated: 401,
    NotPermitted: 403,
    NotFound: 404,
    Conflict: 409,
    TooLarge: 413,
    RangeNotSatisfiable: 416,
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
    if isinstance(exc, RangeNotSatisfiable):
        headers["Content-Range"] = f"bytes */{exc.size}"
    return headers


# OpenAI's door (/v1/...): the same statuses, rendered in OpenAI's error shape.
OPENAI_PREFIX: Final = "/v1/"
#: OpenAI's error "type" per status; any other status is invalid_request_error below 500,
#: server_error from 500 on.
OPENAI_TYPES: Final[dict[int, str]] = {
    401: "authentication_error",
    403: "permission_error",
    429: "rate_limit_error",
    503: "service_unavailable_error",
}
#: The core names request fields as /speech does; OpenAI's door calls them this.
OPENAI_FIELDS: Final[dict[str, str]] = {"text": "input", "audio_format": "response_format",
                                        "voice_id": "voice"}
# The "field: Reason." convention of every validation message names the field first.
_FIELD_RE: Final = re.compile(r"([a-z_]{1,32}): ")


def is_openai_path(path: str) -> bool:
    """Whether a request path belongs to OpenAI's door (its errors take OpenAI's shape)."""
    return path.startswith(OPENAI_PREFIX)


def openai_error(status: int, message: str, code: str | None) -> dict[str, Any]:
    """OpenAI's error body {"error": {message, type, param, code}} for a status and message.

    param is the field the message names first (in OpenAI's words), or null.
    """
    match = _FIELD_RE.match(message)
    param = None if match is None else OPENAI_FIELDS.get(match.group(1), match.group(1))
    kind = OPENAI_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


# The WebSocket door (/v1/speech/stream): the same errors as a close code and a short code.
#: 1008 policy (bad auth, bad message, quota), 1011 server error, 1013 try again later.
CLOSE_POLICY: Final = 1008
CLOSE_SERVER_ERROR: Final = 1011
CLOSE_TRY_LATER: Final = 1013


def socket_error(exc: IdlakdError) -> tuple[int, str]:
    """(WebSocket close code, error code) of a domain error: its own code, else OpenAI's type."""
    status = status_of(exc)
    close = (CLOSE_TRY_LATER if status == 503 else
             CLOSE_SERVER_ERROR if status >= 500 else CLOSE_POLICY)
    kind = OPENAI_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return close, exc.code or kind
