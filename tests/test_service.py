"""The Synthesizer end to end behind the web door helper: a tiny aiohttp app, real workers
(eSpeak, stand-in Idlak), real ffmpeg."""

from __future__ import annotations

import asyncio
import io
import os
import struct
import wave
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from tests.helpers.synth import STANDIN_ROOT, make_standin_voice
from tests.helpers.processes import child_pids, wait_gone
from tests.helpers.audio import decoded_seconds

from idlakd.config import Config, load_config
from idlakd.models import Voice
from idlakd.synth import wav
from idlakd.synth.options import SpeechOptions
from idlakd.synth.synthesizer import Synthesizer
from idlakd.synth.transcode import ffmpeg_executable
from idlakd.web.audio import SpeechRequest, speak
from idlakd.web.http import error_middleware
from idlakd.web.keys import config_key, runtime_key, synth_key
from idlakd.web.runtime import Runtime

voices_key = web.AppKey("voices", dict)

Served = tuple[TestClient[Any, Any], Synthesizer]
ServeFactory = Callable[..., Awaitable[Served]]

ESPEAK = Voice("en", "English", "en", "gb", "male", engine="espeak")


def standin(tmp_path: Path, name: str, **conf: Any) -> Voice:
    """A stand-in Idlak voice at 16 kHz (tangle engine)."""
    directory = make_standin_voice(tmp_path / f"voice-{name}", spk=name, srate=16000, **conf)
    return Voice(name, name, "en", "ga", "female", engine="tangle", directory=str(directory))


async def speech(request: web.Request) -> web.StreamResponse:
    """POST /speech {voice, text, format?, stream?}: straight to the door helper /speech uses
    (past its quota check, which needs the accounts this tiny app has not got)."""
    body = await request.json()
    voice = request.app[voices_key][body["voice"]]
    return await speak(request, SpeechRequest(
        voice, body["text"], body.get("format", "wav"),
        SpeechOptions(stream=body.get("stream", True))))


def tiny_app(config: Config, synthesizer: Synthesizer, *voices: Voice) -> web.Application:
    """An app with only POST /speech in front of the synthesizer."""
    app = web.Application(middlewares=[error_middleware])
    app[config_key] = config
    app[runtime_key] = Runtime()  # error_middleware names requests by it, as in the real app
    app[synth_key] = synthesizer
    app[voices_key] = {voice.id: voice for voice in voices}
    app.router.add_post("/speech", speech)
    return app


@pytest.fixture
async def serve(aiohttp_client: Callable[..., Awaitable[TestClient[Any, Any]]],
                tmp_path: Path) -> AsyncIterator[ServeFactory]:
    """Start a tiny app around a Synthesizer; afterwards no child process may be left."""
    clients: list[TestClient[Any, Any]] = []

    async def factory(*voices: Voice, **overrides: str) -> Served:
        values = {"state_dir": str(tmp_path / "state"), "idlak_root": str(STANDIN_ROOT),
                  "synthesis_timeout_seconds": "10", "workers_per_voice": "2"}
        values.update(overrides)
        config = load_config(env={}, overrides=values)
        service = Synthesizer(config)

        async def lifecycle(app: web.Application) -> AsyncIterator[None]:
            await service.start()
            yield
            await service.close()

        app = tiny_app(config, service, *voices)
        app.cleanup_ctx.append(lifecycle)
        client = await aiohttp_client(app)
        clients.append(client)
        return client, service

    yield factory
    for client in clients:
        await client.close()
    assert await wait_gone(child_pids(), 3) == set()


async def post(client: TestClient[Any, Any], voice: Voice, text: str,
               **fields: Any) -> tuple[aiohttp.ClientResponse, bytes]:
    """POST /speech and read the whole body."""
    response = await client.post("/speech", json={"voice": voice.id, "text": text, **fields})
    return response, await response.read()


def parse(data: bytes) -> tuple[int, bytes]:
    """Sample rate and PCM of a WAV body (streaming or exact header)."""
    info = wav.parse_wav(data)
    assert (info.channels, info.bits_per_sample) == (1, 16)
    return info.sample_rate, data[info.data_offset:info.data_offset + info.data_size]


async def test_wav_streams_chunked_and_grows_with_text(serve: ServeFactory) -> None:
    """Streamed WAV: chunked, streaming sizes, the rate eSpeak reports; more text, more audio."""
    client, _service = await serve(ESPEAK)
    short, short_body = await post(client, ESPEAK, "Hello world.")
    long, long_body = await post(client, ESPEAK,
                                 "Hello world. This is a longer text. It has three sentences.")
    for response in (short, long):
        assert response.status == 200
        assert response.headers["Content-Type"] == "audio/wav"
        assert response.headers["Transfer-Encoding"] == "chunked"
        assert "Content-Length" not in response.headers
    assert struct.unpack_from("<I", short_body, 40)[0] == 0xFFFFFFFF
    rate, short_pcm = parse(short_body)
    assert rate == 22050
    _rate, long_pcm = parse(long_body)
    assert len(short_pcm) > rate * 2 * 0.3
    assert len(long_pcm) > 2 * len(short_pcm)


async def test_complete_wav_has_exact_sizes(serve: ServeFactory) -> None:
    """stream false: Content-Length and a header the stdlib wave module accepts exactly."""
    client, _service = await serve(ESPEAK)
    response, body = await post(client, ESPEAK, "One. Two. Three.", stream=False)
    assert response.status == 200 and response.headers["Content-Length"] == str(len(body))
    with wave.open(io.BytesIO(body)) as reader:
        assert reader.getframerate() == 22050
        assert reader.getnframes() * 2 == len(body) - wav.HEADER_BYTES


@pytest.mark.parametrize("stream", [True, False])
async def test_ogg_and_mp3_are_valid_and_decode(serve: ServeFactory, stream: bool) -> None:
    """ogg starts with OggS, mp3 with ID3 or a frame sync; both decode to the WAV's duration."""
    client, service = await serve(ESPEAK)
    text = "Testing the encoders. Second sentence."
    _response, wav_body = await post(client, ESPEAK, text)
    rate, pcm = parse(wav_body)
    seconds = len(pcm) / 2 / rate
    ffmpeg = ffmpeg_executable(load_config(env={}, overrides={"state_dir": "/nonexistent"}))
    for audio_format, content_type in (("ogg", "audio/ogg"), ("mp3", "audio/mpeg")):
        response, body = await post(client, ESPEAK, text, format=audio_format, stream=stream)
        assert response.status == 200 and response.headers["Content-Type"] == content_type
        if stream:
            assert response.headers["Transfer-Encoding"] == "chunked"
        else:
            assert response.headers["Content-Length"] == str(len(body))
        if audio_format == "ogg":
            assert body[:4] == b"OggS"
        else:
            assert body[:3] == b"ID3" or (body[0] == 0xFF and body[1] & 0xE0 == 0xE0)
        assert abs(await decoded_seconds(ffmpeg, body) - seconds) < 0.15
    assert service.stats().transcoders == 0


async def test_chunks_are_written_in_text_order(serve: ServeFactory, tmp_path: Path) -> None:
    """Sentences synthesised in parallel come out in the order of the text."""
    voice = standin(tmp_path, "ord")
    client, service = await serve(voice)
    sentences = ["A very long first sentence with many many words in it.", "Short.",
                 "Another rather long sentence to slow this one down a bit.", "Tiny.",
                 "Middle length one here.", "End."]
    alone = []
    for sentence in sentences:
        _response, body = await post(client, voice, sentence)
        alone.append(parse(body)[1])
    response, body = await post(client, voice, " ".join(sentences))
    rate, pcm = parse(body)
    assert rate == 16000
    assert pcm == b"".join(alone)
    assert service.stats().voices["ord"].workers == 2


async def test_first_audio_leaves_before_the_last_sentence_is_done(
        serve: ServeFactory, tmp_path: Path) -> None:
    """Streaming: the client holds audio while later sentences are still being synthesised."""
    voice = standin(tmp_path, "slow", delay_per_sentence=0.3)
    client, service = await serve(voice)
    sentences = [f"Sentence number {n}." for n in range(6)]
    response = await client.post("/speech", json={"voice": voice.id, "text": " ".join(sentences)})
    assert response.status == 200
    first = await response.content.readany()
    done_at_first_bytes = service.stats().voices["slow"].syntheses
    assert first[:4] == b"RIFF"
    rest = await response.read()
    assert done_at_first_bytes < len(sentences)
    assert service.stats().voices["slow"].syntheses == len(sentences)
    assert len(parse(first + rest)[1]) > 0


async def test_failure_of_first_chunk_is_a_json_error(serve: ServeFactory, tmp_path: Path) -> None:
    """A crash or a hang before any audio: a clean 500 with the message, and no process left."""
    voice = standin(tmp_path, "bad")
    client, service = await serve(voice, synthesis_timeout_seconds="0.5")
    for text in ("CRASH right away. Then more.", "HANG at once."):
        response, body = await post(client, voice, text)
        assert response.status == 500, body
        assert response.headers["Content-Type"] == "application/json"
        assert await response.json() == {"message": "Speech synthesis failed"}
    assert service.busy_pids() == []
    assert await wait_gone(child_pids() - set(service.worker_pids())) == set()


@pytest.mark.parametrize("audio_format", ["wav", "mp3"])
async def test_failure_mid_stream_aborts_the_connection(
        serve: ServeFactory, tmp_path: Path, audio_format: str) -> None:
    """After the status line a failure must truncate the chunked body, never end it cleanly."""
    voice = standin(tmp_path, "mid")
    client, service = await serve(voice)
    response = await client.post("/speech", json={
        "voice": voice.id, "text": "A good start. Then a CRASH. And more.", "format": audio_format})
    assert response.status == 200
    with pytest.raises(aiohttp.ClientPayloadError):
        await response.read()
    assert service.stats().failures == 1
    assert await wait_gone(set(service.busy_pids())) == set()


@pytest.mark.parametrize("audio_format", ["wav", "ogg"])
async def test_client_disconnect_stops_everything_working_for_it(
        serve: ServeFactory, tmp_path: Path, audio_format: str) -> None:
    """The client hangs up mid-stream: its busy workers and its ffmpeg are gone within a second."""
    voice = standin(tmp_path, "gone", delay_per_sentence=1)
    client, service = await serve(voice)
    text = " ".join(f"Sentence {n}." for n in range(8))
    response = await client.post("/speech", json={"voice": voice.id, "text": text,
                                                  "format": audio_format})
    assert response.status == 200
    await response.content.readany()
    # The first bytes leave while the first sentence's worker is finishing it
    # (the head chunk streams); once it is done, both workers hold later
    # sentences, and a worker idle by then would rightly be kept warm.
    for _ in range(100):
        if service.stats().syntheses >= 1 and len(service.busy_pids()) >= 2:
            break
        await asyncio.sleep(0.01)
    working = set(service.busy_pids())
    assert working
    response.close()
    left = await wait_gone(working, 1.2)
    # On a loaded machine a worker may finish its chunk between the snapshot and the hang-up:
    # it is idle then, and rightly kept warm. Every worker still mid-chunk is stopped.
    assert working - left, "no worker of the stream was stopped"
    assert left <= set(service.worker_pids()) - set(service.busy_pids())
    for _ in range(50):  # the bookkeeping follows the processes promptly
        if not service.busy_pids() and service.stats().disconnects:
            break
        await asyncio.sleep(0.02)
    assert service.busy_pids() == [] and service.stats().disconnects == 1
    # Nothing else was started behind the service's back.
    assert child_pids() <= set(service.worker_pids())


async def test_client_disconnect_before_any_audio(serve: ServeFactory, tmp_path: Path) -> None:
    """Gone while the first sentence is still synthesising (complete-file mode)."""
    voice = standin(tmp_path, "early", delay_per_sentence=3)
    client, service = await serve(voice)
    request = asyncio.create_task(client.post(
        "/speech", json={"voice": voice.id, "text": "One. Two.", "stream": False}))
    while len(service.busy_pids()) < 2:
        await asyncio.sleep(0.05)
    working = set(service.busy_pids())
    request.cancel()
    with pytest.raises(asyncio.CancelledError):
        await request
    assert await wait_gone(working, 1.2) == set()


async def test_full_queue_answers_503_before_any_audio(serve: ServeFactory, tmp_path: Path) -> None:
    """One slot busy, one request waiting: the next gets 503 with Retry-After."""
    voice = standin(tmp_path, "busy", delay_per_sentence=0.4)
    client, service = await serve(voice, max_concurrent_syntheses="1", max_queue="1")
    running = asyncio.create_task(post(client, voice, "First one. And its second."))
    while service.stats().running < 1:
        await asyncio.sleep(0.02)
    waiting = asyncio.create_task(post(client, voice, "Second request."))
    while service.stats().queue < 1:
        await asyncio.sleep(0.02)
    response, _body = await post(client, voice, "Third request.")
    assert response.status == 503
    assert response.headers["Retry-After"] == "1"
    assert await response.json() == {"message": "Server is busy, try again later"}
    for task in (running, waiting):
        done, body = await task
        assert done.status == 200 and parse(body)[1]
    assert service.stats().queue == 0


async def test_bad_markup_and_blank_text_are_422(serve: ServeFactory) -> None:
    """Unsafe or malformed markup never reaches a worker."""
    client, service = await serve(ESPEAK)
    for text in ('<!DOCTYPE x [<!ENTITY a "b">]><speak>&a;</speak>', "<speak>open", "   "):
        response, _body = await post(client, ESPEAK, text)
        assert response.status == 422
        assert (await response.json())["message"].startswith("text: ")
    assert service.worker_pids() == []


async def test_cache_serves_repeats_and_never_stores_failures(
        serve: ServeFactory, tmp_path: Path) -> None:
    """A finished synthesis is cached; a repeat is served without a worker; a failed one is not stored."""
    voice = standin(tmp_path, "cached")
    client, service = await serve(voice, cache_max_bytes="10000000")
    cache_dir = tmp_path / "state" / "cache"
    _response, first = await post(client, voice, "Cache me. Twice.")
    assert len(os.listdir(cache_dir)) == 1
    syntheses = service.stats().voices["cached"].syntheses
    repeat, again = await post(client, voice, "Cache me. Twice.")
    assert repeat.status == 200 and parse(again)[1] == parse(first)[1]
    complete, whole = await post(client, voice, "Cache me. Twice.", stream=False)
    assert complete.headers["Content-Length"] == str(len(whole)) and whole == again
    with wave.open(io.BytesIO(whole)) as reader:  # the cached copy has exact sizes
        assert reader.getnframes() * 2 == len(whole) - wav.HEADER_BYTES
    stats = service.stats()
    assert stats.voices["cached"].syntheses == syntheses and stats.cache.hits == 2
    response = await client.post("/speech", json={"voice": voice.id, "text": "Fine. Then CRASH."})
    with pytest.raises(aiohttp.ClientPayloadError):
        await response.read()
    await asyncio.sleep(0.2)
    assert len(os.listdir(cache_dir)) == 1  # no partial file, no temp file


async def test_identical_requests_at_once_synthesise_once(
        serve: ServeFactory, tmp_path: Path) -> None:
    """Single flight: with the cache on, twins wait for the first one's entry and get the same bytes."""
    voice = standin(tmp_path, "twins", delay_per_sentence=0.2)
    client, service = await serve(voice, cache_max_bytes="10000000")
    text = "One sentence. And another one. And a third."
    answers = await asyncio.gather(*(post(client, voice, text) for _ in range(3)))
    assert all(response.status == 200 for response, _body in answers)
    assert parse(answers[0][1])[1] == parse(answers[1][1])[1] == parse(answers[2][1])[1]
    stats = service.stats()
    assert stats.voices["twins"].syntheses == 3  # three sentences, once
    assert stats.cache.hits == 2 and stats.cache.files == 1


async def test_changed_voice_retires_its_old_workers(serve: ServeFactory, tmp_path: Path) -> None:
    """A new voice version gets a new pool; the old version's idle workers stop."""
    voice = standin(tmp_path, "ver")
    client, service = await serve(voice)
    await post(client, voice, "Before.")
    old = set(service.worker_pids())
    changed = Voice(voice.id, voice.name, "en", "ga", "female", engine="tangle",
                    directory=voice.directory, updated_at=1.0)
    assert client.app is not None
    client.app[voices_key][voice.id] = changed
    response, _body = await post(client, changed, "After.")
    assert response.status == 200
    assert await wait_gone(old, 3) == set()
    assert service.stats().voices["ver"].version == changed.version


async def test_client_disconnect_without_handler_cancellation(tmp_path: Path) -> None:
    """With aiohttp's handler_cancellation off (run_app's default) the hang-up is still
    noticed: the next write raises, and everything working for the stream stops."""
    voice = standin(tmp_path, "runapp", delay_per_sentence=1)
    config = load_config(env={}, overrides={
        "state_dir": str(tmp_path / "state"), "idlak_root": str(STANDIN_ROOT),
        "workers_per_voice": "2"})
    service = Synthesizer(config)
    app = tiny_app(config, service, voice)
    runner = web.AppRunner(app, handler_cancellation=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    await service.start()
    try:
        host, port = runner.addresses[0][:2]
        async with aiohttp.ClientSession() as session:
            response = await session.post(f"http://{host}:{port}/speech", json={
                "voice": voice.id, "text": " ".join(f"Sentence {n}." for n in range(8)),
                "format": "mp3"})
            assert response.status == 200
            await response.content.readany()
            working = set(service.busy_pids())
            assert len(working) == 3  # two workers and ffmpeg
            response.close()
            # Told at the next write: when the next sentence (1 s each here) reaches ffmpeg's output.
            assert await wait_gone(working, 4) == set()
            for _ in range(50):
                if not service.busy_pids() and service.stats().disconnects:
                    break
                await asyncio.sleep(0.02)
            assert service.busy_pids() == [] and service.stats().disconnects == 1
    finally:
        await service.close()
        await runner.cleanup()
    assert await wait_gone(child_pids(), 3) == set()


async def test_missing_ffmpeg_is_a_clean_error_and_wav_still_works(serve: ServeFactory) -> None:
    """ffmpeg that cannot start fails ogg before the status line; wav does not need it."""
    client, service = await serve(ESPEAK, ffmpeg="/nonexistent/ffmpeg")
    for stream in (True, False):
        response, _body = await post(client, ESPEAK, "Hello.", format="ogg", stream=stream)
        assert response.status == 500
        assert await response.json() == {"message": "Speech synthesis failed"}
    response, body = await post(client, ESPEAK, "Hello.")
    assert response.status == 200 and parse(body)[1]
    stats = service.stats()
    assert stats.failures == 2 and stats.transcoders == 0
    # Each ogg's chunk is cancelled when ffmpeg cannot start at its first audio (the
    # head chunk streams), unless it already finished; the wav's completes.
    assert stats.syntheses in (1, 2, 3)
    assert stats.audio_seconds > 0 and stats.synthesis_seconds > 0
    voice_stats = stats.voices["en"]
    assert voice_stats.syntheses == stats.syntheses and voice_stats.busy == 0


async def test_close_during_a_stream_aborts_it_and_leaves_nothing(
        serve: ServeFactory, tmp_path: Path) -> None:
    """Shutdown mid-stream: the response is cut, every worker stopped, none started after."""
    voice = standin(tmp_path, "shut", delay_per_sentence=0.5)
    client, service = await serve(voice)
    response = await client.post("/speech", json={
        "voice": voice.id, "text": " ".join(f"Sentence {n}." for n in range(8))})
    assert response.status == 200
    await response.content.readany()
    await service.close()
    with pytest.raises(aiohttp.ClientPayloadError):
        await response.read()
    assert await wait_gone(child_pids(), 1.5) == set()
    assert service.worker_pids() == []
    refused, _body = await post(client, voice, "After close.")
    assert refused.status == 503


async def test_idle_workers_are_reaped_by_the_service(serve: ServeFactory) -> None:
    """With worker_idle_seconds=1 the service's reaper stops a worker soon after its last chunk."""
    client, service = await serve(ESPEAK, worker_idle_seconds="1")
    await post(client, ESPEAK, "Hello.")
    pids = set(service.worker_pids())
    assert pids
    assert await wait_gone(pids, 3) == set()
    assert service.stats().voices["en"].workers == 0
    response, body = await post(client, ESPEAK, "Hello again.")
    assert response.status == 200 and parse(body)[1]


async def test_a_chunk_waits_for_room_but_not_forever() -> None:
    """Back-pressure: the sink holds a worker while its audio is untaken, up to the consumer's patience."""
    from idlakd.synth.pipeline import CHUNK_BUFFER_BYTES, ChunkAudio, ConsumerStalled, Flow

    flow = Flow(patience=0.3)
    audio = ChunkAudio(flow)
    frame = b"\0" * (CHUNK_BUFFER_BYTES // 4)
    for _ in range(3):
        await asyncio.wait_for(audio.put(16000, frame), 1)  # under the bound: no wait
    blocked = asyncio.create_task(audio.put(16000, frame))  # reaches the bound: waits
    await asyncio.sleep(0.1)
    assert not blocked.done()
    assert len(audio.take()) == CHUNK_BUFFER_BYTES  # taking makes room
    await asyncio.wait_for(blocked, 1)
    for _ in range(3):
        await asyncio.wait_for(audio.put(16000, frame), 1)
    started = asyncio.get_running_loop().time()
    with pytest.raises(ConsumerStalled):
        await asyncio.wait_for(audio.put(16000, frame), 2)  # nobody takes: given up
    assert 0.2 < asyncio.get_running_loop().time() - started < 1.0
