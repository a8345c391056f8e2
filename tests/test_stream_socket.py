"""GET /v1/speech/stream from the outside: real WebSocket clients (aiohttp's, and the
`websockets` package) against the real app, workers and ffmpeg."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import imageio_ffmpeg
import pytest
import websockets
from aiohttp import WSMsgType
from aiohttp.test_utils import TestClient

from idlakd.web.keys import synth_key
from tests.helpers.admin import sign_in
from tests.helpers.app import bearer, login, make_config
from tests.helpers.audio import decode
from tests.helpers.processes import child_pids, wait_gone

FFMPEG = imageio_ffmpeg.get_ffmpeg_exe()
REPO = Path(__file__).resolve().parent.parent
PATH = "/v1/speech/stream"
TEXT = "Hello there. How are you today? I am well, thank you."
LONG = "A long sentence about nothing in particular, said again and again. " * 40


class Received:
    """What a socket sent: audio bytes, JSON events, and where in time each came."""

    def __init__(self) -> None:
        self.audio = bytearray()
        self.events: list[dict[str, Any]] = []
        self.binary_times: list[float] = []
        self.event_times: list[float] = []

    def types(self) -> list[str]:
        """The events' types, in order."""
        return [event["type"] for event in self.events]

    def of(self, kind: str) -> list[dict[str, Any]]:
        """The events of one type."""
        return [event for event in self.events if event["type"] == kind]


async def collect(ws: aiohttp.ClientWebSocketResponse, into: Received,
                  until: str | None = None) -> Received:
    """Read frames until the socket closes (or an event of type until came)."""
    async for msg in ws:
        now = time.perf_counter()
        if msg.type is WSMsgType.BINARY:
            into.audio += msg.data
            into.binary_times.append(now)
        elif msg.type is WSMsgType.TEXT:
            event = json.loads(msg.data)
            into.events.append(event)
            into.event_times.append(now)
            if event["type"] == until:
                break
    return into


async def deltas(ws: aiohttp.ClientWebSocketResponse, text: str, size: int = 5,
                 every: float = 0.0) -> None:
    """Send text as an LLM would: small deltas."""
    for i in range(0, len(text), size):
        await ws.send_json({"type": "text", "text": text[i:i + size]})
        if every:
            await asyncio.sleep(every)


async def connect(client: TestClient[Any, Any], token: str | None,
                  **start: Any) -> aiohttp.ClientWebSocketResponse:
    """A socket authenticated by header, started with start's fields (voice alba, pcm)."""
    ws = await client.ws_connect(PATH, headers=bearer(token) if token else None)
    await ws.send_json({"type": "start", "voice_id": "alba", **start})
    return ws


async def speak_then_close(ws: aiohttp.ClientWebSocketResponse, text: str) -> Received:
    """Send text in deltas and end; everything until the close."""
    await deltas(ws, text)
    await ws.send_json({"type": "end"})
    return await collect(ws, Received())


async def expect_error(ws: aiohttp.ClientWebSocketResponse, close: int,
                       message: str | None = None, code: str | None = None) -> dict[str, Any]:
    """The socket's error event, then its close with close; returns the event."""
    got = await collect(ws, Received())
    errors = got.of("error")
    assert len(errors) == 1, got.events
    error = errors[0]
    assert set(error) == {"type", "message", "code"}, error
    if message is not None:
        assert error["message"] == message
    if code is not None:
        assert error["code"] == code
    assert ws.close_code == close, (ws.close_code, error)
    return error


async def speech_seconds(client: TestClient[Any, Any], token: str, text: str) -> float:
    """Seconds of /speech's complete WAV for text (the reference duration)."""
    resp = await client.post("/speech", headers=bearer(token),
                             json={"voice_id": "alba", "text": text, "stream": False})
    assert resp.status == 200
    decoded = await decode(FFMPEG, await resp.read())
    return len(decoded.samples) / decoded.rate


async def test_header_auth_speaks_the_text_as_speech_does(client: TestClient[Any, Any],
                                                          user_token: str) -> None:
    ws = await connect(client, user_token, marks=True)
    got = await speak_then_close(ws, TEXT)
    assert ws.close_code == 1000
    started = got.events[0]
    assert started["type"] == "started" and started["audio_format"] == "pcm"
    rate = started["sample_rate"]
    assert started["content_type"] == f"audio/L16; rate={rate}; channels=1"
    assert got.types()[-1] == "done"
    assert got.events[-1]["usage"]["characters"] == len(TEXT)
    seconds = len(got.audio) / 2 / rate
    reference = await speech_seconds(client, user_token, TEXT)
    assert abs(seconds - reference) / reference < 0.05, (seconds, reference)
    assert abs(got.events[-1]["usage"]["audio_seconds"] - seconds) < 0.05
    # Marks over the socket: offsets continue across deltas and point into the text as sent.
    sentences = [e["mark"] for e in got.of("mark") if e["mark"]["type"] == "sentence"]
    assert [m["value"] for m in sentences] == ["Hello there.", "How are you today?",
                                               "I am well, thank you."]
    for mark in sentences:
        assert TEXT[mark["start"]:mark["end"]] == mark["value"]
    assert [m["time"] for m in sentences] == sorted(m["time"] for m in sentences)
    assert sentences[-1]["time"] / 1000 < seconds


async def test_the_websockets_package_speaks_too(client: TestClient[Any, Any],
                                                 user_token: str) -> None:
    """A second, independent client (the `websockets` package): header auth, deltas, flush,
    end; the audio is /speech's, the close is a normal 1000."""
    url = str(client.make_url(PATH)).replace("http://", "ws://")
    async with websockets.connect(url, additional_headers=bearer(user_token)) as ws:
        await ws.send(json.dumps({"type": "start", "voice_id": "alba"}))
        started = json.loads(await ws.recv())
        assert started["type"] == "started"
        for start in range(0, len(TEXT), 7):
            await ws.send(json.dumps({"type": "text", "text": TEXT[start:start + 7]}))
        await ws.send(json.dumps({"type": "flush"}))
        await ws.send(json.dumps({"type": "end"}))
        audio = bytearray()
        events: list[dict[str, Any]] = []
        async for message in ws:
            if isinstance(message, bytes):
                audio += message
            else:
                events.append(json.loads(message))
        assert ws.close_code == 1000
    assert [e["type"] for e in events] == ["flushed", "done"]
    seconds = len(audio) / 2 / started["sample_rate"]
    reference = await speech_seconds(client, user_token, TEXT)
    assert abs(seconds - reference) / reference < 0.05, (seconds, reference)


async def test_first_message_auth_with_an_api_key_and_mulaw(client: TestClient[Any, Any],
                                                            user_token: str) -> None:
    resp = await client.post("/auth/keys", json={"name": "socket"}, headers=bearer(user_token))
    key = (await resp.json())["key"]
    ws = await client.ws_connect(PATH)
    await ws.send_json({"type": "auth", "token": key})
    await ws.send_json({"type": "start", "voice_id": "alba", "audio_format": "mulaw"})
    got = await speak_then_close(ws, TEXT)
    assert ws.close_code == 1000 and got.events[0]["sample_rate"] == 8000
    decoded = await decode(FFMPEG, bytes(got.audio), ["-f", "mulaw", "-ar", "8000"])
    reference = await speech_seconds(client, user_token, TEXT)
    assert abs(len(decoded.samples) / 8000 - reference) / reference < 0.05


async def test_opus_stream_decodes(client: TestClient[Any, Any], user_token: str) -> None:
    ws = await connect(client, user_token, audio_format="opus")
    got = await speak_then_close(ws, TEXT)
    assert ws.close_code == 1000
    decoded = await decode(FFMPEG, bytes(got.audio))
    assert decoded.codec == "opus"
    reference = await speech_seconds(client, user_token, TEXT)
    assert abs(len(decoded.samples) / decoded.rate - reference) / reference < 0.08


async def test_no_credentials_within_5_seconds_closes_1008(client: TestClient[Any, Any]) -> None:
    ws = await client.ws_connect(PATH)
    began = time.perf_counter()
    error = await expect_error(ws, 1008, code="authentication_error")
    assert 4.5 < time.perf_counter() - began < 7
    assert "within 5 s" in error["message"]


async def test_bad_token_in_first_message_closes_1008(client: TestClient[Any, Any],
                                                      user_token: str) -> None:
    ws = await client.ws_connect(PATH)
    await ws.send_json({"type": "auth", "token": user_token[:-4] + "abcd"})
    await expect_error(ws, 1008, code="authentication_error")
    ws = await client.ws_connect(PATH)
    await ws.send_json({"type": "start", "voice_id": "alba"})  # not an auth message
    await expect_error(ws, 1008, code="authentication_error")


async def test_bad_token_on_the_upgrade_is_401_before_any_socket(
        client: TestClient[Any, Any], user_token: str) -> None:
    with pytest.raises(aiohttp.WSServerHandshakeError) as caught:
        await client.ws_connect(PATH, headers=bearer(user_token[:-4] + "abcd"))
    assert caught.value.status == 401
    resp = await client.get(PATH, headers=bearer(user_token))  # no Upgrade
    assert resp.status == 400
    assert "WebSocket upgrade" in (await resp.json())["error"]["message"]


async def test_admin_session_cookie_from_our_own_page_only(client: TestClient[Any, Any],
                                                           admin_password: str) -> None:
    """The browser's way: the signed-in page's cookie (path /admin) reaches /admin/speech/stream."""
    await sign_in(client, "admin", admin_password)
    own = f"http://{client.host}:{client.port}"
    ws = await client.ws_connect("/admin/speech/stream", headers={"Origin": own})
    await ws.send_json({"type": "start", "voice_id": "alba"})
    got = await speak_then_close(ws, "Hello.")
    assert ws.close_code == 1000 and len(got.audio) > 1000
    with pytest.raises(aiohttp.WSServerHandshakeError) as caught:
        await client.ws_connect("/admin/speech/stream", headers={"Origin": "https://evil.example"})
    assert caught.value.status == 403
    # Not sent to /v1/ by a browser (its path): there, the first message must authenticate.
    ws = await client.ws_connect(PATH, headers={"Origin": own})
    await ws.send_json({"type": "start", "voice_id": "alba"})
    await expect_error(ws, 1008, code="authentication_error")


async def test_flush_is_answered_after_its_audio(client: TestClient[Any, Any],
                                                 user_token: str) -> None:
    ws = await connect(client, user_token)
    got = await collect(ws, Received(), until="started")
    rate = got.events[0]["sample_rate"]
    part = "Hello there. How are"  # the flush says the unfinished sentence too
    await deltas(ws, part)
    await ws.send_json({"type": "flush"})
    await collect(ws, got, until="flushed")
    assert got.of("flushed") == [{"type": "flushed", "id": 1}]
    before = len(got.audio)
    reference = await speech_seconds(client, user_token, part)
    assert abs(before / 2 / rate - reference) / reference < 0.05
    # Nothing more comes until more text does.
    with pytest.raises(asyncio.TimeoutError):
        await ws.receive(timeout=0.5)
    await ws.send_json({"type": "flush"})  # nothing new: answered at once
    await ws.send_json({"type": "text", "text": " you?"})
    await ws.send_json({"type": "end"})
    await collect(ws, got)
    assert [e.get("id") for e in got.of("flushed")] == [1, 2]
    assert got.types()[-1] == "done" and len(got.audio) > before


async def test_clear_stops_the_audio_in_flight(client: TestClient[Any, Any],
                                               user_token: str) -> None:
    pids_before = child_pids()
    ws = await connect(client, user_token)
    got = await collect(ws, Received(), until="started")
    await ws.send_json({"type": "text", "text": LONG})
    msg = await ws.receive(timeout=20)
    assert msg.type is WSMsgType.BINARY
    cleared_at = time.perf_counter()
    await ws.send_json({"type": "clear"})
    old = Received()
    await collect(ws, old, until="cleared")
    last_old = old.binary_times[-1] if old.binary_times else cleared_at
    assert last_old - cleared_at < 0.25, last_old - cleared_at
    # Nothing of the old text after cleared.
    with pytest.raises(asyncio.TimeoutError):
        await ws.receive(timeout=0.5)
    new = await speak_then_close(ws, "Goodbye.")
    assert ws.close_code == 1000
    rate = got.events[0]["sample_rate"]
    reference = await speech_seconds(client, user_token, "Goodbye.")
    assert abs(len(new.audio) / 2 / rate - reference) / reference < 0.05
    assert new.events[-1]["usage"]["characters"] == len(LONG) + len("Goodbye.")
    assert client.app[synth_key].busy_pids() == []
    assert not await wait_gone(child_pids() - pids_before - set(
        client.app[synth_key].worker_pids()))


async def test_idle_socket_is_closed(tmp_path: Path, started_app_factory: Any) -> None:
    client = await started_app_factory(make_config(tmp_path, authorization="false",
                                                   stream_idle_seconds="1"))
    ws = await connect(client, None)
    began = time.perf_counter()
    error = await expect_error(ws, 1008, "No message for 1 s: the socket is closed",
                               "idle_timeout")
    assert error and 0.9 < time.perf_counter() - began < 3


async def test_text_without_an_end_is_spoken_after_the_delay(tmp_path: Path,
                                                             started_app_factory: Any) -> None:
    client = await started_app_factory(make_config(tmp_path, authorization="false",
                                                   max_buffer_delay_ms="200"))
    ws = await connect(client, None)
    await collect(ws, Received(), until="started")
    sent = time.perf_counter()
    await ws.send_json({"type": "text", "text": "Hello there"})
    msg = await ws.receive(timeout=5)
    assert msg.type is WSMsgType.BINARY and 0.2 <= time.perf_counter() - sent < 1.5
    await ws.close()


async def test_too_much_waiting_text_is_refused(tmp_path: Path, started_app_factory: Any) -> None:
    client = await started_app_factory(make_config(tmp_path, authorization="false",
                                                   max_text_length="100"))
    ws = await connect(client, None)
    await ws.send_json({"type": "text", "text": "word " * 15})
    await ws.send_json({"type": "text", "text": "word " * 10})
    await expect_error(ws, 1008, "text: More than the limit of 100 characters waiting to be "
                       "spoken.", "invalid_request_error")


@pytest.mark.parametrize("frames,message", [
    ([b"\x00\x01"], "Messages are JSON objects in text frames"),
    (["not json"], "Messages are JSON objects in text frames"),
    (["[1, 2]"], "Messages are JSON objects in text frames"),
    (["[" * 30000], "Messages are JSON objects in text frames"),  # once a RecursionError
    (['{"type": "speak"}'], "type: Not a valid choice. Valid choices: "
                            "auth|start|text|flush|clear|end"),
    (['{"type": "text", "text": "Hi."}'], "type: The first message must be start."),
    (['{"type": "start", "voice_id": "alba"}', '{"type": "start", "voice_id": "alba"}'],
     "type: start is sent once."),
    (['{"type": "start", "voice_id": "alba", "audio_format": "flac", "speed": 9}'],
     "audio_format: Not a valid choice. Valid choices: pcm|wav|mulaw|alaw|opus|mp3, "
     "speed: Must be between 0.25 and 4."),
    (['{"type": "start"}'], "voice_id: Missing data for required field. Provide a voice id"),
    (['{"type": "start", "voice_id": "nobody"}'], "voice_id: Voice could not be found."),
    (['{"type": "start", "voice_id": "alba"}', '{"type": "text", "text": 5}'],
     "text: Not a valid string."),
    (['{"type": "start", "voice_id": "alba"}', '{"type": "auth", "token": "x"}'],
     "type: auth is only the first message."),
    (['{"type": "start", "voice_id": "alba"}', '{"type": "end"}', '{"type": "flush"}'], None),
])
async def test_bad_messages_close_1008(client: TestClient[Any, Any], user_token: str,
                                       frames: list[str | bytes], message: str | None) -> None:
    ws = await client.ws_connect(PATH, headers=bearer(user_token))
    for frame in frames:
        if isinstance(frame, bytes):
            await ws.send_bytes(frame)
        else:
            await ws.send_str(frame)
    got = await collect(ws, Received())
    if message is None:  # end with nothing said: done at once, the flush after it unread
        assert got.types()[-1] == "done" and ws.close_code == 1000
        return
    errors = got.of("error")
    assert [e["message"] for e in errors] == [message]
    assert ws.close_code == 1008


async def test_messages_quote_the_same_field_errors_as_speech(client: TestClient[Any, Any],
                                                              user_token: str) -> None:
    bad = {"voice_id": "alba", "sample_rate": 7, "speed": "fast"}
    resp = await client.post("/speech", headers=bearer(user_token), json={**bad, "text": "Hi."})
    expected = (await resp.json())["message"]
    ws = await client.ws_connect(PATH, headers=bearer(user_token))
    await ws.send_json({"type": "start", **bad})
    await expect_error(ws, 1008, expected)


async def test_oversized_message_closes_the_socket(client: TestClient[Any, Any],
                                                   user_token: str) -> None:
    ws = await connect(client, user_token)
    await ws.send_json({"type": "text", "text": "a" * 70_000})
    await collect(ws, Received())
    assert ws.close_code == 1009  # aiohttp's "message too big"


async def test_client_that_vanishes_leaves_no_worker_or_ffmpeg(client: TestClient[Any, Any],
                                                               user_token: str) -> None:
    service = client.app[synth_key]
    pids_before = child_pids()
    ws = await connect(client, user_token, audio_format="mp3")
    await ws.send_json({"type": "text", "text": LONG})
    got = Received()
    while len(got.audio) < 2000:
        msg = await ws.receive(timeout=20)
        if msg.type is WSMsgType.BINARY:
            got.audio += msg.data
    assert service.busy_pids()  # mid-stream: a worker or ffmpeg at work
    transport = ws._writer.transport  # no close frame: the connection just drops
    transport.abort()
    for _ in range(100):
        if not service.busy_pids():
            break
        await asyncio.sleep(0.05)
    assert service.busy_pids() == []
    assert not await wait_gone(child_pids() - pids_before - set(service.worker_pids()))


async def test_slow_reader_is_dropped_and_nothing_piles_up(tmp_path: Path,
                                                           started_app_factory: Any) -> None:
    client = await started_app_factory(make_config(tmp_path, authorization="false",
                                                   synthesis_timeout_seconds="2",
                                                   max_text_length="30000"))
    service = client.app[synth_key]
    text = "A long sentence about nothing in particular, said again and again. " * 400
    ws = await connect(client, None)
    for i in range(0, len(text), 4000):
        await ws.send_json({"type": "text", "text": text[i:i + 4000]})
    await ws.send_json({"type": "end"})
    # Read nothing: the daemon's sends back up; it must stop producing and drop us.
    for _ in range(200):
        if service.stats().disconnects >= 1:
            break
        await asyncio.sleep(0.05)
    assert service.stats().disconnects == 1
    got = await collect(ws, Received())
    # What was in flight is bounded by socket buffers, not by the text (about 27 min of audio).
    total_pcm = 27 * 60 * 22050 * 2
    assert len(got.audio) < 16 * 1024 * 1024 < total_pcm
    assert "done" not in got.types()
    for _ in range(100):
        if not service.busy_pids():
            break
        await asyncio.sleep(0.05)
    assert service.busy_pids() == []


async def test_quota_characters_and_sessions(client: TestClient[Any, Any], admin_token: str,
                                             user_token: str) -> None:
    resp = await client.put("/users/alice/limits", headers=bearer(admin_token),
                            json={"chars_per_minute": 30, "concurrent": 1})
    assert resp.status == 200
    first = await connect(client, user_token)
    await collect(first, Received(), until="started")
    second = await connect(client, user_token)
    await expect_error(second, 1008, code="quota_exceeded")
    await first.send_json({"type": "text", "text": "Hello there. "})  # 13: within
    await first.send_json({"type": "text", "text": "How are you today, my friend? "})  # 43
    error = await expect_error(first, 1008, code="quota_exceeded")
    assert error["message"].startswith("Quota exceeded: 30 characters per minute")
    usage = await (await client.get("/auth/usage", headers=bearer(user_token))).json()
    assert (usage["characters"], usage["requests"], usage["running"]) == (13, 1, 0), usage


async def test_a_client_that_closes_gives_its_session_back(client: TestClient[Any, Any],
                                                         user_token: str) -> None:
    """The client closes the socket itself (before any text, after a flush, after a clear):
    each session's concurrency slot ends with it (found by an outside attack: it leaked)."""
    for steps in ([], [{"type": "text", "text": "Hello there. "}, {"type": "flush"}],
                  [{"type": "text", "text": "Hello there, a longer sentence. "},
                   {"type": "clear"}]):
        ws = await connect(client, user_token)
        await collect(ws, Received(), until="started")
        for step in steps:
            await ws.send_json(step)
        if steps:
            await collect(ws, Received(), until="flushed" if len(steps) == 2 and
                          steps[1]["type"] == "flush" else "cleared")
        await ws.close()
        for _ in range(100):
            usage = await (await client.get("/auth/usage", headers=bearer(user_token))).json()
            if usage["running"] == 0:
                break
            await asyncio.sleep(0.02)
        assert usage["running"] == 0, (steps, usage)


async def test_busy_limiter_closes_1013(tmp_path: Path, started_app_factory: Any) -> None:
    client = await started_app_factory(make_config(tmp_path, authorization="false",
                                                   max_concurrent_syntheses="1", max_queue="0"))
    first = await connect(client, None)
    await collect(first, Received(), until="started")
    second = await connect(client, None)
    error = await expect_error(second, 1013)
    assert error["message"] == "Server is busy, try again later"
    got = await speak_then_close(first, "Still here.")
    assert first.close_code == 1000 and len(got.audio) > 1000


async def test_login_token_and_usage_counted(client: TestClient[Any, Any], admin_password: str,
                                             user_token: str) -> None:
    token = await login(client, "admin", admin_password)
    ws = await connect(client, token)
    got = await speak_then_close(ws, "One. Two.")
    assert got.types()[-1] == "done"
    usage = await (await client.get("/auth/usage", headers=bearer(token))).json()
    assert (usage["characters"], usage["requests"]) == (len("One. Two."), 1), usage
    assert abs(usage["audio_seconds"] - got.events[-1]["usage"]["audio_seconds"]) < 0.01


async def test_the_example_client_saves_the_audio(tmp_path: Path, client: TestClient[Any, Any],
                                                  user_token: str) -> None:
    """docs/examples/stream_client.py runs as documented against a real server."""
    out = tmp_path / "speech.wav"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(REPO / "docs" / "examples" / "stream_client.py"),
        "--url", f"http://{client.host}:{client.port}", "--token", user_token,
        "--out", str(out), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    stdout, stderr = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, stderr.decode()
    assert "done: {'characters': " in stdout.decode()
    decoded = await decode(FFMPEG, out.read_bytes())
    assert len(decoded.samples) / decoded.rate > 5


async def test_wordless_text_waits_for_words(client: TestClient[Any, Any], user_token: str) -> None:
    """Punctuation alone has nothing to say: it stays (quietly) and leads the next words."""
    ws = await connect(client, user_token, marks=True)
    got = await collect(ws, Received(), until="started")
    await ws.send_json({"type": "text", "text": "... "})
    began = time.process_time()
    with pytest.raises(asyncio.TimeoutError):
        await ws.receive(timeout=1.0)  # past max_buffer_delay_ms: nothing to say, no busy loop
    assert time.process_time() - began < 0.3
    await ws.send_json({"type": "text", "text": "Hello."})
    await ws.send_json({"type": "end"})
    await collect(ws, got)
    assert got.types()[-1] == "done" and len(got.audio) > 1000
    assert got.events[-1]["usage"]["characters"] == len("... Hello.")
    words = [e["mark"] for e in got.of("mark") if e["mark"]["type"] == "word"]
    assert words[0]["value"] == "Hello." and words[0]["start"] == 4
