"""Turn request text into synthesis chunks: sentences of bounded length, or one markup document."""

from __future__ import annotations

import dataclasses
import re
import xml.etree.ElementTree as ET
from typing import Final

# A worker gets one chunk at a time; a bound keeps the first audio quick and
# a single worker's output (and the reorder buffer) small.
MAX_CHUNK_CHARS: Final = 300

# Sentence ends: terminal punctuation (optionally followed by closing quotes or
# brackets) and then whitespace; or a blank line (paragraph break).
_SENTENCE_END: Final = re.compile(
    r"(?<=[.!?\u2026\u3002\uff01\uff1f])[\"'\u201d\u2019)\]]*\s+|\n\s*\n")
# Words that end in a full stop without ending the sentence.
_ABBREVIATIONS: Final = frozenset({
    "mr", "mrs", "ms", "dr", "prof", "st", "sr", "jr", "vs", "etc", "e.g", "i.e",
    "no", "fig", "mt", "gen", "col", "capt", "lt", "sgt", "rev", "approx", "dept",
})
_PARAGRAPH: Final = re.compile(r"\n\s*\n")
_SOFT_BREAK: Final = re.compile(r"[,;:\u2013\u2014\u3001\uff0c]\s+")
_HAS_WORD: Final = re.compile(r"\w")
# Markup starts like an XML document: a tag, a declaration or a comment.
_MARKUP_START: Final = re.compile(r"<[A-Za-z_?!]")
_FORBIDDEN_DECL: Final = re.compile(r"<!\s*(DOCTYPE|ENTITY)", re.IGNORECASE)


@dataclasses.dataclass(frozen=True)
class Chunk:
    """One unit of work for a worker: its text and whether that text is markup."""

    text: str
    markup: bool = False


def is_markup(text: str) -> bool:
    """Whether the text is meant as an XML document rather than plain text."""
    return _MARKUP_START.match(text.lstrip()) is not None


def check_markup(text: str) -> str:
    """Return the markup stripped, or raise ValueError if it is unsafe or not well-formed."""
    # Refuse declarations before any parser sees them: no entity expansion
    # (billion laughs) and no external entities, whatever the parser does.
    if _FORBIDDEN_DECL.search(text):
        raise ValueError("Markup must not contain DOCTYPE or ENTITY declarations.")
    document = text.strip()
    try:
        ET.fromstring(document)
    except ET.ParseError as exc:
        raise ValueError(f"Markup is not well-formed XML ({exc}).") from None
    return document


def _is_abbreviation(piece: str) -> bool:
    """Whether a piece ends in an abbreviation or initial rather than a sentence end."""
    words = piece.rstrip().split()
    if not words or not words[-1].endswith("."):
        return False
    last = words[-1].rstrip(".").lstrip("(\"'\u201c\u2018").lower()
    # Single letters are initials ("J. R. R. Tolkien").
    return last in _ABBREVIATIONS or (len(last) == 1 and last.isalpha())


def split_sentences(text: str) -> list[str]:
    """Split plain text into sentences, whitespace normalised, empty ones dropped."""
    sentences: list[str] = []
    pending = ""
    position = 0
    for match in _SENTENCE_END.finditer(text):
        piece = pending + text[position:match.end()]
        position = match.end()
        paragraph = _PARAGRAPH.search(match.group(0)) is not None
        if not paragraph and _is_abbreviation(piece):
            pending = piece
            continue
        pending = ""
        sentences.append(piece)
    sentences.append(pending + text[position:])
    result: list[str] = []
    for sentence in sentences:
        normal = " ".join(sentence.split())
        if not normal:
            continue
        # Stray punctuation ("...", "--") has nothing to say: keep it with the
        # sentence before so the worker is not asked for silence.
        if result and not _HAS_WORD.search(normal):
            result[-1] = f"{result[-1]} {normal}"
        else:
            result.append(normal)
    return result


def _cut(sentence: str, limit: int) -> list[str]:
    """Cut one sentence into pieces of at most limit characters, at commas, then spaces."""
    pieces: list[str] = []
    rest = sentence
    while len(rest) > limit:
        window = rest[:limit + 1]
        cut = -1
        for match in _SOFT_BREAK.finditer(window):
            # Cut after the punctuation, before the space.
            if match.start() + 1 <= limit:
                cut = match.start() + 1
        # A comma very early would leave a tiny chunk; a space later is better.
        if cut <= limit // 3:
            cut = window.rfind(" ")
        if cut <= 0:
            # One word longer than the limit: nothing better than a hard cut.
            cut = limit
        head, rest = rest[:cut].strip(), rest[cut:].strip()
        if head:
            pieces.append(head)
    if rest:
        pieces.append(rest)
    return pieces


def split_text(text: str, max_chars: int = MAX_CHUNK_CHARS) -> list[Chunk]:
    """Chunks for a request: one markup document whole, or bounded sentences; ValueError if unusable."""
    if max_chars < 1:
        raise ValueError("max_chars must be at least 1")
    if is_markup(text):
        return [Chunk(check_markup(text), markup=True)]
    chunks = [Chunk(piece) for sentence in split_sentences(text) for piece in _cut(sentence, max_chars)]
    if not chunks:
        raise ValueError("Text has nothing to say.")
    return chunks
