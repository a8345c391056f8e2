"""/languages and /voices: public voice discovery."""

from __future__ import annotations

from typing import Any, Mapping

from aiohttp import web

from idlakd.errors import MalformedRequest, NotFound
from idlakd.web.http import json_response
from idlakd.web.keys import store_key
from idlakd.models import GENDERS
from idlakd.web.validation import Fields, json_object

ACCENT_NEEDS_LANGUAGE = "For accent to be queried, language has to be provided as well."


async def languages(request: web.Request) -> web.Response:
    """GET /languages -> {languages: [...]} sorted and distinct; 204 when there are no voices."""
    found = await request.app[store_key].languages()
    if not found:
        return json_response(None, status=204)
    return json_response({"languages": found})


async def accents(request: web.Request) -> web.Response:
    """GET /languages/{iso}/accents -> {language, accents}; 404 for a language without voices."""
    language = request.match_info["iso"]
    found = await request.app[store_key].accents(language)
    if not found:
        raise NotFound("Language could not be found")
    return json_response({"language": language, "accents": found})


async def _matching_voices(request: web.Request, query: Mapping[str, Any]) -> web.Response:
    """Shared by POST and GET /voices: validate filters, answer {voices} or 204."""
    fields = Fields(dict(query))
    language = fields.string("language")
    accent = fields.string("accent")
    gender = fields.choice("gender", GENDERS)
    fields.check()
    if accent is not None and language is None:
        raise MalformedRequest(ACCENT_NEEDS_LANGUAGE)
    voices = await request.app[store_key].list_voices(language, accent, gender)
    if not voices:
        return json_response(None, status=204)
    return json_response({"voices": [v.public() for v in voices]})


async def query_voices(request: web.Request) -> web.Response:
    """POST /voices with an optional JSON body of filters."""
    return await _matching_voices(request, await json_object(request, optional=True))


async def list_voices(request: web.Request) -> web.Response:
    """GET /voices?language=&accent=&gender= (empty parameters count as absent)."""
    query = {k: v for k, v in request.query.items() if v != ""}
    return await _matching_voices(request, query)


async def get_voice(request: web.Request) -> web.Response:
    """GET /voices/{voice_id} -> the voice object, or 404."""
    voice = await request.app[store_key].get_voice(request.match_info["voice_id"])
    if voice is None:
        raise NotFound("Voice could not be found")
    return json_response(voice.public())
