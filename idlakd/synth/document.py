"""The document model: request text parsed and bounded by the daemon, cut into worker chunks.

No engine ever sees request text as it came: plain text is normalised (NFC,
control characters removed) and markup (SSML, or Idlak's XML) is read by
idlakd.synth.markup into runs, breaks and marks; here the text is cut into
sentences and chunks of segments (idlakd.synth.segments), each word keeping the
character offsets of its source, and the whole is bounded.
"""

from __future__ import annotations

import dataclasses
from typing import Final

from idlakd.synth.markup import MAX_BREAK_SECONDS, is_markup, parse_markup
from idlakd.synth.segments import (BOUNDARY, NEUTRAL, WORD, Break, Chunk, Document,
                                   DocumentError, Item, Marker, Prosody, Run, Segment, Text,
                                   clean, clean_run)
from idlakd.synth.text import MAX_CHUNK_CHARS, cut_sentence, sentence_spans

__all__ = ["MAX_BREAK_SECONDS", "Break", "Chunk", "Document", "DocumentError", "Marker",
           "Prosody", "Segment", "Text", "clean", "is_markup", "parse"]

#: Characters per second of slow speech: the allowance for breaks errs on the long side.
SLOW_CHARS_PER_SECOND: Final = 10.0
TEXT_TYPE_ERROR: Final = "text_type 'ssml' needs markup: the text must start with <speak>."


def _plain_run(text: str) -> Run:
    """Plain request text as a run: every character is its own source."""
    return Run(text, list(range(len(text))), list(range(1, len(text) + 1)))


def parse(text: str, max_break_share: float = 0.5,
          max_chunk_chars: int = MAX_CHUNK_CHARS, text_type: str = "auto",
          prosody: Prosody | None = None, lang: str = "en") -> Document:
    """The document for a request's text: markup parsed, plain text cleaned; DocumentError if unusable.

    text_type "auto" reads markup when the text starts like an XML document,
    "text" never does, "ssml" always does. prosody applies to the whole text
    (markup nests inside it); lang is the voice's language (for say-as).
    """
    markup = is_markup(text) if text_type == "auto" else text_type == "ssml"
    if text_type == "ssml" and not is_markup(text):
        raise DocumentError(TEXT_TYPE_ERROR)
    if markup:
        items = parse_markup(text, prosody or NEUTRAL, lang)
    else:
        run = _plain_run(text)
        run.prosody = prosody
        items = [run]
    chunks: list[Chunk] = []
    pending: list[Segment] = []  # breaks and marks before the first words
    characters = 0
    breaks = sum(item.ms for item in items if isinstance(item, Break)) / 1000
    for group in _groups(items):
        words, tail = _words(group)
        for piece in _pieces(words, max_chunk_chars):
            characters += len(" ".join(s.text for s in piece if isinstance(s, Text)))
            chunks.append(Chunk((*pending, *piece)))
            pending = []
        if chunks:
            chunks[-1] = Chunk((*chunks[-1].segments, *tail))
        else:
            pending += tail
    if not chunks:
        raise DocumentError("Text has nothing to say.")
    _check_breaks(breaks, characters, max_break_share)
    return Document(tuple(chunks), characters, breaks)


def _groups(items: list[Item]) -> list[list[Item]]:
    """The items cut at block edges: each group's text is split into sentences as one text."""
    groups: list[list[Item]] = [[]]
    for item in items:
        if item is BOUNDARY:
            groups.append([])
        else:
            groups[-1].append(item)
    return [group for group in groups if group]


@dataclasses.dataclass
class _Word:
    """A word of a group: its text, source span, prosody, and the breaks and marks just before it."""

    text: str
    start: int
    end: int
    prosody: Prosody | None
    #: Where it starts in its group's text (where breaks and marks are placed).
    position: int
    before: list[Break | Marker] = dataclasses.field(default_factory=list)
    #: Whether it ends a sentence of its group.
    last: bool = False


def _words(group: list[Item]) -> tuple[list[_Word], list[Break | Marker]]:
    """A group's words in order (sentence ends marked), and the breaks and marks after the last."""
    pieces: list[str] = []
    starts: list[int] = []
    ends: list[int] = []
    prosodies: list[tuple[int, Prosody | None]] = []  # (first character, prosody) per run
    anchors: list[tuple[int, Break | Marker]] = []
    length = 0
    for item in group:
        if isinstance(item, (Break, Marker)):
            if pieces and not pieces[-1][-1:].isspace():
                # A break or a mark between two letters separates two words.
                pieces.append(" ")
                starts.append(ends[-1])
                ends.append(ends[-1])
                length += 1
            anchors.append((length, item))
            continue
        run = clean_run(item)
        prosodies.append((length, run.prosody))
        pieces.append(run.text)
        starts += run.starts
        ends += run.ends
        length += len(run.text)
    text = "".join(pieces)
    words: list[_Word] = []
    run_index = 0
    for begin, end in sentence_spans(text):
        for match in WORD.finditer(text, begin, end):
            while run_index + 1 < len(prosodies) and prosodies[run_index + 1][0] <= match.start():
                run_index += 1
            words.append(_Word(match.group(), min(starts[match.start():match.end()]),
                               max(ends[match.start():match.end()]),
                               prosodies[run_index][1], match.start()))
        if words:
            words[-1].last = True
    tail: list[Break | Marker] = []
    index = 0
    for position, anchor in anchors:
        while index < len(words) and words[index].position < position:
            index += 1
        (words[index].before if index < len(words) else tail).append(anchor)
    return words, tail


def _pieces(words: list[_Word], limit: int) -> list[list[Segment]]:
    """Words cut into sentences and pieces of at most limit characters, as segments.

    Inside a piece, a change of prosody starts a new text segment, and breaks
    and marks stand where they were written; each word keeps its source span.
    """
    pieces: list[list[Segment]] = []
    first = 0
    for last in (i for i, word in enumerate(words) if word.last):
        sentence = words[first:last + 1]
        first = last + 1
        cursor = 0  # the word the next token starts in
        used = 0  # characters of that word already in earlier tokens (a hard cut)
        for piece in cut_sentence(" ".join(word.text for word in sentence), limit):
            segments: list[Segment] = []
            tokens: list[str] = []
            spans: list[tuple[int, int]] = []
            prosody: Prosody | None = None

            def flush() -> None:
                if tokens:
                    segments.append(Text(" ".join(tokens), prosody, tuple(spans)))
                tokens.clear()
                spans.clear()

            for token in piece.split():
                word = sentence[cursor]
                if used == 0 and word.before:
                    flush()
                    segments += word.before
                if tokens and word.prosody != prosody:
                    flush()
                prosody = word.prosody
                tokens.append(token)
                if word.end - word.start == len(word.text):
                    # Written as said: a piece of a hard-cut word points at its own characters.
                    spans.append((word.start + used, word.start + used + len(token)))
                else:
                    spans.append((word.start, word.end))
                used += len(token)
                if used >= len(word.text):
                    cursor, used = cursor + 1, 0
            flush()
            pieces.append(segments)
    return pieces

def _check_breaks(breaks: float, characters: int, share: float) -> None:
    """Refuse breaks that take more than their share of the request's audio (one long break is fine)."""
    speech = characters / SLOW_CHARS_PER_SECOND
    # breaks <= share of (speech + breaks), plus one full break for a short text.
    allowed = MAX_BREAK_SECONDS + (share / (1 - share) * speech if share < 1 else float("inf"))
    if breaks > allowed:
        raise DocumentError(f"<break>: the breaks add up to {breaks:g} s, more than the "
                            f"{allowed:.0f} s allowed for this much text.")
