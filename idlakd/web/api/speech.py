"""/speech: validate the request, then hand it to the synthesis service to stream."""

from __future__ import annotations

from aiohttp import web

from idlakd.web.auth import require_user
from idlakd.errors import BadRequest, PayloadTooLarge, ServiceUnavailable, Unprocessable
from idlakd.web.keys import config_key, runtime_key, store_key, synth_key
from idlakd.synth.transcode import FORMATS
from idlakd.web.validation import Fields, json_object

VOICE_NOT_FOUND = "Voice could not be found"
SHUTTING_DOWN = "Server is shutting down, try again later"


async def speech(request: web.Request) -> web.StreamResponse:
    """POST /speech {voice_id, text, audio_format?, stream?} -> audio, streamed as made."""
    await require_user(request)
    if request.app[runtime_key].stopping:
        # Running streams finish during the grace period; new ones go to another instance.
        raise ServiceUnavailable(SHUTTING_DOWN, retry_after=5)
    fields = Fields(await json_object(request))
    voice_id = fields.string("voice_id", required=True, hint="Provide a voice id")
    text = fields.string("text", required=True, max_length=None)
    audio_format = fields.choice("audio_format", FORMATS, default="wav")
    stream = fields.boolean("stream", default=True)
    fields.check()
    assert voice_id is not None and text is not None and audio_format is not None
    voice = await request.app[store_key].get_voice(voice_id)
    if voice is None:
        raise BadRequest(VOICE_NOT_FOUND)
    if not text.strip():
        raise Unprocessable("text: Must not be empty or blank.")
    limit = request.app[config_key].max_text_length
    if len(text) > limit:
        raise PayloadTooLarge(f"text: Longer than the limit of {limit} characters.")
    return await request.app[synth_key].respond(request, voice, text, audio_format, stream)
