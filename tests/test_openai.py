"""OpenAI's door from the outside: the official openai client, the real app on a real port."""

from __future__ import annotations

import asyncio
import base64
import json
import re
from pathlib import Path
from typing import Any, AsyncIterator

import aiohttp
import imageio_ffmpeg  # type: ignore[import-untyped]
import openai
import pytest
from aiohttp.test_utils import TestClient

from idlakd.synth.options import MARK_TYPES
from idlakd.web.app import create_app
from idlakd.web.keys import synth_key
from tests.helpers.app import ClientFactory, bearer, login, make_config
from tests.helpers.audio import decoded_seconds

FFMPEG = imageio_ffmpeg.get_ffmpeg_exe()
TEXT = "Hello there."
SENTENCES = "The first sentence is here. A second one follows it. And a third ends the text."
# response_format -> (Content-Type, the codec ffmpeg finds in the bytes)
FORMATS = {
    "mp3": ("audio/mpeg", "mp3"),
    "wav": ("audio/wav", "pcm_s16le"),
    "opus": ("audio/ogg; codecs=opus", "opus"),
    "aac": ("audio/aac", "aac"),
    "flac": ("audio/flac", "flac"),
    "pcm": ("audio/L16; rate=24000; channels=1", "pcm_s16le"),
}
# Raw PCM has no header: ffmpeg is told what OpenAI documents it to be.
PCM_INPUT = ("-f", "s16le", "-ar", "24000", "-ac", "1")
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error",
               404: "invalid_request_error", 413: "invalid_request_error",
               422: "invalid_request_error", 429: "rate_limit_error"}


@pytest.fixture
async def api_key(client: TestClient[Any, Any], user_token: str) -> str:
    """An API key of the user alice (what an OpenAI client is given as its api_key)."""
    resp = await client.post("/auth/keys", json={"name": "openai"}, headers=bearer(user_token))
    assert resp.status == 200, await resp.text()
    key: str = (await resp.json())["key"]
    return key


def openai_client(client: TestClient[Any, Any], key: str) -> openai.AsyncOpenAI:
    """The official client pointed at the app, without retries (a 429 must reach the test)."""
    return openai.AsyncOpenAI(base_url=str(client.make_url("/v1/")), api_key=key, max_retries=0)


@pytest.fixture
async def oa(client: TestClient[Any, Any], api_key: str) -> AsyncIterator[openai.AsyncOpenAI]:
    """The official client with alice's API key; closed after the test."""
    async with openai_client(client, api_key) as oa_client:
        yield oa_client


async def probe(data: bytes, *input_args: str) -> tuple[str, int]:
    """The codec and sample rate ffmpeg finds when it decodes data (it fails on broken bytes)."""
    proc = await asyncio.create_subprocess_exec(
        FFMPEG, "-hide_banner", *input_args, "-i", "pipe:0", "-f", "null", "-",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE)
    _, err = await proc.communicate(data)
    text = err.decode(errors="replace")
    assert proc.returncode == 0, text
    stream = re.search(r"Audio: (\w+).*?, (\d+) Hz", text)
    assert stream, text
    return stream.group(1), int(stream.group(2))


def assert_openai_shape(body: Any, status: int, code: str | None = None,
                        param: str | None = None) -> dict[str, Any]:
    """OpenAI's error shape: {"error": {message, type, param, code}} and nothing else."""
    assert set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert isinstance(error["message"], str) and error["message"], error
    assert error["type"] == ERROR_TYPES.get(status, error["type"]), error
    if code is not None:
        assert error["code"] == code, error
    if param is not None:
        assert error["param"] == param, error
    return dict(error)


async def raw_error(resp: aiohttp.ClientResponse, status: int, code: str | None = None,
                    param: str | None = None) -> dict[str, Any]:
    """A raw answer in OpenAI's error shape with this status (and a request id)."""
    text = await resp.text()
    assert resp.status == status, text
    assert resp.headers["Content-Type"] == "application/json"
    assert resp.headers.get("X-Request-Id")
    return assert_openai_shape(json.loads(text), status, code, param)


@pytest.mark.parametrize("response_format", list(FORMATS))
async def test_speech_create_in_every_format(oa: openai.AsyncOpenAI, response_format: str) -> None:
    """speech.create answers each of OpenAI's formats with its content type and decodable bytes."""
    answer = await oa.audio.speech.create(model="tts-1", voice="alloy", input=TEXT,
                                          response_format=response_format)  # type: ignore[arg-type]
    content_type, codec = FORMATS[response_format]
    assert answer.response.headers["Content-Type"] == content_type
    args = PCM_INPUT if response_format == "pcm" else ()
    found_codec, rate = await probe(answer.content, *args)
    assert found_codec == codec
    if response_format == "pcm":
        assert rate == 24000
        # The same text as wav: the same duration (the header alone differs).
        wav = await oa.audio.speech.create(model="tts-1", voice="alloy", input=TEXT,
                                           response_format="wav")
        pcm_seconds = len(answer.content) / 2 / 24000
        assert pcm_seconds == pytest.approx(await decoded_seconds(FFMPEG, wav.content), rel=0.05)
    else:
        assert 0.4 < await decoded_seconds(FFMPEG, answer.content) < 5


async def test_default_format_is_mp3_and_aliases_speak(oa: openai.AsyncOpenAI) -> None:
    """No response_format: mp3. An alias (alloy=sarah) and the voice id speak alike."""
    by_alias = await oa.audio.speech.create(model="gpt-4o-mini-tts", voice="alloy", input=TEXT,
                                            instructions="Speak cheerfully.")
    assert by_alias.response.headers["Content-Type"] == "audio/mpeg"
    assert (await probe(by_alias.content))[0] == "mp3"
    # eSpeak's voices vary their samples a little from run to run, not their timing: the
    # same voice says the text in the same time, another voice (onyx=callum) does not.
    sizes = []
    for voice in ("alloy", "sarah", {"id": "sarah"}, {"id": "alloy"}, "onyx"):
        answer = await oa.audio.speech.create(
            model="tts-1-hd", voice=voice, input=TEXT,  # type: ignore[arg-type]
            response_format="wav")
        sizes.append(len(answer.content))
    assert max(sizes[:4]) - min(sizes[:4]) < sizes[0] * 0.01
    assert abs(sizes[4] - sizes[0]) > sizes[0] * 0.05


async def test_streaming_response_iter_bytes(oa: openai.AsyncOpenAI) -> None:
    """with_streaming_response: chunked bytes, in order, that decode to the whole text's audio."""
    async with oa.audio.speech.with_streaming_response.create(
            model="tts-1", voice="nova", input=SENTENCES, response_format="mp3") as resp:
        assert resp.headers["Transfer-Encoding"] == "chunked"
        assert "Content-Length" not in resp.headers
        pieces = [piece async for piece in resp.iter_bytes()]
    data = b"".join(pieces)
    assert len(pieces) >= 2 and data
    assert (await probe(data))[0] == "mp3"
    assert 3 < await decoded_seconds(FFMPEG, data) < 15


async def test_input_past_openais_4096_is_accepted(oa: openai.AsyncOpenAI) -> None:
    """input up to max_text_length, not OpenAI's 4096: a 5000-character text starts speaking."""
    text = (SENTENCES + " ") * 63
    assert 4096 < len(text) <= 20000
    async with oa.audio.speech.with_streaming_response.create(
            model="tts-1", voice="alloy", input=text) as resp:
        assert resp.status_code == 200
        async for piece in resp.iter_bytes():
            assert piece
            break  # closing the answer early stops the rest of its synthesis


def sse_events(body: bytes) -> list[dict[str, Any]]:
    """The events of an SSE body: each a data line of JSON, ended by a blank line."""
    assert body.endswith(b"\n\n"), body[-80:]
    events = []
    for block in body.split(b"\n\n")[:-1]:
        assert block.startswith(b"data: ") and b"\n" not in block, block[:80]
        events.append(json.loads(block[len(b"data: "):]))
    return events


async def speak_sse(client: TestClient[Any, Any], key: str, **fields: Any) -> list[dict[str, Any]]:
    """POST /v1/audio/speech with stream_format sse; the events."""
    resp = await client.post("/v1/audio/speech", headers=bearer(key), json={
        "model": "gpt-4o-mini-tts", "voice": "alloy", "input": SENTENCES,
        "stream_format": "sse", **fields})
    body = await resp.read()
    assert resp.status == 200, body
    assert resp.headers["Content-Type"] == "text/event-stream"
    assert resp.headers["Transfer-Encoding"] == "chunked"
    return sse_events(body)


async def test_sse_deltas_then_done_with_usage(client: TestClient[Any, Any], api_key: str) -> None:
    """SSE: speech.audio.delta events whose base64 audio, joined in order, is the mp3; then done."""
    events = await speak_sse(client, api_key, response_format="mp3")
    *deltas, done = events
    assert len(deltas) >= 2 and all(e["type"] == "speech.audio.delta" for e in deltas)
    assert all(set(e) == {"type", "audio"} for e in deltas)
    data = b"".join(base64.b64decode(e["audio"], validate=True) for e in deltas)
    assert (await probe(data))[0] == "mp3"
    seconds = await decoded_seconds(FFMPEG, data)
    assert done["type"] == "speech.audio.done"
    usage = done["usage"]
    assert usage["input_tokens"] == len(SENTENCES)
    # output: milliseconds of audio made (mp3 pads a little at its ends).
    assert usage["output_tokens"] == pytest.approx(seconds * 1000, rel=0.1)
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]


async def test_sse_wav_deltas_are_the_wav(client: TestClient[Any, Any], api_key: str) -> None:
    """The deltas carry the format's own bytes: a WAV starts with its RIFF header."""
    *deltas, done = await speak_sse(client, api_key, response_format="wav")
    data = b"".join(base64.b64decode(e["audio"]) for e in deltas)
    assert data[:4] == b"RIFF" and data[8:12] == b"WAVE"
    assert (await probe(data))[0] == "pcm_s16le"
    assert done["type"] == "speech.audio.done"


async def test_sse_client_that_hangs_up_stops_its_synthesis(client: TestClient[Any, Any],
                                                             api_key: str) -> None:
    """An SSE client gone after its first delta: stream abandoned, workers and ffmpeg stopped."""
    service = client.app[synth_key]
    resp = await client.post("/v1/audio/speech", headers=bearer(api_key), json={
        "model": "tts-1", "voice": "alloy", "input": SENTENCES * 40, "stream_format": "sse"})
    assert resp.status == 200
    first = await resp.content.readline()
    assert first.startswith(b'data: {"type":"speech.audio.delta","audio":"')
    resp.close()
    for _ in range(100):
        stats = service.stats()
        if stats.disconnects and not service.busy_pids() and not stats.transcoders:
            break
        await asyncio.sleep(0.05)
    assert service.stats().disconnects == 1
    assert service.busy_pids() == [] and service.stats().transcoders == 0


async def test_sse_marks(client: TestClient[Any, Any], api_key: str) -> None:
    """marks: ["sentence"] adds speech.mark events: one per sentence, in time order, before done."""
    events = await speak_sse(client, api_key, response_format="mp3", marks=["sentence"])
    assert events[-1]["type"] == "speech.audio.done"
    marks = [e["mark"] for e in events if e["type"] == "speech.mark"]
    assert [m["type"] for m in marks] == ["sentence"] * 3
    times = [m["time"] for m in marks]
    assert times == sorted(times) and times[0] == 0 and times[-1] > 0
    for mark in marks:
        assert SENTENCES[mark["start"]:mark["end"]].strip() == mark["value"].strip()
    # Without marks asked: none.
    plain = await speak_sse(client, api_key, response_format="mp3")
    assert not [e for e in plain if e["type"] == "speech.mark"]


async def test_models_list(oa: openai.AsyncOpenAI, client: TestClient[Any, Any],
                           api_key: str) -> None:
    """models.list(): the configured names, in OpenAI's list shape."""
    page = await oa.models.list()
    assert [m.id for m in page.data] == ["tts-1", "tts-1-hd", "gpt-4o-mini-tts"]
    assert all(m.object == "model" and m.owned_by == "idlakd" and m.created > 0
               for m in page.data)
    resp = await client.get("/v1/models", headers=bearer(api_key))
    body = await resp.json()
    assert body["object"] == "list"
    assert set(body["data"][0]) == {"id", "object", "created", "owned_by"}


async def test_voices_list(client: TestClient[Any, Any], api_key: str) -> None:
    """/v1/audio/voices: the aliases with the voice each speaks with, then every voice id."""
    resp = await client.get("/v1/audio/voices", headers=bearer(api_key))
    assert resp.status == 200
    body = await resp.json()
    assert body["object"] == "list"
    entries = {e["id"]: e for e in body["data"]}
    assert all(set(e) == {"id", "object", "voice_id", "alias", "name", "language", "accent",
                          "gender"} for e in body["data"])
    assert entries["alloy"] == {"id": "alloy", "object": "voice", "voice_id": "sarah",
                                "alias": True, "name": "Sarah", "language": "en",
                                "accent": "us", "gender": "female"}
    assert entries["onyx"]["voice_id"] == "callum"
    assert entries["alba"]["alias"] is False and entries["alba"]["voice_id"] == "alba"
    voices = (await (await client.get("/voices")).json())["voices"]
    assert {v["voice_id"] for v in voices} <= set(entries)
    assert [e["alias"] for e in body["data"]] == sorted((e["alias"] for e in body["data"]),
                                                       reverse=True)


async def test_aliases_of_missing_voices_are_not_listed(
        aiohttp_client: ClientFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An alias of no installed voice: left out of the list, answered as an unknown voice."""
    config = make_config(tmp_path, openai_voices="alloy=sarah,ghost=nobody")
    client = await aiohttp_client(create_app(config))
    password = re.search(r"<User admin:([^:]+):True>", capsys.readouterr().out)
    assert password
    token = await login(client, "admin", password.group(1))
    body = await (await client.get("/v1/audio/voices", headers=bearer(token))).json()
    ids = {e["id"] for e in body["data"]}
    assert "alloy" in ids and "ghost" not in ids and "nova" not in ids
    resp = await client.post("/v1/audio/speech", headers=bearer(token), json={
        "model": "tts-1", "voice": "ghost", "input": TEXT})
    await raw_error(resp, 400, "voice_not_found", "voice")


async def test_unknown_voice_is_bad_request(oa: openai.AsyncOpenAI) -> None:
    """A voice that is neither an id nor an alias: 400, the client's BadRequestError."""
    with pytest.raises(openai.BadRequestError) as caught:
        await oa.audio.speech.create(model="tts-1", voice="marin", input=TEXT)
    assert caught.value.status_code == 400
    assert caught.value.code == "voice_not_found" and caught.value.param == "voice"
    assert caught.value.type == "invalid_request_error"
    assert_openai_shape(caught.value.response.json(), 400, "voice_not_found", "voice")


async def test_unknown_model_is_not_found(oa: openai.AsyncOpenAI) -> None:
    """A model outside openai_models: 404 model_not_found (as OpenAI answers), NotFoundError."""
    with pytest.raises(openai.NotFoundError) as caught:
        await oa.audio.speech.create(model="tts-2", voice="alloy", input=TEXT)
    assert caught.value.code == "model_not_found" and caught.value.param == "model"
    assert "tts-1|tts-1-hd|gpt-4o-mini-tts" in caught.value.message


async def test_bad_key_is_authentication_error(client: TestClient[Any, Any], api_key: str) -> None:
    """A wrong API key, a garbage token, or none: 401 in OpenAI's shape, AuthenticationError."""
    wrong = api_key[:-4] + ("AAAA" if not api_key.endswith("AAAA") else "BBBB")
    for key in (wrong, "not-a-token"):
        async with openai_client(client, key) as bad:
            with pytest.raises(openai.AuthenticationError) as caught:
                await bad.audio.speech.create(model="tts-1", voice="alloy", input=TEXT)
            assert caught.value.type == "authentication_error"
            assert caught.value.response.headers["WWW-Authenticate"] == "Bearer"
            with pytest.raises(openai.AuthenticationError):
                await bad.models.list()
    resp = await client.get("/v1/models")
    await raw_error(resp, 401)


async def test_over_quota_is_rate_limit_error(client: TestClient[Any, Any], admin_token: str,
                                              oa: openai.AsyncOpenAI) -> None:
    """Over a daily character quota: 429 with Retry-After, the client's RateLimitError."""
    resp = await client.put("/users/alice/limits", json={"chars_per_day": 20},
                            headers=bearer(admin_token))
    assert resp.status == 200, await resp.text()
    await oa.audio.speech.create(model="tts-1", voice="alloy", input=TEXT)  # 12 of 20
    with pytest.raises(openai.RateLimitError) as caught:
        await oa.audio.speech.create(model="tts-1", voice="alloy", input=TEXT)
    error = caught.value
    assert error.status_code == 429 and error.type == "rate_limit_error"
    assert error.code == "quota_exceeded"
    assert int(error.response.headers["Retry-After"]) >= 1
    assert "characters per day" in error.message


@pytest.mark.parametrize(("fields", "param"), [
    ({"speed": 5}, "speed"),
    ({"speed": 0.1}, "speed"),
    ({"speed": True}, "speed"),
    ({"response_format": "ogg"}, "response_format"),
    ({"stream_format": "websocket"}, "stream_format"),
    ({"instructions": "x" * 4097}, "instructions"),
    ({"marks": ["word"]}, "marks"),
    ({"marks": ["phoneme"], "stream_format": "sse"}, "marks"),
    ({"input": "   "}, "input"),
    ({"voice": {"name": "alloy"}}, "voice"),
    ({"model": None}, "model"),
])
async def test_bad_fields_are_422(client: TestClient[Any, Any], api_key: str,
                                  fields: dict[str, Any], param: str) -> None:
    """Each bad field: 422 (UnprocessableEntityError) naming it as param, in OpenAI's shape."""
    body = {"model": "tts-1", "voice": "alloy", "input": TEXT, **fields}
    resp = await client.post("/v1/audio/speech", headers=bearer(api_key),
                             json={k: v for k, v in body.items() if v is not None})
    error = await raw_error(resp, 422, param=param)
    assert error["message"].startswith(f"{param}: ")


async def test_every_mark_type_is_accepted(client: TestClient[Any, Any], api_key: str) -> None:
    """marks takes every type the core knows (with sse)."""
    events = await speak_sse(client, api_key, input=TEXT, marks=list(MARK_TYPES))
    assert events[-1]["type"] == "speech.audio.done"


async def test_speed_reaches_the_synthesizer(oa: openai.AsyncOpenAI) -> None:
    """speed 2.0 makes the same text about half as long."""
    normal = await oa.audio.speech.create(model="tts-1", voice="alloy", input=SENTENCES,
                                          response_format="wav")
    fast = await oa.audio.speech.create(model="tts-1", voice="alloy", input=SENTENCES,
                                        response_format="wav", speed=2.0)
    ratio = (await decoded_seconds(FFMPEG, fast.content)) / (
        await decoded_seconds(FFMPEG, normal.content))
    assert ratio == pytest.approx(0.5, rel=0.1)


async def test_limits_and_other_errors_in_openai_shape(
        aiohttp_client: ClientFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Text over max_text_length (413), bad JSON (400), unknown /v1 route (404), wrong method
    (405): OpenAI's shape; the seed's routes keep theirs."""
    client = await aiohttp_client(create_app(make_config(tmp_path, max_text_length="40")))
    password = re.search(r"<User admin:([^:]+):True>", capsys.readouterr().out)
    assert password
    token = await login(client, "admin", password.group(1))
    resp = await client.post("/v1/audio/speech", headers=bearer(token), json={
        "model": "tts-1", "voice": "alloy", "input": "x" * 41})
    error = await raw_error(resp, 413, param="input")
    assert error["message"] == "input: Longer than the limit of 40 characters."
    resp = await client.post("/v1/audio/speech", headers=bearer(token), data=b"{nope")
    await raw_error(resp, 400)
    await raw_error(await client.get("/v1/nothing", headers=bearer(token)), 404)
    resp = await client.delete("/v1/models", headers=bearer(token))
    await raw_error(resp, 405)
    assert resp.headers["Allow"] == "GET"
    seed = await client.post("/speech", headers=bearer(token), data=b"{nope")
    assert seed.status == 400 and set(await seed.json()) == {"message"}
