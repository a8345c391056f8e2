"""POST /v1/audio/speech: OpenAI's speech request, answered by the same path as /speech."""

from __future__ import annotations

from typing import Final

from aiohttp import web

from idlakd.errors import Busy, InvalidRequest, MalformedRequest, NotFound, TooLarge
from idlakd.models import Voice
from idlakd.synth.options import MARK_TYPES, SPEED_RANGE, SpeechOptions
from idlakd.web.api.v1_events import speech_events
from idlakd.web.api.v1_names import find_voice, models
from idlakd.web.audio import SHUTTING_DOWN, VOICE_NOT_FOUND, SpeechRequest, answer_speech
from idlakd.web.keys import config_key, runtime_key, store_key
from idlakd.web.validation import NOT_CHOICE, Fields, json_object

#: OpenAI's response_format names -> idlakd's audio_format names (the same words).
FORMATS: Final[dict[str, str]] = {"mp3": "mp3", "opus": "opus", "aac": "aac", "flac": "flac",
                                  "wav": "wav", "pcm": "pcm"}
#: OpenAI documents pcm as 24 kHz signed 16-bit little-endian.
PCM_RATE: Final = 24000
STREAM_FORMATS: Final = ("audio", "sse")
#: OpenAI's own bound on instructions.
MAX_INSTRUCTIONS: Final = 4096
MODEL_NOT_FOUND: Final = "model_not_found"
VOICE_NOT_FOUND_CODE: Final = "voice_not_found"
MARKS_NEED_SSE: Final = "Only with stream_format sse."
NOT_MARKS: Final = f"Not a list of mark types. Valid choices: {'|'.join(MARK_TYPES)}"
BLANK_INPUT: Final = "input: Must not be empty or blank."


def _voice_name(fields: Fields) -> str | None:
    """voice: a name, or OpenAI's custom voice object {"id": name}."""
    value = fields.body.get("voice")
    if isinstance(value, dict) and set(value) == {"id"}:
        inner = Fields({"voice": value["id"]})
        name = inner.string("voice", required=True)
        fields.errors.extend(inner.errors)
        return name
    return fields.string("voice", required=True)


def _marks(fields: Fields, sse: bool) -> frozenset[str]:
    """marks (an idlakd extension): the mark types to send as speech.mark events."""
    value = fields.body.get("marks")
    if value is None:
        return frozenset()
    if (not isinstance(value, list) or len(value) > len(MARK_TYPES)
            or not all(isinstance(v, str) and v in MARK_TYPES for v in value)):
        fields.error("marks", NOT_MARKS)
        return frozenset()
    if value and not sse:
        fields.error("marks", MARKS_NEED_SSE)
    return frozenset(value)


async def _voice(request: web.Request, name: str) -> Voice:
    """The voice a voice id (first) or an alias names; else 400, as OpenAI answers."""
    voice = await find_voice(request.app[store_key], request.app[config_key], name)
    if voice is None:
        raise MalformedRequest(f"voice: {VOICE_NOT_FOUND} (neither a voice id nor an alias).",
                               code=VOICE_NOT_FOUND_CODE)
    return voice


async def read_openai_speech(request: web.Request) -> tuple[SpeechRequest, bool]:
    """OpenAI's fields checked, the model and voice resolved; (the request, whether SSE)."""
    if request.app[runtime_key].stopping:
        raise Busy(SHUTTING_DOWN, retry_after=5)
    config = request.app[config_key]
    fields = Fields(await json_object(request))
    model = fields.string("model", required=True)
    text = fields.string("input", required=True, max_length=None)
    name = _voice_name(fields)
    response_format = fields.choice("response_format", tuple(FORMATS), default="mp3")
    speed = fields.number("speed", SPEED_RANGE, 1.0)
    fields.string("instructions", max_length=MAX_INSTRUCTIONS)  # accepted, not used
    stream_format = fields.choice("stream_format", STREAM_FORMATS, default="audio")
    sse = stream_format == "sse"
    marks = _marks(fields, sse)
    fields.check()
    assert model is not None and text is not None and name is not None
    assert response_format is not None
    known = models(config)
    if model not in known:
        raise NotFound(f"model: {NOT_CHOICE} Valid choices: {'|'.join(known)}",
                       code=MODEL_NOT_FOUND)
    voice = await _voice(request, name)
    if not text.strip():
        raise InvalidRequest(BLANK_INPUT)
    if len(text) > config.max_text_length:
        raise TooLarge(f"input: Longer than the limit of {config.max_text_length} characters.")
    options = SpeechOptions(stream=True, speed=speed, marks=marks,
                            sample_rate=PCM_RATE if response_format == "pcm" else None)
    return SpeechRequest(voice, text, FORMATS[response_format], options), sse


async def create_speech(request: web.Request) -> web.StreamResponse:
    """POST /v1/audio/speech {model, input, voice, response_format?, speed?, instructions?,
    stream_format?, marks?} -> audio bytes as made, or Server-Sent Events."""
    speech, sse = await read_openai_speech(request)
    framing = speech_events(len(speech.text)) if sse else None
    return await answer_speech(request, speech, framing)

