"""Split plain text into sentences, and sentences into pieces of bounded length."""

from __future__ import annotations

import re
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


def _is_abbreviation(piece: str) -> bool:
    """Whether a piece ends in an abbreviation or initial rather than a sentence end."""
    words = piece.rstrip().rsplit(None, 1)
    if not words or not words[-1].endswith("."):
        return False
    last = words[-1].rstrip(".").lstrip("(\"'\u201c\u2018").lower()
    # Single letters are initials ("J. R. R. Tolkien").
    return last in _ABBREVIATIONS or (len(last) == 1 and last.isalpha())


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) of each sentence of plain text, blank ones dropped, stray punctuation kept with the one before."""
    bounds: list[tuple[int, int]] = []
    start = 0  # where the sentence being built began
    position = 0
    for match in _SENTENCE_END.finditer(text):
        # Only the newest piece is looked at: a run of initials ("a. a. a. ...") must not
        # make each step re-read the whole sentence so far (quadratic time).
        piece = text[position:match.end()]
        position = match.end()
        paragraph = _PARAGRAPH.search(match.group(0)) is not None
        if not paragraph and _is_abbreviation(piece):
            continue
        bounds.append((start, position))
        start = position
    bounds.append((start, len(text)))
    spans: list[tuple[int, int]] = []
    for begin, end in bounds:
        if text[begin:end].isspace() or begin == end:
            continue
        # Stray punctuation ("...", "--") has nothing to say: keep it with the
        # sentence before so the worker is not asked for silence.
        if spans and not _HAS_WORD.search(text, begin, end):
            spans[-1] = (spans[-1][0], end)
        else:
            spans.append((begin, end))
    return spans


def split_sentences(text: str) -> list[str]:
    """Split plain text into sentences, whitespace normalised, empty ones dropped."""
    return [" ".join(text[begin:end].split()) for begin, end in sentence_spans(text)]


def cut_sentence(sentence: str, limit: int) -> list[str]:
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
