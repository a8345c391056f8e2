"""The timing marks of a job: each group's marks placed in the job's audio and text, as JSON lines."""

from __future__ import annotations

import dataclasses
import json
from typing import Sequence

from idlakd.synth.marks import Mark


def placed(marks: Sequence[Mark], time_ms: int, offset: int) -> bytes:
    """A group's marks as JSON lines, moved time_ms later and offset characters on (the audio
    and text of the groups before it)."""
    return "".join(
        json.dumps(dataclasses.replace(mark, time=mark.time + time_ms, start=mark.start + offset,
                                       end=mark.end + offset).wire(), ensure_ascii=False) + "\n"
        for mark in marks).encode("utf-8")


def parsed(lines: bytes) -> list[Mark]:
    """The marks of JSON lines that placed() wrote (read back from the store)."""
    return [Mark(time=int(item["time"]), type=str(item["type"]), start=int(item["start"]),
                 end=int(item["end"]), value=str(item["value"]))
            for item in map(json.loads, lines.decode("utf-8").splitlines())]
