"""OpenAI's speech events (stream_format "sse"): an AudioStream framed as Server-Sent Events."""

from __future__ import annotations

import base64
import json
import math
from typing import Any, Final

from idlakd.synth.stream import AudioStream
from idlakd.web.audio import Framing

CONTENT_TYPE: Final = "text/event-stream"


def event(data: dict[str, Any]) -> bytes:
    """One SSE event: a data line of JSON (its "type" names the event), then a blank line."""
    return b"data: " + json.dumps(data, separators=(",", ":")).encode() + b"\n\n"


def _marks(audio: AudioStream) -> bytes:
    """A speech.mark event for each mark the stream has made due since the last call."""
    return b"".join(event({"type": "speech.mark", "mark": mark.wire()})
                    for mark in audio.take_marks())


def usage(characters: int, audio: AudioStream) -> dict[str, int]:
    """OpenAI's usage object, counted honestly: characters in, milliseconds of audio made out."""
    seconds = audio.audio_seconds
    # None: served from the cache, nothing was synthesised for this answer.
    made = 0 if seconds is None else math.ceil(seconds * 1000)
    return {"input_tokens": characters, "output_tokens": made,
            "total_tokens": characters + made}


def speech_events(characters: int) -> Framing:
    """The framing of one request: a delta per piece of audio (marks after it), done at the end."""

    def piece(data: bytes | memoryview, audio: AudioStream) -> bytes:
        """A speech.audio.delta of this piece (base64), then the marks now due."""
        delta = event({"type": "speech.audio.delta",
                       "audio": base64.b64encode(data).decode("ascii")})
        return delta + _marks(audio)

    def end(audio: AudioStream) -> bytes:
        """The last marks, then speech.audio.done with the usage."""
        return _marks(audio) + event({"type": "speech.audio.done",
                                      "usage": usage(characters, audio)})

    return Framing(CONTENT_TYPE, piece, end)
