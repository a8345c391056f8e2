"""The document model: request text parsed and bounded by the daemon, cut into worker chunks.

No engine ever sees request text as it came: plain text is normalised (NFC,
control characters removed) and markup (SSML, or Idlak's XML) is parsed here
with an allowlist of elements and attributes into text runs, breaks and marks;
``say-as`` is turned into words here (idlakd.synth.sayas), so every engine says
the same. A worker gets segments (``{"text", "prosody"?}``, ``{"break_ms"}``,
``{"mark"}``) and each engine renders only those (see ``idlakd.worker.engines``).
Every word keeps the character offsets of what it came from in the request
text, so timing marks can point into it.
"""

from __future__ import annotations

import bisect
import dataclasses
import math
import re
import unicodedata
from typing import Any, Callable, Final
from xml.parsers import expat

from idlakd.synth.options import PITCH_RANGE, SPEED_RANGE, VOLUME_RANGE
from idlakd.synth.sayas import SayAsError, say_as
from idlakd.synth.text import MAX_CHUNK_CHARS, cut_sentence, sentence_spans

#: One break may last at most this long, whatever the markup asks.
MAX_BREAK_SECONDS: Final = 10.0
#: Markup nesting bound (a deep document costs the parser, never the engine).
MAX_DEPTH: Final = 32
#: Characters per second of the fastest plausible speech: the audio estimate
#: used to refuse a request (413) errs on the short side, so no honest text is refused.
FAST_CHARS_PER_SECOND: Final = 25.0
#: Characters per second of slow speech: the allowance for breaks errs on the long side.
SLOW_CHARS_PER_SECOND: Final = 10.0

SSML_NAMESPACE: Final = "http://www.w3.org/2001/10/synthesis"
XML_NAMESPACE: Final = "http://www.w3.org/XML/1998/namespace"

# Markup starts like an XML document: a tag, a declaration or a comment.
_MARKUP_START: Final = re.compile(r"<[A-Za-z_?!]")
# Removed from every text: C0 and C1 control characters except tab, newline and
# carriage return (whitespace). eSpeak reads U+0001 as "embedded command follows".
_CONTROL: Final = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
_KEPT: Final = re.compile(r"[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]+")
_WORD: Final = re.compile(r"\S+")
_TIME: Final = re.compile(r"^\s*(\d+(?:\.\d+)?|\.\d+)\s*(ms|s)?\s*$")
# SSML's break strengths as pauses (seconds).
_STRENGTHS: Final = {"none": 0.0, "x-weak": 0.1, "weak": 0.25, "medium": 0.4,
                     "strong": 0.75, "x-strong": 1.2}
_MAX_ATTRIBUTE_CHARS: Final = 64
TEXT_TYPE_ERROR: Final = "text_type 'ssml' needs markup: the text must start with <speak>."


class DocumentError(ValueError):
    """The request text cannot be spoken as given; the message says why (and where)."""


@dataclasses.dataclass(frozen=True)
class Prosody:
    """How a stretch of text is said relative to the voice: rate factor, semitones, decibels."""

    rate: float = 1.0
    pitch: float = 0.0
    volume: float = 0.0

    def within(self, outer: "Prosody") -> "Prosody":
        """This prosody nested inside outer (factors multiply, shifts add), kept in bounds."""
        return Prosody(_bounded(self.rate * outer.rate, SPEED_RANGE),
                       _bounded(self.pitch + outer.pitch, PITCH_RANGE),
                       _bounded(self.volume + outer.volume, VOLUME_RANGE))

    def wire(self) -> dict[str, float]:
        """The prosody as the worker protocol carries it."""
        return {"rate": round(self.rate, 4), "pitch": round(self.pitch, 3),
                "volume": round(self.volume, 3)}


NEUTRAL: Final = Prosody()


def _bounded(value: float, bounds: tuple[float, float]) -> float:
    """value clamped into bounds."""
    return min(max(value, bounds[0]), bounds[1])


@dataclasses.dataclass(frozen=True)
class Text:
    """Words to speak, already normalised: no control characters, no markup."""

    text: str
    #: How to say them; None: as the voice does.
    prosody: Prosody | None = None
    #: Per word of text: (start, end) character offsets of its source in the request text.
    spans: tuple[tuple[int, int], ...] = dataclasses.field(default=(), compare=False)

    def shifted(self, offset: int) -> "Text":
        """The segment with its source offsets moved by offset."""
        return dataclasses.replace(
            self, spans=tuple((start + offset, end + offset) for start, end in self.spans))

    def wire(self) -> dict[str, Any]:
        """The segment as the worker protocol carries it."""
        if self.prosody is None:
            return {"text": self.text}
        return {"text": self.text, "prosody": self.prosody.wire()}


@dataclasses.dataclass(frozen=True)
class Break:
    """Silence of a bounded length."""

    ms: int

    def shifted(self, _offset: int) -> "Break":
        """A break points at no text: itself."""
        return self

    def wire(self) -> dict[str, Any]:
        """The segment as the worker protocol carries it."""
        return {"break_ms": self.ms}


@dataclasses.dataclass(frozen=True)
class Marker:
    """An SSML <mark>: a named point in the audio (the worker reports where it falls)."""

    name: str
    #: Character offsets of the <mark> element in the request text.
    start: int = dataclasses.field(default=0, compare=False)
    end: int = dataclasses.field(default=0, compare=False)

    def shifted(self, offset: int) -> "Marker":
        """The mark with its source offsets moved by offset."""
        return dataclasses.replace(self, start=self.start + offset, end=self.end + offset)

    def wire(self) -> dict[str, Any]:
        """The segment as the worker protocol carries it."""
        return {"mark": self.name}


Segment = Text | Break | Marker


@dataclasses.dataclass(frozen=True)
class Chunk:
    """One unit of work for a worker: a sentence (or part of one) and the breaks and marks around it."""

    segments: tuple[Segment, ...]

    @property
    def text(self) -> str:
        """The words of the chunk (for logs and estimates)."""
        return " ".join(s.text for s in self.segments if isinstance(s, Text))

    def source(self) -> tuple[int, int] | None:
        """(start, end) offsets of the chunk's words in the request text; None if unknown."""
        spans = [span for s in self.segments if isinstance(s, Text) for span in s.spans]
        if not spans:
            return None
        return min(span[0] for span in spans), max(span[1] for span in spans)

    def wire(self) -> list[dict[str, Any]]:
        """The segments as the worker protocol carries them."""
        return [segment.wire() for segment in self.segments]

    def shifted(self, offset: int) -> "Chunk":
        """The chunk with its source offsets moved by offset (text said after other text)."""
        if not offset:
            return self
        return Chunk(tuple(segment.shifted(offset) for segment in self.segments))


@dataclasses.dataclass(frozen=True)
class Document:
    """A parsed request: its chunks in order, and what bounds are checked against."""

    chunks: tuple[Chunk, ...]
    characters: int
    break_seconds: float

    def min_audio_seconds(self) -> float:
        """A lower estimate of the audio this document makes (fast speech plus its breaks)."""
        return self.characters / FAST_CHARS_PER_SECOND + self.break_seconds


@dataclasses.dataclass
class _Run:
    """Text to speak with one prosody, and each character's source offsets in the request text."""

    text: str
    starts: list[int]
    ends: list[int]
    prosody: Prosody | None = None


def is_markup(text: str) -> bool:
    """Whether the text is meant as an XML document rather than plain text (a BOM may lead)."""
    return _MARKUP_START.match(_leading_stripped(text)) is not None


def _leading_stripped(text: str) -> str:
    """text without the whitespace and byte-order marks before it."""
    return text.lstrip().lstrip("\ufeff").lstrip()


def clean(text: str) -> str:
    """NFC-normalised text with control characters (other than tab, CR, LF) removed."""
    return _CONTROL.sub("", unicodedata.normalize("NFC", text))


def _clean_run(run: _Run) -> _Run:
    """The run cleaned like clean(), each character keeping (roughly) its source offsets."""
    text = run.text
    if _CONTROL.search(text) is None and unicodedata.is_normalized("NFC", text):
        return run
    pieces: list[str] = []
    starts: list[int] = []
    ends: list[int] = []
    for match in _KEPT.finditer(text):
        begin, end = match.span()
        pieces.append(match.group())
        starts.extend(run.starts[begin:end])
        ends.extend(run.ends[begin:end])
    text = "".join(pieces)
    if unicodedata.is_normalized("NFC", text):
        return _Run(text, starts, ends, run.prosody)
    # Normalised word by word: a composed character points at its whole source word.
    out: list[str] = []
    out_starts: list[int] = []
    out_ends: list[int] = []
    position = 0
    for match in _WORD.finditer(text):
        begin, end = match.span()
        out.append(text[position:begin])
        out_starts.extend(starts[position:begin])
        out_ends.extend(ends[position:begin])
        word = unicodedata.normalize("NFC", match.group())
        out.append(word)
        out_starts.extend([starts[begin]] * len(word))
        out_ends.extend([ends[end - 1]] * len(word))
        position = end
    out.append(text[position:])
    out_starts.extend(starts[position:])
    out_ends.extend(ends[position:])
    return _Run("".join(out), out_starts, out_ends, run.prosody)


def _plain_run(text: str) -> _Run:
    """Plain request text as a run: every character is its own source."""
    return _Run(text, list(range(len(text))), list(range(1, len(text) + 1)))


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
        items = _parse_markup(text, prosody or NEUTRAL, lang)
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


#: Between two items of the markup, a sentence ends whatever the punctuation (a block's edge).
_BOUNDARY: Final = object()
_Item = Any  # _Run | Break | Marker | _BOUNDARY


def _groups(items: list[_Item]) -> list[list[_Item]]:
    """The items cut at block edges: each group's text is split into sentences as one text."""
    groups: list[list[_Item]] = [[]]
    for item in items:
        if item is _BOUNDARY:
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


def _words(group: list[_Item]) -> tuple[list[_Word], list[Break | Marker]]:
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
        run = _clean_run(item)
        prosodies.append((length, run.prosody))
        pieces.append(run.text)
        starts += run.starts
        ends += run.ends
        length += len(run.text)
    text = "".join(pieces)
    words: list[_Word] = []
    run_index = 0
    for begin, end in sentence_spans(text):
        for match in _WORD.finditer(text, begin, end):
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


# -- markup -------------------------------------------------------------------

#: Allowed elements and, for each, its allowed attributes. SSML's structure and
#: Idlak's (doc, parl, spurt) are containers; lang sets the language say-as uses.
_ELEMENTS: Final[dict[str, frozenset[str]]] = {
    "speak": frozenset({"version", "xml:lang", "lang"}),
    "doc": frozenset(),
    "parl": frozenset({"no", "id"}),
    "spurt": frozenset({"no", "id"}),
    "p": frozenset({"xml:lang"}),
    "s": frozenset({"xml:lang"}),
    "break": frozenset({"time", "strength", "type"}),
    "prosody": frozenset({"rate", "pitch", "volume", "range", "contour", "duration"}),
    "emphasis": frozenset({"level"}),
    "say-as": frozenset({"interpret-as", "format", "detail"}),
    "sub": frozenset({"alias"}),
    "lang": frozenset({"xml:lang"}),
    "mark": frozenset({"name"}),
}
# Elements whose end closes a sentence.
_BLOCKS: Final = frozenset({"speak", "doc", "parl", "spurt", "p", "s"})
# Elements whose text is said differently: their start and end end the current run.
_VOICED: Final = frozenset({"prosody", "emphasis"})
_RATES: Final = {"x-slow": 0.5, "slow": 0.75, "medium": 1.0, "default": 1.0, "fast": 1.3,
                 "x-fast": 1.7}
_PITCHES: Final = {"x-low": -6.0, "low": -3.0, "medium": 0.0, "default": 0.0, "high": 3.0,
                   "x-high": 6.0}
# "silent" is the quietest idlakd makes, not silence.
_VOLUMES: Final = {"silent": VOLUME_RANGE[0], "x-soft": -12.0, "soft": -6.0, "medium": 0.0,
                   "default": 0.0, "loud": 6.0, "x-loud": 10.0}
_EMPHASIS: Final = {"strong": Prosody(0.9, 1.0, 4.0), "moderate": Prosody(0.95, 0.5, 2.0),
                    "none": NEUTRAL, "reduced": Prosody(1.05, -0.5, -3.0)}
_NUMBER: Final = re.compile(r"^\s*([+-]?(?:\d+(?:\.\d+)?|\.\d+))\s*(%|st|dB|db|Hz|hz)?\s*$")


@dataclasses.dataclass(frozen=True)
class _Frame:
    """An open element: its name, and the prosody and language in force inside it."""

    name: str
    prosody: Prosody
    lang: str


class _SourceIndex:
    """Character offsets in the request text of the byte offsets expat reports."""

    def __init__(self, text: str, lead: int, encoded: bytes) -> None:
        self._lead = lead
        self._starts: list[int] | None = None
        if len(encoded) != len(text):  # not ASCII: bytes and characters differ
            offsets = [0]
            for char in text:
                offsets.append(offsets[-1] + len(char.encode("utf-8", "surrogatepass")))
            self._starts = offsets

    def char(self, byte: int) -> int:
        """The request-text character offset of a byte offset into the parsed markup."""
        if self._starts is None:
            return self._lead + byte
        return self._lead + bisect.bisect_right(self._starts, byte) - 1


class _MarkupReader:
    """Expat handlers that turn allowed markup into runs, breaks and marks, refusing the rest."""

    def __init__(self, parser: Any, source: str, index: _SourceIndex, prosody: Prosody,
                 lang: str) -> None:
        self._parser = parser
        self._source = source
        self._index = index
        self._base = _Frame("", prosody, lang)
        self.items: list[_Item] = []
        self._text: list[str] = []
        self._starts: list[int] = []
        self._ends: list[int] = []
        self._stack: list[_Frame] = []
        self._alias_depth: int | None = None
        self._say_as: tuple[dict[str, str], list[str], list[int]] | None = None

    def _where(self) -> str:
        """The parser's position, for error messages."""
        return f"line {self._parser.CurrentLineNumber}"

    def _position(self) -> int:
        """The request-text character offset where the current event starts."""
        return self._index.char(self._parser.CurrentByteIndex)

    def _tag_end(self, start: int) -> int:
        """The offset just after the tag that starts at start."""
        end = self._source.find(">", start)
        return len(self._source) if end < 0 else end + 1

    @property
    def _top(self) -> _Frame:
        """The innermost open element (the document's defaults outside any)."""
        return self._stack[-1] if self._stack else self._base

    def _add(self, text: str, start: int, end: int | None = None) -> None:
        """Text for the current run: each character from start on, or all of it from start..end."""
        self._text.append(text)
        if end is None:
            self._starts.extend(range(start, start + len(text)))
            self._ends.extend(range(start + 1, start + len(text) + 1))
        else:
            self._starts.extend([start] * len(text))
            self._ends.extend([end] * len(text))

    def _flush(self) -> None:
        """End the current text run (at a block's edge, a break, a mark or a change of prosody)."""
        text = "".join(self._text)
        # Whitespace alone is kept: it separates the words of the runs around it.
        if text:
            prosody = self._top.prosody
            self.items.append(_Run(text, self._starts, self._ends,
                                   None if prosody == NEUTRAL else prosody))
        self._text, self._starts, self._ends = [], [], []

    def start(self, tag: str, attributes: dict[str, str]) -> None:
        """An element opens: check it and its attributes against the allowlist."""
        name = _local_name(tag, self._where)
        if name not in _ELEMENTS:
            raise DocumentError(f"<{name}> is not allowed in markup ({self._where()}).")
        if len(self._stack) >= MAX_DEPTH:
            raise DocumentError(f"<{name}>: markup nested deeper than {MAX_DEPTH} ({self._where()}).")
        if self._say_as is not None:
            raise DocumentError(f"<say-as> must contain text only, not <{name}> ({self._where()}).")
        values = self._attributes(name, attributes)
        top = self._top
        prosody = top.prosody
        if name in _BLOCKS or name in _VOICED or name in ("break", "mark"):
            self._flush()
        if name in _BLOCKS:
            self.items.append(_BOUNDARY)
        if name == "prosody":
            prosody = self._prosody(values).within(prosody)
        elif name == "emphasis":
            level = values.get("level", "moderate")
            if level not in _EMPHASIS:
                raise DocumentError(f"<emphasis>: level {level!r} is not one of "
                                    f"{', '.join(_EMPHASIS)} ({self._where()}).")
            prosody = _EMPHASIS[level].within(prosody)
        elif name == "break":
            self.items.append(Break(round(_break_seconds(values, self._where) * 1000)))
        elif name == "mark":
            if not values.get("name", "").strip():
                raise DocumentError(f"<mark> needs a name ({self._where()}).")
            start = self._position()
            self.items.append(Marker(values["name"], start, self._tag_end(start)))
        elif name == "say-as":
            if "interpret-as" not in values:
                raise DocumentError(f"<say-as> needs interpret-as ({self._where()}).")
            self._say_as = (values, [], [])
        elif name == "sub" and self._alias_depth is None:
            # The alias is spoken instead of the element's content.
            start = self._position()
            self._add(f" {clean(values.get('alias', ''))} ", start, self._tag_end(start))
            self._alias_depth = len(self._stack) + 1
        lang = values.get("xml:lang", top.lang)
        self._stack.append(_Frame(name, prosody, lang))

    def _attributes(self, name: str, attributes: dict[str, str]) -> dict[str, str]:
        """The element's attributes by name, each allowed and bounded."""
        allowed = _ELEMENTS[name]
        values: dict[str, str] = {}
        for raw, value in attributes.items():
            attribute = _attribute_name(raw)
            if attribute not in allowed:
                raise DocumentError(f"<{name}>: attribute '{attribute}' is not allowed "
                                    f"({self._where()}).")
            if len(value) > _MAX_ATTRIBUTE_CHARS:
                raise DocumentError(f"<{name}>: attribute '{attribute}' is longer than "
                                    f"{_MAX_ATTRIBUTE_CHARS} characters ({self._where()}).")
            values[attribute] = value
        return values

    def _prosody(self, values: dict[str, str]) -> Prosody:
        """A <prosody>'s rate, pitch and volume (range, contour and duration are accepted, unused)."""
        rate, pitch, volume = 1.0, 0.0, 0.0
        if "rate" in values:
            rate = self._measure("rate", values["rate"], _RATES, ("%", None))
            if values["rate"].strip().endswith("%"):
                rate /= 100
            if not SPEED_RANGE[0] <= rate <= SPEED_RANGE[1]:
                raise DocumentError(f"<prosody>: rate {values['rate']!r} is outside "
                                    f"{SPEED_RANGE[0]:g}-{SPEED_RANGE[1]:g} times the voice's "
                                    f"({self._where()}).")
        if "pitch" in values:
            pitch = self._measure("pitch", values["pitch"], _PITCHES, ("st", "%"))
            if "%" in values["pitch"]:
                if pitch <= -100:
                    raise DocumentError(f"<prosody>: pitch {values['pitch']!r} is not a pitch "
                                        f"({self._where()}).")
                pitch = 12 * math.log2(1 + pitch / 100)
            pitch = _checked(pitch, PITCH_RANGE, "pitch", values["pitch"], self._where)
        if "volume" in values:
            volume = self._measure("volume", values["volume"], _VOLUMES, ("dB", "db"))
            volume = _checked(volume, VOLUME_RANGE, "volume", values["volume"], self._where)
        return Prosody(rate, pitch, volume)

    def _measure(self, attribute: str, value: str, words: dict[str, float],
                 units: tuple[str | None, ...]) -> float:
        """A prosody attribute's value: a word from words, or a number with one of units."""
        if value.strip() in words:
            return words[value.strip()]
        match = _NUMBER.match(value)
        unit = match.group(2) if match else None
        if match is None or unit not in units:
            shown = ", ".join(f"'{u}'" for u in units if u) or "no unit"
            raise DocumentError(f"<prosody>: {attribute} {value!r} is not one of "
                                f"{', '.join(words)} or a number with {shown} "
                                f"({self._where()}).")
        return float(match.group(1))

    def end(self, tag: str) -> None:
        """An element closes."""
        name = self._stack[-1].name
        if name == "say-as":
            self._speak_as()
        if name in _BLOCKS or name in _VOICED:
            self._flush()
        if name in _BLOCKS:
            self.items.append(_BOUNDARY)
        self._stack.pop()
        if self._alias_depth is not None and len(self._stack) < self._alias_depth:
            self._alias_depth = None

    def _speak_as(self) -> None:
        """A <say-as> ends: its text, normalised to words, joins the run (pointing at its source)."""
        assert self._say_as is not None
        values, pieces, starts = self._say_as
        self._say_as = None
        if self._alias_depth is not None:
            return
        content = clean("".join(pieces))
        if not content.strip():
            return
        try:
            words = say_as(values["interpret-as"], content.strip(), self._top.lang,
                           values.get("format"), values.get("detail"))
        except SayAsError as exc:
            raise DocumentError(f"<say-as>: {exc} ({self._where()}).") from None
        self._add(f" {clean(words)} ", min(starts), self._position())

    def data(self, text: str) -> None:
        """Character data: part of the current run (unless inside a <sub> with an alias)."""
        if self._alias_depth is not None:
            return
        if self._say_as is not None:
            self._say_as[1].append(text)
            self._say_as[2].append(self._position())
            return
        self._add(text, self._position())

    def flush_rest(self) -> None:
        """The document ended: text outside any block (Idlak's loose XML) is a run too."""
        self._flush()

    @staticmethod
    def refuse_doctype(*_args: Any) -> None:
        """No DTD: no entity expansion and no external references, whatever follows."""
        raise DocumentError("Markup must not contain DOCTYPE or ENTITY declarations.")


def _checked(value: float, bounds: tuple[float, float], attribute: str, raw: str,
             where: Callable[[], str]) -> float:
    """value if inside bounds, else a DocumentError naming the attribute."""
    if not bounds[0] <= value <= bounds[1]:
        raise DocumentError(f"<prosody>: {attribute} {raw!r} is outside {bounds[0]:g} to "
                            f"{bounds[1]:+g} ({where()}).")
    return value


def _local_name(tag: str, where: Callable[[], str]) -> str:
    """An element's name without the SSML namespace; other namespaces are refused."""
    namespace, _, name = tag.rpartition(" ")
    if namespace and namespace != SSML_NAMESPACE:
        raise DocumentError(f"<{name}>: namespace {namespace[:_MAX_ATTRIBUTE_CHARS]!r} is not "
                            f"allowed ({where()}).")
    return name


def _attribute_name(raw: str) -> str:
    """An attribute's name with the XML namespace written as 'xml:' (so xml:base is named)."""
    namespace, _, name = raw.rpartition(" ")
    if namespace == XML_NAMESPACE:
        return f"xml:{name}"
    if namespace:
        return f"{namespace[:_MAX_ATTRIBUTE_CHARS]}:{name}"
    return name


def _break_seconds(values: dict[str, str], where: Callable[[], str]) -> float:
    """A break's length: its time ('500ms', '2s', or seconds as Idlak writes them) or strength."""
    if "time" in values:
        match = _TIME.match(values["time"])
        if match is None:
            raise DocumentError(f"<break>: time {values['time']!r} is not a duration such as "
                                f"'500ms' or '2s' ({where()}).")
        seconds = float(match.group(1)) / (1000 if match.group(2) == "ms" else 1)
        if seconds > MAX_BREAK_SECONDS:
            raise DocumentError(f"<break>: time {values['time']!r} is longer than "
                                f"{MAX_BREAK_SECONDS:g} s ({where()}).")
        return seconds
    strength = values.get("strength", "medium")
    if strength not in _STRENGTHS:
        raise DocumentError(f"<break>: strength {strength!r} is not one of "
                            f"{', '.join(_STRENGTHS)} ({where()}).")
    return _STRENGTHS[strength]


def _parse_markup(text: str, prosody: Prosody, lang: str) -> list[_Item]:
    """Parse an XML document with the allowlist into runs, breaks and marks."""
    parser = expat.ParserCreate("utf-8", namespace_separator=" ")
    stripped = _leading_stripped(text).rstrip()
    encoded = stripped.encode("utf-8", "surrogatepass")
    index = _SourceIndex(stripped, len(text) - len(_leading_stripped(text)), encoded)
    reader = _MarkupReader(parser, text, index, prosody, lang)
    parser.StartElementHandler = reader.start
    parser.EndElementHandler = reader.end
    parser.CharacterDataHandler = reader.data
    parser.StartDoctypeDeclHandler = reader.refuse_doctype
    parser.EntityDeclHandler = reader.refuse_doctype
    # Never fetch or read anything: external entities and parameter entities are refused.
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
    parser.ExternalEntityRefHandler = lambda *_args: 0
    try:
        parser.Parse(encoded, True)
    except expat.ExpatError as exc:
        raise DocumentError(f"Markup is not well-formed XML ({expat.ErrorString(exc.code)}, "
                            f"line {exc.lineno}).") from None
    except RecursionError:
        raise DocumentError("Markup is nested too deeply.") from None
    reader.flush_rest()
    return reader.items
