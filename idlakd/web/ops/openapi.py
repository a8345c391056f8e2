"""GET /openapi.json (every route, body and error of the contract) and GET /docs (its self-contained page)."""

from __future__ import annotations

import base64
import copy
import hashlib
import json
from typing import Any, Final

from aiohttp import web

from idlakd import __version__
from idlakd.accounts import keys as api_keys
from idlakd.accounts.logins import LOGIN_INCORRECT
from idlakd.accounts.quotas import BAD_LIMIT, LIMIT_FIELDS, MAX_LIMIT
from idlakd.accounts.passwords import LOGINS_BUSY
from idlakd.accounts.throttle import THROTTLED, TOO_MANY_ATTEMPTS
from idlakd.accounts.tokens import (ADMIN_REQUIRED, EXPIRED_TOKEN, INVALID_TOKEN, MISSING_HEADER,
                                    NO_SUCH_USER)
from idlakd.accounts.uids import UID_RULE
from idlakd.accounts.users import NO_SUCH_USER as UNKNOWN_USER
from idlakd.accounts.users import ONLY_ADMIN, USER_EXISTS
from idlakd.errors import Busy, DatabaseUnwritable
from idlakd.models import JOB_STATUSES
from idlakd.synth.formats import AUDIO_FORMATS, FORMAT_NAMES, OPUS_RATES
from idlakd.synth.options import (MARK_TYPES, PITCH_RANGE, SAMPLE_RATE_RANGE, SPEED_RANGE,
                                  TEXT_TYPES, VOLUME_RANGE)
from idlakd.web.api import v1_speech, v1_stream
from idlakd.web.ops.docs_page import DOCS_HTML, DOCS_SCRIPT
from idlakd.web.validation import INVALID_JSON, MISSING, NOT_BOOLEAN, NOT_OBJECT, NOT_STRING

JSON: Final = "application/json"


def _error(description: str, *messages: str) -> dict[str, Any]:
    """A response whose body is the one error shape, with the contract's messages as examples."""
    content: dict[str, Any] = {"schema": {"$ref": "#/components/schemas/Error"}}
    if messages:
        content["examples"] = {f"e{i}": {"value": {"message": m}} for i, m in enumerate(messages)}
    return {"description": description, "content": {JSON: content}}


def _ok(description: str, schema: dict[str, Any], example: Any = None) -> dict[str, Any]:
    """A 200 JSON response with this schema (and an example body)."""
    content: dict[str, Any] = {"schema": schema}
    if example is not None:
        content["example"] = example
    return {"description": description, "content": {JSON: content}}


def _body(schema: dict[str, Any], required: bool = True) -> dict[str, Any]:
    """A JSON request body."""
    return {"required": required, "content": {JSON: {"schema": schema}}}


def _obj(properties: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    """An object schema."""
    schema: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        schema["required"] = required
    return schema


STR: Final = {"type": "string"}
BOOL: Final = {"type": "boolean"}
TIME: Final = {"type": "string", "format": "date-time"}
TIME_OR_NULL: Final = {"type": ["string", "null"], "format": "date-time"}
REF_VOICE: Final = {"$ref": "#/components/schemas/Voice"}
REF_MESSAGE: Final = {"$ref": "#/components/schemas/Message"}

BAD_JSON: Final = _error("Body is not JSON", INVALID_JSON)
TOO_LARGE: Final = _error("Body larger than max_body_bytes")
# Only routes that read a body can wait for one.
BODY_TIMEOUT: Final = _error("Body not received within body_timeout_seconds; the connection closes")
THROTTLED_429: Final = _error("Too many failed logins for this uid or address, or too many attempts "
                              "from this address (see Retry-After)", THROTTLED, TOO_MANY_ATTEMPTS)
DATABASE_503: Final = _error("The database is busy or takes no writes (see Retry-After)",
                             Busy().message, DatabaseUnwritable().message)
USER_401: Final = _error("No usable token or API key", MISSING_HEADER, INVALID_TOKEN,
                         EXPIRED_TOKEN, NO_SUCH_USER, api_keys.KEY_INVALID, api_keys.KEY_EXPIRED,
                         api_keys.KEY_ENDED)
ADMIN_401: Final = _error("No usable admin token or API key", MISSING_HEADER, INVALID_TOKEN,
                          EXPIRED_TOKEN, NO_SUCH_USER, api_keys.KEY_INVALID, api_keys.KEY_EXPIRED,
                          api_keys.KEY_ENDED, ADMIN_REQUIRED)
UID_PARAM: Final = {"name": "uid", "in": "path", "required": True, "schema": STR}
NO_SUCH_USER_422: Final = _error("Unknown user", UNKNOWN_USER)
SECURED: Final[list[dict[str, list[str]]]] = [{"bearer": []}]
QUOTA_MINUTE_EXAMPLE: Final = "Quota exceeded: 100000 characters per minute; try again in 12 s"
QUOTA_DAY_EXAMPLE: Final = "Quota exceeded: 500000 characters per day; try again in 3600 s"
QUOTA_CONCURRENT_EXAMPLE: Final = ("Quota exceeded: 8 concurrent syntheses; try again when one "
                                   "has ended")
# The errors of the routes that make speech only for its timing (as /speech, less the audio's).
_TIMING_ERRORS: Final = {
    "400": _error("Bad JSON or unknown voice", INVALID_JSON, "Voice could not be found"),
    "401": USER_401,
    "408": BODY_TIMEOUT,
    "413": _error("Body, text or audio over its limit, or the text alone over a character quota"),
    "422": _error("Bad field, blank text or refused markup",
                  f"voice_id: {MISSING} Provide a voice id", f"text: {MISSING}",
                  "speech_mark_types: Must be a non-empty list of sentence|word|ssml."),
    "429": _error("Over one of the caller's quotas (see Retry-After)", QUOTA_MINUTE_EXAMPLE),
    "500": _error("Synthesis failed before the status line was sent", "Speech synthesis failed"),
    "503": _error("Queue full or shutting down (see Retry-After)",
                  "Server is busy, try again later"),
}


def _op(summary: str, responses: dict[str, Any], *, tag: str, security: bool = False,
        body: dict[str, Any] | None = None, params: list[dict[str, Any]] | None = None,
        description: str = "") -> dict[str, Any]:
    """One operation; every operation can also answer 500 with the error shape."""
    op: dict[str, Any] = {"summary": summary, "tags": [tag], "responses": dict(responses)}
    if description:
        op["description"] = description
    op["responses"].setdefault("500", _error("Unexpected failure (logged with the request id)"))
    if security:
        op["security"] = SECURED
    else:
        op["security"] = []
    if body is not None:
        op["requestBody"] = body
    if params:
        op["parameters"] = params
    return op


def _key_paths() -> dict[str, Any]:
    """/auth/keys and /users/{uid}/keys: API keys."""
    key = _obj({"id": STR, "name": STR, "prefix": STR, "created_at": TIME,
                "last_used_at": TIME_OR_NULL, "expires_at": TIME_OR_NULL},
               ["id", "name", "prefix", "created_at", "last_used_at", "expires_at"])
    new_key = copy.deepcopy(key)
    new_key["properties"]["key"] = STR
    new_key["required"].insert(0, "key")
    keys = _ok("Keys", _obj({"keys": {"type": "array", "items": key}}, ["keys"]))
    key_param = {"name": "key_id", "in": "path", "required": True, "schema": STR}
    revoked = _ok("Revoked", REF_MESSAGE, {"message": "API key '3f2a9c0d1e4b5a68' has been revoked"})
    no_key = _error("No such key (of this user)", api_keys.NO_SUCH_KEY)
    return {
        "/auth/keys": {
            "post": _op(
                "Make an API key for oneself; the key is shown only here", tag="auth",
                security=True,
                body=_body(_obj({"name": STR, "expires_in_days": {
                    "type": "integer", "minimum": 1, "maximum": api_keys.MAX_DAYS}}, ["name"])),
                responses={
                    "200": _ok("The new key", new_key),
                    "400": BAD_JSON,
                    "401": USER_401,
                    "408": BODY_TIMEOUT,
                    "413": TOO_LARGE,
                    "422": _error("Bad field, or too many keys", f"name: {MISSING}",
                                  f"name: {api_keys.NAME_RULE}",
                                  f"expires_in_days: {api_keys.DAYS_RULE}",
                                  api_keys.TOO_MANY_KEYS.format(
                                      limit="<max_api_keys_per_user>")),
                    "503": DATABASE_503,
                }),
            "get": _op("List one's own API keys (never the keys themselves)", tag="auth",
                       security=True, responses={"200": keys, "401": USER_401}),
        },
        "/auth/keys/{key_id}": {"delete": _op(
            "Revoke one of one's own API keys", tag="auth", security=True, params=[key_param],
            responses={"200": revoked, "401": USER_401, "404": no_key, "503": DATABASE_503})},
        "/users/{uid}/keys": {"get": _op(
            "List a user's API keys", tag="users", security=True, params=[UID_PARAM],
            responses={"200": keys, "401": ADMIN_401, "422": NO_SUCH_USER_422})},
        "/users/{uid}/keys/{key_id}": {"delete": _op(
            "Revoke a user's API key", tag="users", security=True, params=[UID_PARAM, key_param],
            responses={"200": revoked, "401": ADMIN_401, "404": no_key, "503": DATABASE_503})},
    }


def _usage_paths() -> dict[str, Any]:
    """/auth/usage and /users/{uid}/usage|limits: quotas and usage."""
    count = {"type": "integer", "minimum": 0}
    limits = _obj({name: count for name in LIMIT_FIELDS}, list(LIMIT_FIELDS))
    overrides = _obj({name: {"type": ["integer", "null"], "minimum": 0} for name in LIMIT_FIELDS},
                     list(LIMIT_FIELDS))
    usage = _ok("Usage today (UTC) and this minute, syntheses running, the limits in force", _obj(
        {"uid": STR, "day": STR, "requests": count, "characters": count,
         "audio_seconds": {"type": "number"}, "minute_characters": count, "running": count,
         "limits": limits},
        ["uid", "day", "requests", "characters", "audio_seconds", "minute_characters", "running",
         "limits"]))
    limit_set = _ok("The limits in force (0: none), the overrides (null: default), the defaults",
                    _obj({"uid": STR, "limits": limits, "overrides": overrides, "defaults": limits},
                         ["uid", "limits", "overrides", "defaults"]))
    change = {name: {"type": ["integer", "null"], "minimum": 0, "maximum": MAX_LIMIT}
              for name in LIMIT_FIELDS}
    return {
        "/auth/usage": {"get": _op(
            "One's own usage and limits", tag="auth", security=True,
            responses={"200": usage, "401": USER_401})},
        "/users/{uid}/usage": {"get": _op(
            "A user's usage and limits", tag="users", security=True, params=[UID_PARAM],
            responses={"200": usage, "401": ADMIN_401, "422": NO_SUCH_USER_422})},
        "/users/{uid}/limits": {
            "get": _op("A user's quota limits", tag="users", security=True, params=[UID_PARAM],
                       responses={"200": limit_set, "401": ADMIN_401, "422": NO_SUCH_USER_422}),
            "put": _op(
                "Set some of a user's quota limits (null: back to the default)", tag="users",
                security=True, params=[UID_PARAM], body=_body(_obj(change)),
                responses={
                    "200": limit_set,
                    "400": BAD_JSON,
                    "401": ADMIN_401,
                    "408": BODY_TIMEOUT,
                    "413": TOO_LARGE,
                    "422": _error("Unknown user, or a bad limit", UNKNOWN_USER,
                                  f"concurrent: {BAD_LIMIT}", "colour: Unknown field."),
                    "503": DATABASE_503,
                }),
        },
    }


def _speech_shape() -> dict[str, Any]:
    """The /speech fields that shape the audio: rate, prosody, kind of text."""
    def number(bounds: tuple[float, float], default: float, what: str) -> dict[str, Any]:
        return {"type": "number", "minimum": bounds[0], "maximum": bounds[1],
                "default": default, "description": what}

    return {
        "sample_rate": {"type": "integer", "minimum": SAMPLE_RATE_RANGE[0],
                        "maximum": SAMPLE_RATE_RANGE[1],
                        "description": "Output rate in Hz (opus, webm: " +
                        ", ".join(map(str, OPUS_RATES)) + "); default: the voice's (mulaw, alaw: "
                        "8000; opus, webm, mp3, aac: the nearest allowed rate above it)"},
        "speed": number(SPEED_RANGE, 1.0, "Speaking rate factor; the pitch is kept"),
        "pitch": number(PITCH_RANGE, 0.0, "Pitch shift in semitones; the tempo is kept"),
        "volume": number(VOLUME_RANGE, 0.0, "Gain in dB"),
        "text_type": {"type": "string", "enum": list(TEXT_TYPES), "default": "auto"},
    }


def _media_type(name: str) -> str:
    """A format's media type for the schema (raw PCM's names its rate: the parameters go)."""
    spec = AUDIO_FORMATS[name]
    return spec.content_type.split(";")[0] if spec.rate_in_content_type else spec.content_type


def _voice_filters() -> dict[str, Any]:
    """The filter fields shared by GET and POST /voices."""
    return {"language": STR, "accent": STR, "gender": {"type": "string", "enum": ["male", "female"]}}


def _openai_error(description: str) -> dict[str, Any]:
    """An error response of OpenAI's door: OpenAI's error shape."""
    return {"description": description,
            "content": {JSON: {"schema": {"$ref": "#/components/schemas/OpenAIError"}}}}


def _v1_op(summary: str, responses: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    """An operation of OpenAI's door: every error (the default 500 too) in OpenAI's shape."""
    op = _op(summary, responses, tag="openai", security=True, **kwargs)
    op["responses"]["500"] = _openai_error("Unexpected failure, or synthesis failed before the "
                                           "status line was sent")
    op["responses"]["401"] = _openai_error("No usable token or API key (AuthenticationError)")
    return op


def _v1_paths() -> dict[str, Any]:
    """OpenAI's door: /v1/audio/speech, /v1/models, /v1/audio/voices."""
    listing = {"object": {"type": "string", "const": "list"}}
    model = _obj({"id": STR, "object": {"type": "string", "const": "model"},
                  "created": {"type": "integer"}, "owned_by": STR},
                 ["id", "object", "created", "owned_by"])
    voice = _obj({"id": STR, "object": {"type": "string", "const": "voice"}, "voice_id": STR,
                  "alias": BOOL, "name": STR, "language": STR, "accent": STR,
                  "gender": {"type": "string", "enum": ["male", "female"]}},
                 ["id", "object", "voice_id", "alias", "name", "language", "accent", "gender"])
    speech_body = _obj({
        "model": STR, "input": STR,
        "voice": {"oneOf": [STR, _obj({"id": STR}, ["id"])]},
        "response_format": {"type": "string", "enum": list(v1_speech.FORMATS), "default": "mp3"},
        "speed": {"type": "number", "minimum": SPEED_RANGE[0], "maximum": SPEED_RANGE[1],
                  "default": 1.0},
        "instructions": {"type": "string", "maxLength": v1_speech.MAX_INSTRUCTIONS},
        "stream_format": {"type": "string", "enum": list(v1_speech.STREAM_FORMATS),
                          "default": "audio"},
        "marks": {"type": "array", "items": {"type": "string", "enum": list(MARK_TYPES)}},
    }, ["model", "input", "voice"])
    audio_types = ["audio/mpeg", "audio/ogg; codecs=opus", "audio/aac", "audio/flac",
                   "audio/wav", "audio/L16; rate=24000; channels=1"]
    audio = {t: {"schema": {"type": "string", "format": "binary"}} for t in audio_types}
    audio["text/event-stream"] = {"schema": STR}
    return {
        "/v1/audio/speech": {"post": _v1_op(
            "OpenAI's speech request: audio streamed as made, or Server-Sent Events",
            description=("OpenAI-compatible (the official openai clients work with base_url "
                         "<server>/v1). stream_format sse: speech.audio.delta events (base64 "
                         "audio), speech.mark events when marks are asked, then "
                         "speech.audio.done with usage (input_tokens: characters, "
                         "output_tokens: milliseconds of audio made). Errors use OpenAI's shape."),
            body=_body(speech_body),
            responses={
                "200": {"description": "Audio, or text/event-stream", "content": audio},
                "400": _openai_error("Bad JSON, or unknown voice (code voice_not_found)"),
                "404": _openai_error("Model not in openai_models (code model_not_found)"),
                "408": _openai_error("Body not received within body_timeout_seconds"),
                "413": _openai_error("Body or input over its limit, audio over "
                                     "max_audio_seconds, or the input alone over a quota"),
                "422": _openai_error("Bad field (param names it), blank input, refused markup"),
                "429": _openai_error("Over one of the caller's quotas (Retry-After)"),
                "503": _openai_error("Queue full or shutting down (Retry-After)"),
            })},
        "/v1/audio/voices": {"get": _v1_op(
            "The voice names /v1/audio/speech accepts: aliases, then voice ids",
            responses={"200": _ok("Voices", _obj({**listing, "data": {
                "type": "array", "items": voice}}, ["object", "data"]))})},
        "/v1/models": {"get": _v1_op(
            "The model names /v1/audio/speech accepts (openai_models)",
            responses={"200": _ok("Models", _obj({**listing, "data": {
                "type": "array", "items": model}}, ["object", "data"]))})},
    }


def _job_paths() -> dict[str, Any]:
    """Jobs for long text: /v1/jobs (OpenAI's error shape, like the rest of /v1/)."""
    job_id = [{"name": "job_id", "in": "path", "required": True, "schema": STR}]
    job = _obj({
        "id": STR, "object": {"type": "string", "const": "job"},
        "status": {"type": "string", "enum": list(JOB_STATUSES)}, "uid": STR, "voice_id": STR,
        "audio_format": {"type": "string", "enum": list(FORMAT_NAMES)},
        "sample_rate": {"type": "integer"},
        "progress": _obj({"characters_done": {"type": "integer"},
                          "characters_total": {"type": "integer"},
                          "audio_seconds": {"type": "number"}},
                         ["characters_done", "characters_total", "audio_seconds"]),
        "created_at": TIME, "started_at": TIME_OR_NULL, "finished_at": TIME_OR_NULL,
        "error": {"type": ["string", "null"]}, "result_bytes": {"type": ["integer", "null"]},
        "status_url": STR, "audio_url": STR,
    }, ["id", "status", "progress", "created_at", "status_url"])
    not_found = _openai_error("No such job of the caller's (another user's job is not found)")
    audio = {_media_type(fmt): {"schema": {"type": "string", "format": "binary"}}
             for fmt in FORMAT_NAMES}
    return {
        "/v1/jobs": {
            "post": _v1_op(
                "Queue a long text for synthesis in the background",
                description=("The fields of POST /speech (stream is ignored), text up to "
                             "job_max_text_length characters. The characters count toward the "
                             "caller's daily quota when the job is accepted."),
                body=_body(_obj({"voice_id": STR, "text": STR,
                                 "audio_format": {"type": "string", "enum": list(FORMAT_NAMES),
                                                  "default": "wav"},
                                 **_speech_shape()}, ["voice_id", "text"])),
                responses={
                    "202": _ok("Queued; Location names the job",
                               _obj({"id": STR, "status_url": STR}, ["id", "status_url"])),
                    "400": _openai_error("Bad JSON, or unknown voice"),
                    "408": _openai_error("Body not received within body_timeout_seconds"),
                    "413": _openai_error("Text over job_max_text_length (markup: over "
                                         "max_text_length), or the text alone over the daily "
                                         "quota"),
                    "422": _openai_error("Bad field, or blank text"),
                    "429": _openai_error("Over jobs_per_user, job_max_result_bytes_per_user or "
                                         "the daily quota (Retry-After)"),
                    "503": _openai_error("Shutting down, or the database is busy (Retry-After)"),
                }),
            "get": _v1_op(
                "One's own jobs, newest first (admins: everyone's, or ?uid=)",
                params=[{"name": "uid", "in": "query", "required": False, "schema": STR}],
                responses={"200": _ok("Jobs", _obj({"object": {"type": "string",
                                                              "const": "list"},
                                                    "data": {"type": "array", "items": job}},
                                                   ["object", "data"]))}),
        },
        "/v1/jobs/{job_id}": {
            "get": _v1_op("A job: status, progress, times, error", params=job_id,
                          responses={"200": _ok("The job", job), "404": not_found}),
            "delete": _v1_op(
                "Cancel a queued or running job, or delete an ended one and its audio",
                params=job_id,
                responses={"200": _ok("Cancelled: the job", job),
                           "204": {"description": "Deleted"}, "404": not_found,
                           "503": _openai_error("The database is busy (Retry-After)")}),
        },
        "/v1/jobs/{job_id}/audio": {"get": _v1_op(
            "A done job's audio, with Content-Length and Range requests",
            params=[*job_id, {"name": "Range", "in": "header", "required": False,
                              "schema": STR}],
            responses={"200": {"description": "The whole file", "content": audio},
                       "206": {"description": "The asked bytes (Content-Range)",
                               "content": audio},
                       "404": not_found,
                       "409": _openai_error("The job is not done"),
                       "416": _openai_error("The range starts past the end (Content-Range: "
                                            "bytes */<size>)")})},
        "/v1/jobs/{job_id}/marks": {"get": _v1_op(
            "A done job's timing marks (sentence, word, ssml), one JSON object a line",
            params=job_id,
            responses={"200": {"description": "Marks in time order: {time, type, start, end, "
                                              "value}, time in ms of the job's audio, start/end "
                                              "character offsets into its text",
                               "content": {"application/x-ndjson": {"schema": STR}}},
                       "404": not_found,
                       "409": _openai_error("The job is not done")})},
        "/v1/jobs/{job_id}/captions": {"get": _v1_op(
            "WebVTT captions of a done job's audio",
            params=job_id,
            responses={"200": {"description": "WebVTT",
                               "content": {"text/vtt": {"schema": STR}}},
                       "404": not_found,
                       "409": _openai_error("The job is not done")})},
    }
def _stream_path() -> dict[str, Any]:
    """The text-in WebSocket: OpenAPI cannot describe its messages, so its description does."""
    return {"/v1/speech/stream": {"get": _v1_op(
        "WebSocket: speak text while it is still being written (text in, audio out)",
        description=(
            "Upgrade to a WebSocket (credentials: Authorization: Bearer <token or API key> on "
            "the upgrade, the admin session cookie from this server's own pages, or a first "
            'message {"type": "auth", "token"} within 5 s). Client messages are JSON text '
            'frames of at most 64 KiB: {"type": "start", "voice_id", "audio_format"?: '
            f"{'|'.join(v1_stream.FORMATS)} (default pcm; wav is pcm without a header), "
            '"sample_rate"?, "speed"?, "marks"?: bool} once; {"type": "text", "text"} deltas; '
            '{"type": "flush"} (say what is buffered; answered by {"type": "flushed", "id"} '
            'once its audio has been sent); {"type": "clear"} (barge-in: drop the buffer, stop '
            'the audio in flight; answered by {"type": "cleared"}); {"type": "end"}. The server '
            'sends audio as binary frames and JSON text frames: {"type": "started", "voice_id", '
            '"audio_format", "sample_rate", "content_type"}, {"type": "mark", "mark"}, '
            '"flushed", "cleared", {"type": "done", "usage": {"characters", "audio_seconds"}} '
            'then close 1000; errors {"type": "error", "message", "code"} then close 1008 '
            "(credentials, bad message, quota, idle), 1011 (server error) or 1013 (busy, try "
            "later). A sentence is spoken once complete, or when the buffer passes 300 "
            "characters, or after max_buffer_delay_ms without new text. docs/api.md has the "
            "message tables."),
        responses={
            "101": {"description": "Switching to the WebSocket protocol"},
            "400": _openai_error("Not a WebSocket upgrade"),
            "403": _openai_error("The admin session cookie from another site's page (Origin)"),
            "503": _openai_error("The server is shutting down (Retry-After)"),
        })}}


def build_spec() -> dict[str, Any]:
    """The OpenAPI 3.1 document of the whole HTTP API (api-contract.md, plus operations routes)."""
    voices_found = _ok("Matching voices", _obj({"voices": {"type": "array", "items": REF_VOICE}}, ["voices"]))
    voices_responses = {
        "200": voices_found,
        "204": {"description": "No voice matches"},
        "400": _error("accent without language",
                      "For accent to be queried, language has to be provided as well."),
        "422": _error("Bad filter", "gender: Not a valid choice. Valid choices: male|female"),
    }
    paths: dict[str, Any] = {
        "/auth": {"post": _op(
            "Log in: a JWT access token (HS256; sub, iat, nbf, exp, jti)", tag="auth",
            body=_body(_obj({"uid": STR, "password": {"type": "string", "format": "password"}},
                            ["uid", "password"])),
            responses={
                "200": _ok("Token", _obj({"access_token": STR}, ["access_token"])),
                "400": BAD_JSON,
                "401": _error("Wrong uid or password (same answer and timing)", LOGIN_INCORRECT),
                "408": BODY_TIMEOUT,
                "413": TOO_LARGE,
                "422": _error("Missing or mistyped field", f"uid: {MISSING}", f"password: {MISSING}",
                              f"uid: {NOT_STRING}", NOT_OBJECT),
                "429": THROTTLED_429,
                "503": _error("Too many password checks waiting (see Retry-After)", LOGINS_BUSY),
            })},
        "/auth/expire": {"post": _op(
            "Revoke the presented token until its own expiry (survives restarts); a presented "
            "API key is revoked for good", tag="auth",
            security=True, responses={
                "200": _ok("Revoked", REF_MESSAGE, {"message": "The token has been manually expired."}),
                "401": USER_401,
                "503": DATABASE_503,
            })},
        "/auth/password": {"post": _op(
            "Change one's own password", tag="auth", security=True,
            body=_body(_obj({"old_password": STR, "new_password": STR},
                            ["old_password", "new_password"])),
            responses={
                "200": _ok("Changed", REF_MESSAGE, {"message": "Password has been changed."}),
                "400": BAD_JSON,
                "401": USER_401,
                "408": BODY_TIMEOUT,
                "413": TOO_LARGE,
                "422": _error("Missing field, short new password or wrong old password",
                              f"old_password: {MISSING}", "new_password: Shorter than minimum length 8.",
                              "old_password: Password is incorrect."),
                "429": THROTTLED_429,
                "503": _error("Too many password checks waiting, or the database is busy or takes "
                              "no writes (see Retry-After)", LOGINS_BUSY, Busy().message,
                              DatabaseUnwritable().message),
            })},
        "/users": {
            "get": _op("List users", tag="users", security=True, responses={
                "200": _ok("Users", _obj({"users": {"type": "array", "items": _obj(
                    {"id": STR, "admin": BOOL}, ["id", "admin"])}}, ["users"])),
                "401": ADMIN_401,
            }),
            "post": _op(
                "Create a user; its generated password is shown only here", tag="users",
                security=True, body=_body(_obj({"uid": STR, "admin": BOOL}), required=False),
                responses={
                    "200": _ok("Created", _obj({"uid": STR, "password": STR, "admin": BOOL},
                                               ["uid", "password", "admin"])),
                    "400": BAD_JSON,
                    "401": ADMIN_401,
                    "408": BODY_TIMEOUT,
                    "413": TOO_LARGE,
                    "422": _error("Bad field or taken uid", USER_EXISTS,
                                  f"admin: {NOT_BOOLEAN}", f"uid: {UID_RULE}"),
                    "503": DATABASE_503,
                }),
        },
        "/users/{uid}/password": {"post": _op(
            "Reset a user's password to a new generated one", tag="users", security=True,
            params=[UID_PARAM], responses={
                "200": _ok("New password", _obj({"password": STR}, ["password"])),
                "401": ADMIN_401,
                "422": NO_SUCH_USER_422,
                "503": DATABASE_503,
            })},
        "/users/{uid}": {"delete": _op(
            "Delete a user (never the last admin)", tag="users", security=True,
            params=[UID_PARAM], responses={
                "200": _ok("Deleted", REF_MESSAGE, {"message": "User 'alice' has been deleted"}),
                "401": ADMIN_401,
                "422": _error("Unknown user or the last admin", UNKNOWN_USER, ONLY_ADMIN),
                "503": DATABASE_503,
            })},
        "/users/{uid}/admin": {"post": _op(
            "Toggle a user's admin flag (never the last admin)", tag="users", security=True,
            params=[UID_PARAM], responses={
                "200": _ok("New flag", _obj({"uid": STR, "admin": BOOL}, ["uid", "admin"])),
                "401": ADMIN_401,
                "422": _error("Unknown user or the last admin", UNKNOWN_USER, ONLY_ADMIN),
                "503": DATABASE_503,
            })},
        **_key_paths(),
        **_usage_paths(),
        "/languages": {"get": _op("Languages of all voices, sorted", tag="voices", responses={
            "200": _ok("Languages", _obj({"languages": {"type": "array", "items": STR}}, ["languages"])),
            "204": {"description": "No voices"},
        })},
        "/languages/{iso}/accents": {"get": _op(
            "Accents of one language", tag="voices",
            params=[{"name": "iso", "in": "path", "required": True, "schema": STR}],
            responses={
                "200": _ok("Accents", _obj({"language": STR, "accents": {"type": "array", "items": STR}},
                                           ["language", "accents"])),
                "404": _error("No voice in that language", "Language could not be found"),
            })},
        "/voices": {
            "get": _op("Voices matching the query parameters", tag="voices", params=[
                {"name": name, "in": "query", "required": False, "schema": schema}
                for name, schema in _voice_filters().items()], responses=voices_responses),
            "post": _op("Voices matching an optional JSON body of filters", tag="voices",
                        body=_body(_obj(_voice_filters()), required=False),
                        responses={**voices_responses, "400": _error(
                            "Bad JSON, or accent without language", INVALID_JSON,
                            "For accent to be queried, language has to be provided as well."),
                            "408": BODY_TIMEOUT, "413": TOO_LARGE}),
        },
        "/voices/{voice_id}": {"get": _op(
            "One voice", tag="voices",
            params=[{"name": "voice_id", "in": "path", "required": True, "schema": STR}],
            responses={"200": _ok("The voice", REF_VOICE),
                       "404": _error("Unknown voice", "Voice could not be found")})},
        "/speech": {"post": _op(
            "Synthesise text; the audio is streamed (chunked) as it is made", tag="speech",
            security=True,
            description=("A streamed WAV uses the streaming header convention (RIFF and data sizes "
                         "0xFFFFFFFF). If synthesis fails after the status line, the connection is "
                         "aborted (an incomplete chunked body). \"stream\": false returns a complete "
                         "file with exact sizes and Content-Length."),
            body=_body(_obj({"voice_id": STR, "text": STR,
                             "audio_format": {"type": "string", "enum": list(FORMAT_NAMES),
                                              "default": "wav"},
                             "stream": {"type": "boolean", "default": True},
                             **_speech_shape()},
                            ["voice_id", "text"])),
            responses={
                "200": {"description": "Audio", "content": {
                    _media_type(fmt): {"schema": {"type": "string", "format": "binary"}}
                    for fmt in FORMAT_NAMES}},
                "400": _error("Bad JSON or unknown voice", INVALID_JSON, "Voice could not be found"),
                "401": USER_401,
                "408": BODY_TIMEOUT,
                "413": _error("Body or text over its limit (max_body_bytes, max_text_length), or the "
                              "audio over max_audio_seconds before the first byte was sent, or the text "
                              "alone over a character quota"),
                "422": _error("Bad field, blank text or refused markup",
                              f"voice_id: {MISSING} Provide a voice id", f"text: {MISSING}",
                              f"audio_format: Not a valid choice. Valid choices: {'|'.join(FORMAT_NAMES)}",
                              "speed: Must be between 0.25 and 4.",
                              "sample_rate: Not a rate opus allows. Valid choices: "
                              + "|".join(map(str, OPUS_RATES)),
                              "text: Must not be empty or blank."),
                "429": _error("Over one of the caller's quotas (see Retry-After)",
                              QUOTA_MINUTE_EXAMPLE, QUOTA_DAY_EXAMPLE, QUOTA_CONCURRENT_EXAMPLE),
                "500": _error("Synthesis failed before the status line was sent",
                              "Speech synthesis failed"),
                "503": _error("Queue full or shutting down (see Retry-After)",
                              "Server is busy, try again later",
                              "Server is shutting down, try again later"),
            })},
        "/speech/marks": {"post": _op(
            "When each sentence, word and SSML mark of a speech is heard, as JSON lines",
            tag="speech", security=True,
            description=("Takes every field of /speech (the audio is made and dropped) and "
                         "speech_mark_types. Each line: {time (ms from the start of the audio), "
                         "type, start, end (character offsets into text), value}, streamed as the "
                         "speech is made. Word marks come from engines that report words (eSpeak)."),
            body=_body(_obj({"voice_id": STR, "text": STR,
                             "speech_mark_types": {"type": "array", "items": {
                                 "type": "string", "enum": list(MARK_TYPES)},
                                 "default": list(MARK_TYPES)}},
                            ["voice_id", "text"])),
            responses={
                "200": {"description": "Marks, one JSON object per line", "content": {
                    "application/x-ndjson": {"schema": {"type": "string"}}}},
                **_TIMING_ERRORS,
            })},
        "/speech/captions": {"post": _op(
            "WebVTT captions of a speech: cues of at most two lines, timed by its word marks",
            tag="speech", security=True,
            description="Takes every field of /speech; the audio is made and dropped.",
            body=_body(_obj({"voice_id": STR, "text": STR}, ["voice_id", "text"])),
            responses={
                "200": {"description": "WebVTT", "content": {
                    "text/vtt": {"schema": {"type": "string"}}}},
                **_TIMING_ERRORS,
            })},
        **_v1_paths(),
        **_job_paths(),
        **_stream_path(),
        "/": {"get": _op(
            "Where to go: browsers to the admin page, API clients a JSON index", tag="operations",
            responses={
                "200": _ok("The index (an Accept without text/html)",
                           _obj({"name": STR, "version": STR, "links": _obj(
                               {"docs": STR, "openapi": STR, "admin": STR, "health": STR,
                                "ready": STR})}, ["name", "version", "links"]),
                           {"name": "idlakd", "version": __version__, "links": {
                               "docs": "/docs", "openapi": "/openapi.json", "admin": "/admin",
                               "health": "/healthz", "ready": "/readyz"}}),
                "302": {"description": "A browser (Accept with text/html): Location /admin"},
            })},
        "/healthz": {"get": _op("Liveness: the process answers", tag="operations", responses={
            "200": _ok("Alive", _obj({"status": STR, "version": STR, "uptime_seconds": {"type": "number"}})),
        })},
        "/readyz": {"get": _op(
            "Readiness: database reachable, voices loaded, synthesis can start", tag="operations",
            responses={
                "200": _ok("Ready", _obj({"status": STR, "database": STR, "voices": {"type": "integer"},
                                          "synthesis": STR})),
                "503": _error("Not ready (the message lists why; see Retry-After)",
                              "Not ready: no voices loaded", "Not ready: database not writable",
                              "Not ready: the server is draining before it shuts down",
                              "Not ready: the server is shutting down"),
            })},
        "/metrics": {"get": _op(
            "Prometheus metrics (loopback only when metrics_local_only)", tag="operations",
            responses={
                "200": {"description": "Prometheus text format",
                        "content": {"text/plain": {"schema": STR}}},
                "403": _error("Not a local client", "Metrics are served to local addresses only"),
            })},
        "/openapi.json": {"get": _op("This document", tag="operations", responses={
            "200": _ok("OpenAPI 3.1", {"type": "object"})})},
        "/docs": {"get": _op("This document, rendered (nothing loaded from elsewhere)",
                             tag="operations", responses={
                                 "200": {"description": "HTML page",
                                         "content": {"text/html": {"schema": STR}}}})},
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "idlakd",
            "version": __version__,
            "description": ("Speech synthesis server for Idlak (eSpeak NG built in). Every error body "
                            "is {\"message\": ...}; every response carries X-Request-Id; every 401 "
                            "carries WWW-Authenticate: Bearer. Unknown routes answer 404 and wrong "
                            "methods 405, both with the error shape. Under /v1/ (OpenAI's door) "
                            "errors take OpenAI's shape {\"error\": {message, type, param, "
                            "code}} instead."),
        },
        "tags": [{"name": n} for n in ("auth", "users", "voices", "speech", "openai",
                                        "operations")],
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {
                "type": "http", "scheme": "bearer", "bearerFormat": "JWT or API key",
                "description": "Authorization: Bearer <token or API key> (a bare <token> is "
                               "accepted too); API keys start with idk_"}},
            "schemas": {
                "Error": _obj({"message": STR, "code": STR}, ["message"]),
                "OpenAIError": _obj({"error": _obj({
                    "message": STR, "type": STR, "param": {"type": ["string", "null"]},
                    "code": {"type": ["string", "null"]}}, ["message", "type", "param", "code"])},
                    ["error"]),
                "Message": _obj({"message": STR}, ["message"]),
                "Voice": _obj({"voice_id": STR, "id": STR, "name": STR, "language": STR,
                               "accent": STR, "gender": {"type": "string", "enum": ["male", "female"]},
                               "sample_rate": {"type": ["integer", "null"]}, "engine": STR},
                              ["voice_id", "id", "name", "language", "accent", "gender"]),
            },
        },
    }


SPEC: Final = build_spec()
SPEC_BYTES: Final = json.dumps(SPEC, separators=(",", ":")).encode()
# The page runs one inline script; the policy allows exactly that script and same-origin fetches.
DOCS_CSP: Final = (
    "default-src 'none'; connect-src 'self'; style-src 'unsafe-inline'; img-src 'self' data:; "
    "script-src 'sha256-" + base64.b64encode(hashlib.sha256(DOCS_SCRIPT.encode()).digest()).decode()
    + "'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


def spec() -> dict[str, Any]:
    """A copy of the document (callers may change it)."""
    return copy.deepcopy(SPEC)


async def openapi_json(request: web.Request) -> web.Response:
    """GET /openapi.json."""
    return web.Response(body=SPEC_BYTES, content_type=JSON)


async def docs_page(request: web.Request) -> web.Response:
    """GET /docs: a page that renders /openapi.json with its own inline script."""
    return web.Response(text=DOCS_HTML, content_type="text/html",
                        headers={"Content-Security-Policy": DOCS_CSP,
                                 "X-Content-Type-Options": "nosniff",
                                 "Referrer-Policy": "no-referrer"})
