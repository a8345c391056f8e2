"""The rule for the uid of a new user: its NFKC form, letters of one script, no look-alikes."""

from __future__ import annotations

import unicodedata
from typing import Final

# Raw input longer than this is refused before normalising it: it bounds the work.
MAX_RAW_LENGTH: Final = 1024

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
    if len(raw) > MAX_RAW_LENGTH:  # bound the work before normalising
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
