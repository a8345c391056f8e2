"""Timing marks of a stream: where sentences, words and SSML <mark>s fall in its audio."""

from __future__ import annotations

import dataclasses
from typing import Any

from idlakd.synth.document import Chunk, Marker, Text
from idlakd.synth.workers import ChunkEvent


@dataclasses.dataclass(frozen=True)
class Mark:
    """One timing mark; start/end are character (not byte) offsets into the request text."""

    #: Milliseconds from the start of the audio.
    time: int
    #: "sentence", "word" or "ssml".
    type: str
    start: int
    end: int
    #: The sentence or word as written, or the <mark>'s name.
    value: str

    def wire(self) -> dict[str, Any]:
        """The mark as JSON (Amazon Polly's field names)."""
        return {"time": self.time, "type": self.type, "start": self.start, "end": self.end,
                "value": self.value}


class MarkTrack:
    """Marks in time order, handed out as the audio they belong to is: take() what is due.

    The synthesis pipeline places each chunk's worker events; a door takes the
    marks after each piece of audio it sends.
    """

    def __init__(self, types: frozenset[str], text: str, time_scale: float = 1.0) -> None:
        self.types = types
        self._text = text
        #: Output time per synthesised time (a tempo filter after the engine changes it).
        self._scale = time_scale
        self._due: list[Mark] = []
        self._last_word: tuple[int, int] | None = None

    @property
    def time_scale(self) -> float:
        """Output time per synthesised time."""
        return self._scale

    def append_text(self, text: str) -> None:
        """Text said after the text so far (a live session): later offsets point into it."""
        self._text += text

    def add(self, mark: Mark) -> None:
        """A mark whose audio has been produced (kept only if its type was asked for)."""
        if mark.type in self.types:
            self._due.append(mark)

    def place(self, chunk: Chunk, event: ChunkEvent, chunk_start: int, rate: int) -> None:
        """A worker event of chunk as a mark; chunk_start is the chunk's first sample in the stream."""
        time = round((chunk_start + event.sample) * 1000 * self._scale / rate) if rate else 0
        segment = chunk.segments[event.segment]
        if event.kind == "mark" and isinstance(segment, Marker):
            self.add(Mark(time, "ssml", segment.start, segment.end, segment.name))
        elif event.kind == "text" and isinstance(segment, Text):
            source = chunk.source()
            first = next(s for s in chunk.segments if isinstance(s, Text))
            if source is not None and segment is first:
                self.add(Mark(time, "sentence", *source, self._text[source[0]:source[1]]))
        elif event.kind == "word" and isinstance(segment, Text) and segment.spans:
            index = min(segment.text.count(" ", 0, event.start), len(segment.spans) - 1)
            span = segment.spans[index]
            # Several spoken words from one written (a say-as date) make one mark.
            if span != self._last_word:
                self._last_word = span
                self.add(Mark(time, "word", *span, self._text[span[0]:span[1]]))

    def take(self) -> list[Mark]:
        """Every mark placed since the last take, in time order."""
        due, self._due = self._due, []
        return due
