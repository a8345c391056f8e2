"""/speech/marks and /speech/captions: the timing of speech as JSON lines or WebVTT, without the audio."""

from __future__ import annotations

import dataclasses
import json
from typing import Final

from aiohttp import web

from idlakd.errors import InvalidRequest
from idlakd.synth.captions import webvtt
from idlakd.synth.marks import Mark
from idlakd.synth.options import MARK_TYPES
from idlakd.synth.stream import AudioStream
from idlakd.web.audio import Framing, SpeechRequest, answer_speech, read_speech_request
from idlakd.web.validation import json_object

NDJSON: Final = "application/x-ndjson"
VTT: Final = "text/vtt"
# The audio is made and dropped: the straight WAV path costs least.
_DROPPED_FORMAT: Final = "wav"


def _lines(marks: list[Mark]) -> bytes:
    """Marks as newline-delimited JSON."""
    return "".join(json.dumps(mark.wire(), ensure_ascii=False) + "\n"
                   for mark in marks).encode("utf-8")


async def _mark_types(request: web.Request) -> frozenset[str]:
    """The body's speech_mark_types: a non-empty list of MARK_TYPES (default: all)."""
    value = (await json_object(request)).get("speech_mark_types")
    if value is None:
        return frozenset(MARK_TYPES)
    if (not isinstance(value, list) or not value
            or not all(isinstance(v, str) and v in MARK_TYPES for v in value)):
        raise InvalidRequest("speech_mark_types: Must be a non-empty list of "
                             f"{'|'.join(MARK_TYPES)}.")
    return frozenset(value)


def _timing_only(speech: SpeechRequest, types: frozenset[str]) -> SpeechRequest:
    """The request with its audio made as cheaply as possible and the marks asked for.

    Only speed changes timing: the rate, pitch and volume of audio nobody hears are not
    made (a pitch shift costs a core for as long as the audio lasts).
    """
    options = dataclasses.replace(speech.options, marks=types, stream=True, sample_rate=None,
                                  pitch=0.0, volume=0.0)
    return dataclasses.replace(speech, audio_format=_DROPPED_FORMAT, options=options)


async def speech_marks(request: web.Request) -> web.StreamResponse:
    """POST /speech/marks {voice_id, text, speech_mark_types?, ...} -> marks as JSON lines."""
    speech = await read_speech_request(request)
    types = await _mark_types(request)
    framing = Framing(NDJSON, lambda _data, audio: _lines(audio.take_marks()),
                      lambda audio: _lines(audio.take_marks()))
    return await answer_speech(request, _timing_only(speech, types), framing)


class _Captions:
    """Gathers every mark while the audio is made; the captions are written at the end."""

    def __init__(self) -> None:
        self.marks: list[Mark] = []

    def piece(self, _data: bytes | memoryview, audio: AudioStream) -> bytes:
        """Keep the marks that are due; nothing is written before the end."""
        self.marks += audio.take_marks()
        return b""

    def end(self, audio: AudioStream) -> bytes:
        """The WebVTT document (the last cue ends with the audio)."""
        self.marks += audio.take_marks()
        duration = round((audio.audio_seconds or 0.0) * 1000 * audio.time_scale)
        return webvtt(self.marks, duration).encode("utf-8")


async def speech_captions(request: web.Request) -> web.StreamResponse:
    """POST /speech/captions {voice_id, text, ...} -> WebVTT captions of the speech."""
    speech = await read_speech_request(request)
    captions = _Captions()
    framing = Framing(f"{VTT}; charset=utf-8", captions.piece, captions.end)
    return await answer_speech(
        request, _timing_only(speech, frozenset({"sentence", "word"})), framing)
