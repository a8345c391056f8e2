"""WebVTT captions from a stream's timing marks: cues of at most two short lines, cut at sentences."""

from __future__ import annotations

import html
import re
from typing import Final, Sequence

from idlakd.synth.marks import Mark

#: Characters per caption line and lines per cue (the usual broadcast limits).
LINE_CHARS: Final = 42
CUE_LINES: Final = 2
#: The first line of every WebVTT document; each cue block follows after an empty line.
HEADER: Final = "WEBVTT\n"
_TAG: Final = re.compile(r"<[^>]*>")


def _timestamp(ms: int) -> str:
    """WebVTT's hh:mm:ss.ttt."""
    seconds, millis = divmod(max(ms, 0), 1000)
    minutes, seconds = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours:02d}:{minutes:02d}:{seconds:02d}.{millis:03d}"


def _written(value: str) -> str:
    """A mark's text as shown: markup tags dropped, whitespace made single spaces."""
    return " ".join(_TAG.sub(" ", value).split())


def _lines(words: Sequence[str]) -> str:
    """Words wrapped into lines of at most LINE_CHARS (a longer word stands alone)."""
    lines: list[str] = []
    for word in words:
        if lines and len(lines[-1]) + 1 + len(word) <= LINE_CHARS:
            lines[-1] += f" {word}"
        else:
            lines.append(word)
    return "\n".join(html.escape(line, quote=False) for line in lines)


def _cues(marks: Sequence[Mark]) -> list[tuple[int, list[str]]]:
    """(start ms, words) per cue: words where the engine reported them, else whole sentences."""
    words = [m for m in marks if m.type == "word"]
    sentences = [m for m in marks if m.type == "sentence"]
    if not words:
        return [(m.time, _written(m.value).split()) for m in sentences if _written(m.value)]
    starts = {m.time for m in sentences}
    cues: list[tuple[int, list[str]]] = []
    size = 0
    for mark in words:
        text = _written(mark.value)
        if not text:
            continue
        if not cues or mark.time in starts or size + 1 + len(text) > LINE_CHARS * CUE_LINES:
            cues.append((mark.time, []))
            size = -1
        cues[-1][1].append(text)
        size += 1 + len(text)
    return cues


def cue_blocks(marks: Sequence[Mark], end_ms: int, first: int = 1) -> list[str]:
    """The cues of marks as WebVTT blocks numbered from first; the last ends at end_ms."""
    cues = _cues(sorted(marks, key=lambda m: m.time))
    blocks: list[str] = []
    for index, (start, words) in enumerate(cues):
        end = cues[index + 1][0] if index + 1 < len(cues) else max(end_ms, start + 1)
        blocks.append(f"{first + index}\n"
                      f"{_timestamp(start)} --> {_timestamp(max(end, start + 1))}\n"
                      f"{_lines(words)}\n")
    return blocks


def webvtt(marks: Sequence[Mark], duration_ms: int) -> str:
    """A WebVTT document whose cues show the text as it is spoken; the last ends with the audio."""
    return HEADER + "".join(f"\n{block}" for block in cue_blocks(marks, duration_ms))
