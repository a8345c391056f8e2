"""Request body parsing and field checks, answering with the contract's 400/422 texts."""

from __future__ import annotations

import json
import unicodedata
from typing import Any, Final, Sequence

from aiohttp import web

from idlakd.errors import BadRequest, Unprocessable

MISSING: Final = "Missing data for required field."
NOT_STRING: Final = "Not a valid string."
NOT_BOOLEAN: Final = "Not a valid boolean."
NOT_CHOICE: Final = "Not a valid choice."
INVALID_JSON: Final = "Request body is not valid JSON"
NOT_OBJECT: Final = "Request body must be a JSON object"
MAX_FIELD_LENGTH: Final = 1024


async def json_object(request: web.Request, optional: bool = False) -> dict[str, Any]:
    """The request body as a JSON object; an empty body is {} when optional."""
    try:
        raw = await request.read()
    except web.RequestPayloadError:  # e.g. Content-Encoding: gzip on a body that is not gzip
        raise BadRequest(INVALID_JSON) from None
    if not raw.strip():
        if optional:
            return {}
        raise Unprocessable(NOT_OBJECT)
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        raise BadRequest(INVALID_JSON) from None
    if not isinstance(body, dict):
        raise Unprocessable(NOT_OBJECT)
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

    def check(self) -> None:
        """Raise one 422 listing every bad field, if any."""
        if self.errors:
            raise Unprocessable(", ".join(self.errors))


def _is_utf8(value: str) -> bool:
    """False for text with lone surrogates (JSON "\\ud800"): SQLite and engines cannot take it."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


# Uids of new users: see normalise_uid. Older uids in the database keep working as stored.
UID_MAX_LENGTH: Final = 64
UID_PUNCTUATION: Final = frozenset("._@-")
UID_RULE: Final = ("Must be 1 to 64 characters (after NFKC normalisation): letters of one "
                   "script, digits 0-9 and '._@-' only, not '.' or '..'.")
# Scripts that may share a uid with Latin letters (Unicode TS 39, 'highly restrictive').
_SCRIPT_SETS: Final = (frozenset({"LATIN", "HAN", "HIRAGANA", "KATAKANA"}),
                       frozenset({"LATIN", "HAN", "BOPOMOFO"}),
                       frozenset({"LATIN", "HAN", "HANGUL"}))
# Character-name prefixes that do not name their script.
_SCRIPT_ALIASES: Final = {"CJK": "HAN", "IDEOGRAPHIC": "HAN", "KATAKANA-HIRAGANA": "KATAKANA"}


def _script(char: str) -> str | None:
    """The script of a letter, from the first word of its Unicode name (None: no name)."""
    name = unicodedata.name(char, "")
    if not name:
        return None
    first = name.split(" ", 1)[0]
    return _SCRIPT_ALIASES.get(first, first)


def normalise_uid(raw: str) -> str | None:
    """The uid a new user gets for raw (its NFKC form), or None when that breaks UID_RULE.

    NFKC folds compatibility look-alikes (full-width 'ａｄｍｉｎ' is 'admin', so it collides
    with an existing 'admin') and composes accents ('n' + U+0300 is one letter 'ǹ'); marks
    that compose with nothing are refused, as are invisible and format characters, digits
    other than 0-9, and letters from two scripts ('аdmin' with a Cyrillic 'а'), except Latin
    with Han and kana, Bopomofo or Hangul. Modifier letters count only in Han and kana.
    """
    if len(raw) > MAX_FIELD_LENGTH:  # bound the work before normalising
        return None
    uid = unicodedata.normalize("NFKC", raw)
    if not 0 < len(uid) <= UID_MAX_LENGTH or uid in (".", ".."):
        return None
    scripts: set[str] = set()
    for char in uid:
        if char in UID_PUNCTUATION or "0" <= char <= "9":
            continue
        category = unicodedata.category(char)
        script = _script(char)
        if not category.startswith("L") or script is None:
            return None
        if category == "Lm" and script not in ("HAN", "HIRAGANA", "KATAKANA"):
            return None  # e.g. U+02BC, which looks like an apostrophe
        scripts.add(script)
    if len(scripts) > 1 and not any(scripts <= allowed for allowed in _SCRIPT_SETS):
        return None
    return uid
