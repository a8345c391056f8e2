"""The speech answer every HTTP door gives: its fields read, and an AudioStream written as the body.

Disconnects are told, never polled. aiohttp offers two ways and both are
handled here: with handler_cancellation on (the way aiohttp recommends, and
how the daemon and the test server run) the handler task is cancelled the
moment the connection is lost, which cancels whatever it awaits — a write, or
the synthesizer waiting for audio; with it off, the next write raises
ConnectionResetError. Either way the stream is closed in ``finally``, which
stops every worker and ffmpeg working for it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from typing import Callable, Final

from aiohttp import HttpVersion11, web

from idlakd.errors import Busy, IdlakdError, InvalidRequest, MalformedRequest, TooLarge
from idlakd.models import Voice
from idlakd.synth.stream import AudioStream
from idlakd.synth.formats import AUDIO_FORMATS, FORMAT_NAMES
from idlakd.synth.options import (PITCH_RANGE, SAMPLE_RATE_RANGE, SPEED_RANGE, TEXT_TYPES,
                                  VOLUME_RANGE, SpeechOptions)
from idlakd.web.keys import (config_key, quotas_key, runtime_key, store_key, synth_key,
                             user_key)
from idlakd.web.validation import Fields, json_object

log = logging.getLogger(__name__)

VOICE_NOT_FOUND: Final = "Voice could not be found"
SHUTTING_DOWN: Final = "Server is shutting down, try again later"


@dataclasses.dataclass(frozen=True)
class Framing:
    """A body other than the audio bytes themselves, made from an AudioStream as it is read.

    piece turns each piece of audio into what is written (b"" for nothing; it
    may take the stream's marks); end is written after the last piece.
    """

    content_type: str
    piece: Callable[[bytes | memoryview, AudioStream], bytes]
    end: Callable[[AudioStream], bytes]


@dataclasses.dataclass(frozen=True)
class SpeechRequest:
    """A validated speech request: which voice says what, in which format, and how."""

    voice: Voice
    text: str
    audio_format: str
    options: SpeechOptions = SpeechOptions()

    @property
    def stream(self) -> bool:
        """Whether the audio is sent as it is made (else as a complete file)."""
        return self.options.stream


async def read_speech_request(request: web.Request,
                              text_limit: int | None = None) -> SpeechRequest:
    """The JSON body (voice_id, text and the optional fields of docs/api.md) checked, the voice looked up.

    text_limit: the most characters of text (default max_text_length; jobs take more).
    """
    if request.app[runtime_key].stopping:
        # Running streams finish during the grace period; new ones go to another instance.
        raise Busy(SHUTTING_DOWN, retry_after=5)
    fields = Fields(await json_object(request))
    voice_id = fields.string("voice_id", required=True, hint="Provide a voice id")
    text = fields.string("text", required=True, max_length=None)
    audio_format = fields.choice("audio_format", FORMAT_NAMES, default="wav")
    stream = fields.boolean("stream", default=True)
    options = SpeechOptions(
        stream=bool(stream), sample_rate=fields.integer("sample_rate", SAMPLE_RATE_RANGE),
        speed=fields.number("speed", SPEED_RANGE, 1.0),
        pitch=fields.number("pitch", PITCH_RANGE, 0.0),
        volume=fields.number("volume", VOLUME_RANGE, 0.0),
        text_type=fields.choice("text_type", TEXT_TYPES, default="auto") or "auto")
    if audio_format is not None and options.sample_rate is not None:
        refused = AUDIO_FORMATS[audio_format].refused_rate(options.sample_rate)
        if refused is not None:
            fields.error("sample_rate", refused)
    fields.check()
    assert voice_id is not None and text is not None and audio_format is not None
    voice = await request.app[store_key].get_voice(voice_id)
    if voice is None:
        raise MalformedRequest(VOICE_NOT_FOUND)
    if not text.strip():
        raise InvalidRequest("text: Must not be empty or blank.")
    limit = request.app[config_key].max_text_length if text_limit is None else text_limit
    if len(text) > limit:
        raise TooLarge(f"text: Longer than the limit of {limit} characters.")
    return SpeechRequest(voice, text, audio_format, options)


async def answer_speech(request: web.Request, speech: SpeechRequest,
                        framing: Framing | None = None) -> web.StreamResponse:
    """Check the caller's quota (429 over a limit), speak, and record the usage.

    The charge ends when the answer has: with the audio's seconds, or undone when no audio
    was served (the synthesis was refused or failed before its first byte).
    """
    quotas = request.app[quotas_key]
    charge = await quotas.admit(request[user_key].uid, len(speech.text))
    started: list[AudioStream] = []
    try:
        return await speak(request, speech, started.append, framing)
    finally:
        # Before the handler returns: a keep-alive client's next request sees this one ended.
        audio = started[0] if started else None
        await quotas.finish(charge, None if audio is None else audio.audio_seconds,
                            served=audio is not None)


async def speak(request: web.Request, speech: SpeechRequest,
                on_start: Callable[[AudioStream], None] | None = None,
                framing: Framing | None = None) -> web.StreamResponse:
    """Synthesise speech and send it: errors before the first byte are raised (JSON answers).

    on_start is told the stream once synthesis has started (its audio is then being served);
    framing, if given, is how the body is made from the audio.
    """
    synthesizer = request.app[synth_key]
    try:
        audio = await synthesizer.synthesise(
            speech.voice, speech.text, speech.audio_format, speech.options)
    except asyncio.CancelledError:
        # Cancelled while the first audio (or, not streaming, all of it) was being made.
        if _client_gone(request):
            synthesizer.abandoned()
            log.info("Client went away before its speech started (voice %s); its synthesis "
                     "stopped", speech.voice.id)
        raise
    if on_start is not None:
        on_start(audio)
    return await send_audio(request, audio, speech.stream, speech.voice.id, framing)


def _client_gone(request: web.Request) -> bool:
    """Whether the connection is closed or closing (asked once, when a failure or cancel came)."""
    transport = request.transport
    return transport is None or transport.is_closing()


def _abort(request: web.Request) -> None:
    """Cut the connection: the client sees an incomplete body, never a clean end of a broken one."""
    if request.transport is not None:
        request.transport.abort()


async def _write(response: web.StreamResponse, data: bytes | memoryview, timeout: float) -> None:
    """Write to the client; one that takes nothing for timeout seconds counts as gone.

    Without this a client that stops reading holds its stream (and ffmpeg) forever.
    """
    try:
        async with asyncio.timeout(timeout):
            await response.write(data)
    except TimeoutError:
        raise ConnectionResetError("the client stopped reading") from None


async def send_audio(request: web.Request, audio: AudioStream, stream: bool,
                     voice_id: str, framing: Framing | None = None) -> web.StreamResponse:
    """Write audio as the response body (chunked, sized, or close-delimited); always closes it.

    With framing, the body is what framing makes of the audio (its length unknown).
    After the status line a failure can no longer be a JSON error: the
    connection is aborted so the client sees a truncated body.
    """
    response = web.StreamResponse()
    response.content_type = audio.content_type if framing is None else framing.content_type
    if (stream or framing is not None) and request.version == HttpVersion11:
        response.enable_chunked_encoding()
    elif audio.length is not None and framing is None:
        response.content_length = audio.length
    else:
        # HTTP/1.0 asked for a stream: no chunked encoding there, so the body ends when
        # the connection closes; a keep-alive client must be told, or the next response
        # would land inside this body.
        response.force_close()
    timeout = request.app[config_key].synthesis_timeout_seconds
    try:
        await response.prepare(request)
        async for data in audio:
            out = data if framing is None else framing.piece(data, audio)
            if out:
                await _write(response, out, timeout)
        if framing is not None:
            await _write(response, framing.end(audio), timeout)
        await response.write_eof()
    except IdlakdError as exc:
        if not response.prepared:
            raise
        log.error("Speech for voice %s failed mid-stream (%s); aborting the connection",
                  voice_id, exc.message)
        _abort(request)
    except ConnectionError:  # reset, broken pipe, aiohttp's "Cannot write to closing transport"
        if audio.abandon():
            log.info("Client went away during speech (voice %s); its synthesis stopped", voice_id)
        _abort(request)
    except asyncio.CancelledError:
        # aiohttp cancels the handler when its client disconnects; a shutdown cancels too.
        if _client_gone(request) and audio.abandon():
            log.info("Client went away during speech (voice %s); its synthesis stopped", voice_id)
        raise
    finally:
        await audio.aclose()
    return response
