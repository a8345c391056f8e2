"""Spare ffmpegs (ffmpeg_spares): started ahead per recently used encoding, each serving one
request that it had no input before, bounded, replaced, and all stopped at close."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import aiohttp
import pytest

from idlakd.models import Voice
from idlakd.synth import spares, wav
from idlakd.synth.options import SpeechOptions
from idlakd.synth.synthesizer import Synthesizer
from idlakd.synth.transcode import ffmpeg_executable
from tests.helpers.app import make_config
from tests.helpers.audio import decode
from tests.helpers.daemon import start_daemon, wait_listening
from tests.helpers.processes import ffmpeg_children, wait_gone

VOICE = Voice("alba", "Alba", "en", "gb", "female", engine="espeak", sample_rate=22050)
SHORT = "Hello there."
LONG = " ".join(["The quick brown fox jumps over the lazy dog."] * 6)


async def answer(synth: Synthesizer, text: str, audio_format: str) -> bytes:
    """The whole streamed answer."""
    audio = await synth.synthesise(VOICE, text, audio_format, SpeechOptions())
    try:
        return b"".join([bytes(data) async for data in audio])
    finally:
        await audio.aclose()


async def spares_of(synth: Synthesizer, count: int) -> set[int]:
    """The spare pids once count of them wait."""
    for _ in range(200):
        if len(synth.spare_pids()) == count:
            return set(synth.spare_pids())
        await asyncio.sleep(0.01)
    raise AssertionError(f"spares: {synth.spare_pids()}, wanted {count}")


async def test_a_spare_serves_the_next_request_only_with_its_own_audio(tmp_path: Path) -> None:
    synth = Synthesizer(make_config(tmp_path, cache_max_bytes="0"))
    await synth.start()
    try:
        seconds = {text: wav.parse_wav(await answer(synth, text, "wav")).data_size / 2 / 22050
                   for text in (SHORT, LONG)}
        assert synth.spare_pids() == [] and ffmpeg_children() == set()  # wav: no ffmpeg
        long_mulaw = await answer(synth, LONG, "mulaw")  # no spare yet: one starts behind it
        spare = await spares_of(synth, 1)
        short_mulaw = await answer(synth, SHORT, "mulaw")
        # The spare served the short text and is gone with its stream; a new one waits.
        assert await wait_gone(spare) == set()
        again = await spares_of(synth, 1)
        assert again != spare and ffmpeg_children() == again
        assert synth.stats().transcoders == 0 and synth.busy_pids() == []
        assert again <= set(synth.worker_pids())
        # Each answer holds its own text's audio, nothing of the other (mulaw: 8000 bytes a second).
        assert len(short_mulaw) / 8000 == pytest.approx(seconds[SHORT], abs=0.05)
        assert len(long_mulaw) / 8000 == pytest.approx(seconds[LONG], abs=0.05)
        decoded = await decode(ffmpeg_executable(make_config(tmp_path)), short_mulaw,
                               ["-f", "mulaw", "-ac", "1", "-ar", "8000"])
        assert decoded.seconds == pytest.approx(seconds[SHORT], abs=0.05)
    finally:
        await synth.close()
    assert await wait_gone(again) == set() and ffmpeg_children() == set()


async def test_spares_are_bounded_oldest_encoding_dropped(tmp_path: Path) -> None:
    synth = Synthesizer(make_config(tmp_path, cache_max_bytes="0", ffmpeg_spares="2"))
    await synth.start()
    try:
        await answer(synth, SHORT, "mulaw")
        first = await spares_of(synth, 1)
        await answer(synth, SHORT, "alaw")
        await spares_of(synth, 2)
        await answer(synth, SHORT, "mp3")
        await asyncio.sleep(0.3)  # a third spare would be up by now
        kept = await spares_of(synth, 2)
        assert not kept & first and await wait_gone(first) == set()  # mulaw's, the oldest
        assert ffmpeg_children() == kept
    finally:
        await synth.close()
    assert await wait_gone(kept) == set() and ffmpeg_children() == set()


async def test_a_killed_spare_is_not_used_and_is_replaced(tmp_path: Path) -> None:
    synth = Synthesizer(make_config(tmp_path, cache_max_bytes="0"))
    await synth.start()
    try:
        await answer(synth, SHORT, "mulaw")
        (spare,) = await spares_of(synth, 1)
        os.kill(spare, signal.SIGKILL)
        assert await wait_gone({spare}) == set()
        await asyncio.sleep(0.05)  # the loop hears of the exit
        body = await answer(synth, SHORT, "mulaw")
        assert len(body) > 4000 and synth.failures == 0
        replaced = await spares_of(synth, 1)
        assert spare not in replaced
    finally:
        await synth.close()
    assert ffmpeg_children() == set()


async def test_a_waiting_spare_outlives_the_transcoder_timeout_and_then_serves(
        tmp_path: Path) -> None:
    # synthesis_timeout_seconds bounds ffmpeg's waits while it works for a stream; a spare
    # that waits for its stream has no such clock running.
    synth = Synthesizer(make_config(tmp_path, cache_max_bytes="0",
                                    synthesis_timeout_seconds="0.5"))
    await synth.start()
    try:
        await answer(synth, SHORT, "mulaw")
        spare = await spares_of(synth, 1)
        await asyncio.sleep(1.5)  # three times the timeout
        assert set(synth.spare_pids()) == spare and spare <= ffmpeg_children()
        body = await answer(synth, SHORT, "mulaw")
        assert len(body) > 4000 and synth.failures == 0
        assert await wait_gone(spare) == set()  # it served that request, and went with it
    finally:
        await synth.close()
    assert ffmpeg_children() == set()


async def test_the_reaper_stops_a_spare_nobody_takes(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(spares, "SPARE_IDLE_SECONDS", 1.0)
    # worker_idle_seconds=2: the reaper runs every 0.5 s.
    synth = Synthesizer(make_config(tmp_path, cache_max_bytes="0", worker_idle_seconds="2"))
    await synth.start()
    try:
        await answer(synth, SHORT, "wav")  # the worker's start is not the spare's wait
        await answer(synth, SHORT, "mulaw")
        spare = await spares_of(synth, 1)
        assert await wait_gone(spare, within=4.0) == set()
        assert synth.spare_pids() == [] and ffmpeg_children() == set()
        # The next request of the encoding starts its own ffmpeg, and a spare behind it.
        assert len(await answer(synth, SHORT, "mulaw")) > 4000
        assert len(await spares_of(synth, 1)) == 1
    finally:
        await synth.close()
    assert ffmpeg_children() == set()


async def test_no_spares_when_off(tmp_path: Path) -> None:
    synth = Synthesizer(make_config(tmp_path, cache_max_bytes="0", ffmpeg_spares="0"))
    await synth.start()
    try:
        await answer(synth, SHORT, "mulaw")
        await asyncio.sleep(0.2)
        assert synth.spare_pids() == [] and ffmpeg_children() == set()
    finally:
        await synth.close()


@pytest.mark.scenario
async def test_the_daemon_stops_its_spares(tmp_path: Path) -> None:
    daemon = start_daemon(tmp_path, authorization="false")
    try:
        await wait_listening(daemon)
        async with aiohttp.ClientSession() as session:
            async with session.post(daemon.url + "/speech", json={
                    "voice_id": "alba", "text": SHORT, "audio_format": "mulaw"}) as resp:
                assert resp.status == 200 and len(await resp.read()) > 4000
        spares: list[int] = []
        for _ in range(200):  # the request is over: an ffmpeg still there is the spare
            spares = [pid for pid in daemon.children()
                      if b"ffmpeg" in Path(f"/proc/{pid}/cmdline").read_bytes()]
            if spares:
                break
            await asyncio.sleep(0.01)
        assert len(spares) == 1, daemon.log()
        daemon.signal()
        assert await daemon.wait(20) == 0, daemon.log()
        assert not Path(f"/proc/{spares[0]}").exists()
    finally:
        daemon.kill()
