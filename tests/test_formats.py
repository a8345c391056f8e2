"""Every audio format and sample rate of /speech, from the real app with eSpeak, decoded by ffmpeg."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, AsyncIterator

import pytest
from aiohttp.test_utils import TestClient

from idlakd.models import Voice
from idlakd.synth import wav
from idlakd.synth.cache import cache_key
from idlakd.synth.formats import FORMAT_NAMES
from idlakd.synth.options import SpeechOptions
from idlakd.synth.synthesizer import Synthesizer
from idlakd.synth.transcode import ffmpeg_executable
from idlakd.web.app import create_app
from tests.helpers.app import ClientFactory, assert_error, make_config
from tests.helpers.audio import Decoded, decode, opus_input_rate
from tests.helpers.processes import ffmpeg_children, wait_gone
from tests.helpers.synth import STANDIN_ROOT, make_standin_voice

TEXT = "The quick brown fox jumps over the lazy dog. Then it sleeps."
VOICE_RATE = 22050  # alba (eSpeak NG)
# Encoders add priming and padding (Opus 6.5 ms, Ogg and FLAC none to speak of).
DURATION_TOLERANCE = 0.03
# Streamed into a pipe, ADTS and MP3 carry no gapless header: their decoders keep the
# encoder's priming frame and the padding of the last one (up to two frames more).
FRAME_SAMPLES = {"aac": 1024, "mp3": 1152}
# eSpeak's audio of the same text differs by a few milliseconds between requests (each
# worker's state): two answers are compared within 1 %.
SAME_AUDIO = 0.01


def tolerance(audio_format: str, rate: int) -> float:
    """How far a format's decoded duration may be from the WAV's (seconds)."""
    return DURATION_TOLERANCE + 2 * FRAME_SAMPLES.get(audio_format, 0) / rate

CONTENT_TYPES = {
    "wav": "audio/wav", "ogg": "audio/ogg", "mp3": "audio/mpeg",
    "opus": "audio/ogg; codecs=opus", "webm": "audio/webm; codecs=opus", "flac": "audio/flac",
    "aac": "audio/aac", "pcm": "audio/L16; rate={rate}; channels=1", "mulaw": "audio/PCMU",
    "alaw": "audio/PCMA",
}
# What tells ffmpeg the samples of a raw format (nothing in the bytes does).
RAW_INPUT = {"pcm": ["-f", "s16le", "-ac", "1"], "mulaw": ["-f", "mulaw", "-ac", "1"],
             "alaw": ["-f", "alaw", "-ac", "1"]}
# The rate each format is served at, without sample_rate, for a 22050 Hz voice.
DEFAULT_RATE = {"wav": 22050, "ogg": 22050, "mp3": 22050, "opus": 24000, "webm": 24000,
                "flac": 22050, "aac": 22050, "pcm": 22050, "mulaw": 8000, "alaw": 8000}


@pytest.fixture
def ffmpeg(tmp_path: Path) -> str:
    """The ffmpeg the daemon uses."""
    return ffmpeg_executable(make_config(tmp_path))


@pytest.fixture
async def client(aiohttp_client: ClientFactory, tmp_path: Path) -> AsyncIterator[TestClient[Any, Any]]:
    """The real app, authorization off, no cache (each answer is synthesised)."""
    yield await aiohttp_client(create_app(make_config(tmp_path, authorization="false")))


async def speech(client: TestClient[Any, Any], **fields: Any) -> tuple[str, bytes]:
    """POST /speech for alba; the Content-Type and the body (asserting a 200)."""
    resp = await client.post("/speech", json={"voice_id": "alba", "text": TEXT, **fields})
    body = await resp.read()
    assert resp.status == 200, body[:300]
    return resp.headers["Content-Type"], body


async def decoded(ffmpeg: str, audio_format: str, body: bytes, rate: int) -> Decoded:
    """The body decoded; raw formats are told their rate (the one they should be at)."""
    if audio_format in RAW_INPUT:
        return await decode(ffmpeg, body, [*RAW_INPUT[audio_format], "-ar", str(rate)])
    return await decode(ffmpeg, body)


def served_rate(audio_format: str, body: bytes, found: Decoded) -> int:
    """The rate the stream carries: Opus decoders always give 48 kHz, its header tells the real one."""
    if audio_format in ("opus", "webm"):
        return opus_input_rate(body)
    return found.rate


@pytest.mark.parametrize("stream", [True, False])
@pytest.mark.parametrize("audio_format", FORMAT_NAMES)
async def test_every_format_decodes_to_the_wav_duration(
        client: TestClient[Any, Any], ffmpeg: str, audio_format: str, stream: bool) -> None:
    """Each format: its exact Content-Type, its rate, and the duration of the same text in WAV."""
    _type, reference = await speech(client, stream=False)
    info = wav.parse_wav(reference)
    seconds = info.data_size / 2 / info.sample_rate
    content_type, body = await speech(client, audio_format=audio_format, stream=stream)
    rate = DEFAULT_RATE[audio_format]
    assert content_type == CONTENT_TYPES[audio_format].format(rate=rate)
    found = await decoded(ffmpeg, audio_format, body, rate)
    assert served_rate(audio_format, body, found) == rate
    assert abs(found.seconds - seconds) < tolerance(audio_format, rate), (found.seconds, seconds)


@pytest.mark.parametrize(("audio_format", "asked"), [
    ("wav", 16000), ("wav", 48000), ("pcm", 8000), ("mulaw", 16000), ("alaw", 11025),
    ("opus", 48000), ("webm", 16000), ("flac", 44100), ("aac", 32000), ("mp3", 44100),
    ("ogg", 16000)])
async def test_sample_rate_resamples(client: TestClient[Any, Any], ffmpeg: str,
                                     audio_format: str, asked: int) -> None:
    """An asked rate is the rate served, streamed or complete, and the duration stays."""
    _type, reference = await speech(client, stream=False)
    info = wav.parse_wav(reference)
    seconds = info.data_size / 2 / info.sample_rate
    for stream in (True, False):
        content_type, body = await speech(client, audio_format=audio_format, stream=stream,
                                          sample_rate=asked)
        assert content_type == CONTENT_TYPES[audio_format].format(rate=asked)
        found = await decoded(ffmpeg, audio_format, body, asked)
        assert served_rate(audio_format, body, found) == asked
        assert abs(found.seconds - seconds) < tolerance(audio_format, asked), (found.seconds,
                                                                              seconds)


async def test_wav_with_a_rate_keeps_its_headers(client: TestClient[Any, Any]) -> None:
    """Resampled WAV through ffmpeg: streamed with the streaming header, complete with exact sizes."""
    _type, streamed = await speech(client, sample_rate=16000)
    assert streamed[:44] == wav.streaming_header(16000)
    _type, complete = await speech(client, sample_rate=16000, stream=False)
    info = wav.parse_wav(complete)
    assert info.sample_rate == 16000 and info.data_offset + info.data_size == len(complete)
    assert complete[:44] == wav.exact_header(16000, info.data_size)
    assert len(streamed) == pytest.approx(len(complete), rel=SAME_AUDIO)


async def test_mp3_moves_an_odd_rate_up(client: TestClient[Any, Any], ffmpeg: str) -> None:
    """mp3 keeps its rule: a rate MPEG cannot carry goes to the nearest one above."""
    _type, body = await speech(client, audio_format="mp3", sample_rate=23000, stream=False)
    assert (await decode(ffmpeg, body)).rate == 24000


async def test_without_options_wav_is_the_seeds(client: TestClient[Any, Any]) -> None:
    """No sample_rate, speed, pitch or volume: the WAV is the voice's PCM at its rate, untouched."""
    _type, body = await speech(client, stream=False)
    info = wav.parse_wav(body)
    assert info.sample_rate == VOICE_RATE and body[:44] == wav.exact_header(VOICE_RATE,
                                                                           info.data_size)


@pytest.mark.parametrize(("fields", "message"), [
    ({"sample_rate": 7999}, "sample_rate: Must be between 8000 and 48000."),
    ({"sample_rate": 48001}, "sample_rate: Must be between 8000 and 48000."),
    ({"sample_rate": "16000"}, "sample_rate: Not a valid integer."),
    ({"sample_rate": 16000.5}, "sample_rate: Not a valid integer."),
    ({"sample_rate": True}, "sample_rate: Not a valid integer."),
    ({"audio_format": "opus", "sample_rate": 22050},
     "sample_rate: Not a rate opus allows. Valid choices: 8000|12000|16000|24000|48000"),
    ({"audio_format": "webm", "sample_rate": 44100},
     "sample_rate: Not a rate webm allows. Valid choices: 8000|12000|16000|24000|48000"),
    ({"audio_format": "speex"}, "audio_format: Not a valid choice. Valid choices: "
     "wav|ogg|mp3|opus|webm|flac|aac|pcm|mulaw|alaw"),
    ({"text_type": "html"}, "text_type: Not a valid choice. Valid choices: auto|text|ssml"),
])
async def test_bad_rates_and_formats_are_named(client: TestClient[Any, Any], fields: dict[str, Any],
                                                message: str) -> None:
    """Out-of-range or non-integer rates, rates Opus cannot carry: a 422 naming what is allowed."""
    resp = await client.post("/speech", json={"voice_id": "alba", "text": TEXT, **fields})
    await assert_error(resp, 422, message)


def test_cache_key_depends_on_what_shapes_the_audio() -> None:
    """sample_rate, speed, pitch, volume and text_type each change the key; stream and marks do not."""
    base = SpeechOptions()
    changed = [SpeechOptions(sample_rate=16000), SpeechOptions(speed=1.5),
               SpeechOptions(pitch=2.0), SpeechOptions(volume=-3.0),
               SpeechOptions(text_type="text")]
    keys = {cache_key("v", "1", "wav", "hi", options) for options in [base, *changed]}
    assert len(keys) == 1 + len(changed)
    same = [SpeechOptions(stream=False), SpeechOptions(marks=frozenset({"word"}))]
    assert {cache_key("v", "1", "wav", "hi", options) for options in same} == {
        cache_key("v", "1", "wav", "hi", base)}


async def test_cache_serves_each_shape_its_own_audio(aiohttp_client: ClientFactory,
                                                     tmp_path: Path, ffmpeg: str) -> None:
    """With the cache on, a request differing only in speed or rate is not served another's entry."""
    client = await aiohttp_client(create_app(make_config(
        tmp_path, authorization="false", cache_max_bytes="50000000")))
    _type, plain = await speech(client, stream=False)
    _type, fast = await speech(client, stream=False, speed=2.0)
    _type, again = await speech(client, stream=False, speed=2.0)
    _type, narrow = await speech(client, stream=False, sample_rate=8000)
    _type, pcm = await speech(client, audio_format="pcm", sample_rate=8000)
    assert fast == again and fast != plain  # byte for byte: the second came from the cache
    assert wav.parse_wav(plain).data_size > 1.8 * wav.parse_wav(fast).data_size
    assert wav.parse_wav(narrow).sample_rate == 8000
    assert len(pcm) == pytest.approx(wav.parse_wav(narrow).data_size, rel=SAME_AUDIO)


async def test_a_voice_declaring_the_wrong_rate_is_encoded_at_its_real_one(
        tmp_path: Path, ffmpeg: str) -> None:
    """ffmpeg is started early for the declared rate; the real first audio corrects it, none left."""
    synthesizer = Synthesizer(make_config(tmp_path))
    await synthesizer.start()
    try:
        voice = Voice("en", "English", "en", "gb", "male", engine="espeak", sample_rate=16000)
        answers = {}
        for audio_format in ("wav", "mulaw"):
            audio = await synthesizer.synthesise(voice, TEXT, audio_format, SpeechOptions())
            try:
                answers[audio_format] = b"".join([bytes(data) async for data in audio])
            finally:
                await audio.aclose()
        assert wav.parse_wav(answers["wav"]).sample_rate == VOICE_RATE  # eSpeak's real rate
        seconds = (len(answers["wav"]) - 44) / 2 / VOICE_RATE
        found = await decoded(ffmpeg, "mulaw", answers["mulaw"], 8000)
        assert abs(found.seconds - seconds) < tolerance("mulaw", 8000), (found.seconds, seconds)
        assert synthesizer.stats().transcoders == 0
    finally:
        await synthesizer.close()


async def test_a_request_cancelled_before_its_audio_leaves_no_ffmpeg(tmp_path: Path) -> None:
    """The ffmpeg started early for a slow voice is stopped when the request goes first."""
    directory = make_standin_voice(tmp_path / "voice-slow", spk="slow", srate=16000,
                                   delay_per_sentence=2)
    voice = Voice("slow", "slow", "en", "ga", "female", engine="tangle",
                  directory=str(directory), sample_rate=16000)
    synthesizer = Synthesizer(make_config(tmp_path, idlak_root=str(STANDIN_ROOT)))
    await synthesizer.start()
    try:
        task = asyncio.create_task(synthesizer.synthesise(voice, "One sentence.", "opus"))
        # The worker is at its sentence, the early ffmpeg runs, and (ffmpeg_spares) the
        # spare for the next opus request starts: the synthesizer's, not the request's.
        for _ in range(100):
            if synthesizer.stats().transcoders and synthesizer.spare_pids():
                break
            await asyncio.sleep(0.02)
        spares = set(synthesizer.spare_pids())
        early = ffmpeg_children() - spares
        assert len(early) == 1 and len(spares) == 1 and synthesizer.stats().transcoders == 1
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await wait_gone(early) == set()
        # The spare stays for the next request, working for nobody, until close.
        assert synthesizer.stats().transcoders == 0 and set(synthesizer.spare_pids()) == spares
        assert ffmpeg_children() == spares
    finally:
        await synthesizer.close()
    assert await wait_gone(spares) == set() and ffmpeg_children() == set()
