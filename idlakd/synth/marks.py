"""Timing marks of a stream: where sentences, words and SSML <mark>s fall in its audio."""

from __future__ import annotations

import dataclasses
from typing import Any


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
    """Marks in time order, handed out as the audio they belong to is: take() what is due."""

    def __init__(self, types: frozenset[str]) -> None:
        self.types = types
        self._due: list[Mark] = []

    def add(self, mark: Mark) -> None:
        """A mark whose audio has been produced (kept only if its type was asked for)."""
        if mark.type in self.types:
            self._due.append(mark)

    def take(self) -> list[Mark]:
        """Every mark added since the last take, in time order."""
        due, self._due = self._due, []
        return due
