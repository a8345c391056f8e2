"""Request body parsing and field checks, answering with the contract's 400/422 texts."""

from __future__ import annotations

import asyncio
import json
import math
from typing import Any, Final, Sequence

from aiohttp import web

from idlakd.errors import MalformedRequest, InvalidRequest

MISSING: Final = "Missing data for required field."
NOT_STRING: Final = "Not a valid string."
NOT_BOOLEAN: Final = "Not a valid boolean."
NOT_CHOICE: Final = "Not a valid choice."
NOT_INTEGER: Final = "Not a valid integer."
NOT_NUMBER: Final = "Not a valid number."
INVALID_JSON: Final = "Request body is not valid JSON"
NOT_OBJECT: Final = "Request body must be a JSON object"
MAX_FIELD_LENGTH: Final = 1024
# Bodies larger than this are parsed on a thread (a job's text may be megabytes).
INLINE_JSON_BYTES: Final = 256 * 1024


async def json_object(request: web.Request, optional: bool = False) -> dict[str, Any]:
    """The request body as a JSON object; an empty body is {} when optional."""
    try:
        raw = await request.read()
    except web.RequestPayloadError:  # e.g. Content-Encoding: gzip on a body that is not gzip
        raise MalformedRequest(INVALID_JSON) from None
    if not raw.strip():
        if optional:
            return {}
        raise InvalidRequest(NOT_OBJECT)
    try:
        body = json.loads(raw) if len(raw) <= INLINE_JSON_BYTES else \
            await asyncio.to_thread(json.loads, raw)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        raise MalformedRequest(INVALID_JSON) from None
    if not isinstance(body, dict):
        raise InvalidRequest(NOT_OBJECT)
    return body


class Fields:
    """Collects per-field errors so one 422 names every bad field."""

    def __init__(self, body: dict[str, Any]) -> None:
        self.body = body
        self.errors: list[str] = []

    def error(self, field: str, reason: str) -> None:
        """Record a bad field."""
        self.errors.append(f"{field}: {reason}")

    def string(self, field: str, required: bool = False, hint: str = "",
               max_length: int | None = MAX_FIELD_LENGTH) -> str | None:
        """A string field (None when absent and optional)."""
        value = self.body.get(field)
        if value is None:
            if required:
                self.error(field, f"{MISSING} {hint}".strip())
            return None
        if not isinstance(value, str) or not _is_utf8(value):
            self.error(field, f"{NOT_STRING} {hint}".strip())
            return None
        if max_length is not None and len(value) > max_length:
            self.error(field, f"Longer than maximum length {max_length}.")
            return None
        return value

    def boolean(self, field: str, default: bool) -> bool:
        """A boolean field (true/false only: 1, 'yes' and the like are refused)."""
        value = self.body.get(field)
        if value is None:
            return default
        if not isinstance(value, bool):
            self.error(field, NOT_BOOLEAN)
            return default
        return value

    def choice(self, field: str, choices: Sequence[str], default: str | None = None) -> str | None:
        """A string field that must be one of choices."""
        value = self.body.get(field)
        if value is None:
            return default
        if not isinstance(value, str) or value not in choices:
            self.error(field, f"{NOT_CHOICE} Valid choices: {'|'.join(choices)}")
            return default
        return value

    def integer(self, field: str, bounds: tuple[int, int]) -> int | None:
        """An optional integer field within bounds (inclusive); None when absent or bad."""
        value = self.body.get(field)
        if value is None:
            return None
        # bool is an int in Python, not in JSON.
        if not isinstance(value, int) or isinstance(value, bool):
            self.error(field, NOT_INTEGER)
            return None
        return value if self._within(field, value, bounds) else None

    def number(self, field: str, bounds: tuple[float, float], default: float) -> float:
        """An optional number field within bounds (inclusive); default when absent or bad."""
        value = self.body.get(field)
        if value is None:
            return default
        # JSON's NaN and Infinity (Python's parser takes them) are not numbers here.
        if (not isinstance(value, (int, float)) or isinstance(value, bool)
                or (isinstance(value, float) and not math.isfinite(value))):
            self.error(field, NOT_NUMBER)
            return default
        return float(value) if self._within(field, value, bounds) else default

    def _within(self, field: str, value: float, bounds: tuple[float, float]) -> bool:
        """Whether value lies in bounds (inclusive); records the error if not."""
        low, high = bounds
        if low <= value <= high:
            return True
        self.error(field, f"Must be between {low:g} and {high:g}.")
        return False

    def check(self) -> None:
        """Raise one 422 listing every bad field, if any."""
        if self.errors:
            raise InvalidRequest(", ".join(self.errors))


def _is_utf8(value: str) -> bool:
    """False for text no store or engine can take: lone surrogates (JSON "\\ud800"), or NUL
    (PostgreSQL's text refuses it, so SQLite refuses it too, for one answer on both)."""
    if "\x00" in value:
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
