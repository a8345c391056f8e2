"""The document model's parts: segments, chunks, prosody, and text runs that remember their source.

A worker gets segments (``{"text", "prosody"?}``, ``{"break_ms"}``, ``{"mark"}``)
and each engine renders only those. Every character of a run keeps the offsets
of what it came from in the request text, so timing marks can point into it.
"""

from __future__ import annotations

import dataclasses
import re
import unicodedata
from typing import Any, Final

from idlakd.synth.options import PITCH_RANGE, SPEED_RANGE, VOLUME_RANGE

#: Characters per second of the fastest plausible speech: the audio estimate
#: used to refuse a request (413) errs on the short side, so no honest text is refused.
FAST_CHARS_PER_SECOND: Final = 25.0

# Removed from every text: C0 and C1 control characters except tab, newline and
# carriage return (whitespace). eSpeak reads U+0001 as "embedded command follows".
_CONTROL: Final = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
_KEPT: Final = re.compile(r"[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]+")
WORD: Final = re.compile(r"\S+")


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
class Run:
    """Text to speak with one prosody, and each character's source offsets in the request text."""

    text: str
    starts: list[int]
    ends: list[int]
    prosody: Prosody | None = None


def clean(text: str) -> str:
    """NFC-normalised text with control characters (other than tab, CR, LF) removed."""
    return _CONTROL.sub("", unicodedata.normalize("NFC", text))


def clean_run(run: Run) -> Run:
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
        return Run(text, starts, ends, run.prosody)
    # Normalised word by word: a composed character points at its whole source word.
    out: list[str] = []
    out_starts: list[int] = []
    out_ends: list[int] = []
    position = 0
    for match in WORD.finditer(text):
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
    return Run("".join(out), out_starts, out_ends, run.prosody)


#: Between two items of the markup, a sentence ends whatever the punctuation (a block's edge).
BOUNDARY: Final = object()
#: An item of markup read: a Run, a Break, a Marker, or BOUNDARY.
Item = Any
