"""/speech: validate the request, get its AudioStream from the synthesizer, stream it out."""

from __future__ import annotations

from aiohttp import web

from idlakd.web.audio import SHUTTING_DOWN, VOICE_NOT_FOUND, answer_speech, read_speech_request

__all__ = ["SHUTTING_DOWN", "VOICE_NOT_FOUND", "speech"]


async def speech(request: web.Request) -> web.StreamResponse:
    """POST /speech {voice_id, text, audio_format?, stream?} -> audio, streamed as made."""
    return await answer_speech(request, await read_speech_request(request))
