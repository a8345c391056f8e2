"""GET /v1/models and GET /v1/audio/voices: what OpenAI's door offers, in OpenAI's list shape."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from idlakd.models import Voice
from idlakd.web.api.v1_names import models, voice_aliases
from idlakd.web.http import json_response
from idlakd.web.keys import config_key, runtime_key, store_key

OWNER = "idlakd"


async def list_models(request: web.Request) -> web.Response:
    """GET /v1/models -> {object: "list", data: [{id, object: "model", created, owned_by}]}."""
    # created: when this daemon started offering them (OpenAI's is the model's birth).
    created = int(request.app[runtime_key].started_at)
    data = [{"id": name, "object": "model", "created": created, "owned_by": OWNER}
            for name in models(request.app[config_key])]
    return json_response({"object": "list", "data": data})


def _entry(name: str, voice: Voice) -> dict[str, Any]:
    """One voice name /v1/audio/speech accepts, with the voice it speaks with."""
    return {"id": name, "object": "voice", "voice_id": voice.id, "alias": name != voice.id,
            "name": voice.name, "language": voice.language, "accent": voice.accent,
            "gender": voice.gender}


async def list_voices(request: web.Request) -> web.Response:
    """GET /v1/audio/voices -> {object: "list", data: [...]}: the aliases whose voice is
    installed, then every voice id."""
    voices = {v.id: v for v in await request.app[store_key].list_voices()}
    aliases = voice_aliases(request.app[config_key])
    data = [_entry(alias, voices[voice_id]) for alias, voice_id in aliases.items()
            if voice_id in voices and alias not in voices]
    data += [_entry(voice.id, voice) for voice in voices.values()]
    return json_response({"object": "list", "data": data})
