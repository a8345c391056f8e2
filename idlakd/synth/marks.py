"""Timing marks of a stream: where sentences, words and SSML <mark>s fall in its audio."""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Final

from idlakd.synth.document import Chunk, Marker, Text
from idlakd.synth.workers import ChunkEvent

_WORD: Final = re.compile(r"\S+")


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
        # The text segment word events are counted in, the next word not marked, word ends.
        self._segment: Text | None = None
        self._next = 0
        self._ends: list[int] = []

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
            for span in self._words_reached(segment, event.start):
                # Several spoken words from one written (a say-as date) make one mark.
                if span != self._last_word:
                    self._last_word = span
                    self.add(Mark(time, "word", *span, self._text[span[0]:span[1]]))

    def _words_reached(self, segment: Text, start: int) -> list[tuple[int, int]]:
        """Source spans of the segment's words up to the one an engine's word event names.

        Engines are loose about where a word starts (eSpeak may point at the space before
        it, or fold "a" into the next word): the event names the first word not marked yet
        that ends after its position, and words it skipped are marked with it.
        """
        if self._segment is not segment:
            self._segment = segment
            self._next = 0
            self._ends = [match.end() for match in _WORD.finditer(segment.text)]
        ends = self._ends[:len(segment.spans)]
        index = self._next
        while index < len(ends) - 1 and ends[index] <= start:
            index += 1
        if index >= len(ends) or index < self._next:
            return []
        reached = list(segment.spans[self._next:index + 1])
        self._next = index + 1
        return reached

    def take(self) -> list[Mark]:
        """Every mark placed since the last take, in time order."""
        due, self._due = self._due, []
        return due
