"""TextBuffer: text written a few characters at a time, handed out as soon as a sentence is complete."""

from __future__ import annotations

import re
from typing import Final

from idlakd.synth.text import MAX_CHUNK_CHARS, sentence_spans

_HAS_WORD: Final = re.compile(r"\w")
# Stands for "more text follows": a sentence end is only an end when something comes after.
_MORE: Final = "X"


class TextBuffer:
    """Text not yet said: complete sentences are ready at once, a long run without an end is cut.

    What is handed out, joined, is exactly the text added (offsets of marks stay
    the writer's); a piece without a word stays to lead the next one, since it
    has nothing to say.
    """

    def __init__(self, cut_chars: int = MAX_CHUNK_CHARS) -> None:
        self._text = ""
        self._cut = cut_chars

    def __len__(self) -> int:
        """Characters waiting."""
        return len(self._text)

    def add(self, text: str) -> None:
        """Text written after the text so far."""
        self._text += text

    def ready(self) -> str:
        """The complete sentences waiting (or a long run's first part, cut at a space); '' if none."""
        # The buffer is short (every complete sentence leaves at once), so this stays cheap.
        spans = sentence_spans(self._text + _MORE)
        end = spans[-1][0] if len(spans) > 1 else 0
        while len(self._text) - end > self._cut:
            space = self._text.rfind(" ", end, end + self._cut)
            end = space + 1 if space > end else end + self._cut
        return self._take(end)

    def rest(self) -> str:
        """Everything waiting that has a word to say ('' if none: a wordless rest stays)."""
        return self._take(len(self._text))

    def clear(self) -> None:
        """Drop everything waiting."""
        self._text = ""

    def _take(self, end: int) -> str:
        """The first end characters, taken out, if they have a word; else ''."""
        piece = self._text[:end]
        if not _HAS_WORD.search(piece):
            return ""
        self._text = self._text[end:]
        return piece
