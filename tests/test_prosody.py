"""speed, pitch and volume on /speech, measured on the real eSpeak audio the real app serves."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from idlakd.synth import wav
from idlakd.synth.filters import prosody_filters
from idlakd.synth.options import SpeechOptions
from idlakd.synth.transcode import ffmpeg_executable
from idlakd.web.app import create_app
from tests.helpers.app import ClientFactory, assert_error, make_config
from tests.helpers.audio import decode, median_pitch, rms_db

TEXT = "The quick brown fox jumps over the lazy dog. Then it sleeps all day long."
# A vowel held long enough for a clear period (eSpeak lengthens it for the repeated letters).
VOWEL = "Aaaaah, mooooore."


@pytest.fixture
async def client(aiohttp_client: ClientFactory, tmp_path: Path) -> TestClient[Any, Any]:
    """The real app, authorization off."""
    return await aiohttp_client(create_app(make_config(tmp_path, authorization="false")))


async def pcm_of(client: TestClient[Any, Any], text: str = TEXT, **fields: Any) -> tuple[int, bytes]:
    """A complete WAV of alba for text with fields: its rate and its samples' bytes."""
    resp = await client.post("/speech", json={"voice_id": "alba", "text": text, "stream": False,
                                              **fields})
    body = await resp.read()
    assert resp.status == 200, body[:300]
    info = wav.parse_wav(body)
    return info.sample_rate, body[info.data_offset:info.data_offset + info.data_size]


def seconds(rate_and_pcm: tuple[int, bytes]) -> float:
    """The duration of 16-bit mono PCM."""
    rate, pcm = rate_and_pcm
    return len(pcm) / 2 / rate


@pytest.mark.parametrize("speed", [2.0, 0.5, 0.25])
async def test_speed_scales_the_duration(client: TestClient[Any, Any], speed: float) -> None:
    """speed 2 halves the duration, 0.5 doubles it, 0.25 quadruples it (within 10 %)."""
    plain = seconds(await pcm_of(client))
    changed = seconds(await pcm_of(client, speed=speed))
    assert changed == pytest.approx(plain / speed, rel=0.10)


async def test_speed_streams_in_every_format(client: TestClient[Any, Any], tmp_path: Path) -> None:
    """Streamed ogg at speed 2 decodes to half the WAV's duration too."""
    plain = seconds(await pcm_of(client))
    resp = await client.post("/speech", json={"voice_id": "alba", "text": TEXT, "speed": 2,
                                              "audio_format": "ogg"})
    assert resp.status == 200 and resp.headers["Content-Type"] == "audio/ogg"
    decoded = await decode(ffmpeg_executable(make_config(tmp_path)), await resp.read())
    assert decoded.seconds == pytest.approx(plain / 2, rel=0.10)


# +12 dB is left out: eSpeak's loud vowels already reach about -8 dBFS and would clip.
@pytest.mark.parametrize("volume", [6.0, -10.0, -30.0])
async def test_volume_changes_the_rms_by_the_asked_db(client: TestClient[Any, Any],
                                                      volume: float) -> None:
    """The RMS level moves by the asked dB (within 1 dB) and the duration does not."""
    rate, plain = await pcm_of(client)
    _rate, louder = await pcm_of(client, volume=volume)
    # eSpeak's audio of a text differs by a few ms between requests (each worker's state).
    assert len(louder) == pytest.approx(len(plain), rel=0.01)
    change = rms_db(memoryview(louder).cast("h")) - rms_db(memoryview(plain).cast("h"))
    assert change == pytest.approx(volume, abs=1.0)


@pytest.mark.parametrize("semitones", [12.0, -12.0])
async def test_pitch_moves_the_fundamental_an_octave(client: TestClient[Any, Any],
                                                     semitones: float) -> None:
    """+12 semitones doubles the median fundamental of a held vowel, -12 halves it; tempo stays."""
    rate, plain = await pcm_of(client, VOWEL, sample_rate=8000)
    _rate, shifted = await pcm_of(client, VOWEL, sample_rate=8000, pitch=semitones)
    assert len(shifted) == pytest.approx(len(plain), rel=0.05)
    before = median_pitch(memoryview(plain).cast("h"), rate)
    after = median_pitch(memoryview(shifted).cast("h"), rate)
    assert after / before == pytest.approx(2 ** (semitones / 12), rel=0.15), (before, after)


async def test_everything_at_once_with_a_rate(client: TestClient[Any, Any]) -> None:
    """speed, pitch, volume and sample_rate together: the rate served, the duration scaled."""
    plain = seconds(await pcm_of(client))
    rate, pcm = await pcm_of(client, speed=1.5, pitch=3, volume=-6, sample_rate=16000)
    assert rate == 16000
    assert seconds((rate, pcm)) == pytest.approx(plain / 1.5, rel=0.10)


@pytest.mark.parametrize(("fields", "message"), [
    ({"speed": 0.2}, "speed: Must be between 0.25 and 4."),
    ({"speed": 4.5}, "speed: Must be between 0.25 and 4."),
    ({"speed": "fast"}, "speed: Not a valid number."),
    ({"pitch": 12.5}, "pitch: Must be between -12 and 12."),
    ({"pitch": False}, "pitch: Not a valid number."),
    ({"pitch": 10 ** 400}, "pitch: Must be between -12 and 12."),
    ({"volume": float("nan")}, "volume: Not a valid number."),
    ({"volume": -31}, "volume: Must be between -30 and 12."),
    ({"volume": 13}, "volume: Must be between -30 and 12."),
    ({"speed": 9, "volume": 99},
     "speed: Must be between 0.25 and 4., volume: Must be between -30 and 12."),
])
async def test_out_of_bounds_prosody_is_a_422(client: TestClient[Any, Any], fields: dict[str, Any],
                                              message: str) -> None:
    """Each bound, a wrong type, and several bad fields named in one answer."""
    resp = await client.post("/speech", json={"voice_id": "alba", "text": TEXT, **fields})
    await assert_error(resp, 422, message)


def test_the_filter_chain_leaves_out_what_the_engine_did() -> None:
    """native names what an engine applied itself: those filters go; slow tempos are split for atempo."""
    options = SpeechOptions(speed=0.25, pitch=12.0, volume=-6.0)
    assert prosody_filters(options) == ["atempo=0.5", "atempo=0.5", "rubberband=pitch=2",
                                        "volume=-6dB"]
    assert prosody_filters(options, frozenset({"speed", "volume"})) == ["rubberband=pitch=2"]
    assert prosody_filters(SpeechOptions()) == []


async def test_slow_speech_counts_against_max_audio_seconds(aiohttp_client: ClientFactory,
                                                           tmp_path: Path) -> None:
    """max_audio_seconds bounds the audio served, after the tempo change: speed 0.25 cannot
    make four times the limit (the estimate refuses it before synthesis, the cut during it)."""
    client = await aiohttp_client(create_app(make_config(
        tmp_path, authorization="false", max_audio_seconds="8")))
    assert seconds(await pcm_of(client)) < 8
    resp = await client.post("/speech", json={"voice_id": "alba", "text": TEXT, "speed": 0.25})
    await assert_error(resp, 413, "text: would make more than the limit of 8 seconds of audio")
    # Under the estimate but over the limit once slowed: cut with the limit's own message.
    resp = await client.post("/speech", json={"voice_id": "alba", "text": TEXT, "speed": 0.4,
                                              "stream": False})
    await assert_error(resp, 413, "Audio longer than the limit of 8 seconds")
