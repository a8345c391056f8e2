"""ogg/mp3 through the real ffmpeg: valid streams, concurrent feed and read, clean stop."""

from __future__ import annotations

import asyncio
import math
import os
import re
import struct
from pathlib import Path

import pytest

from idlakd.config import load_config
from idlakd.synth import wav
from idlakd.synth.formats import AUDIO_FORMATS
from idlakd.synth.transcode import (CONTENT_TYPES, FORMATS, TranscodeError, Transcoder,
                                    ffmpeg_arguments, ffmpeg_executable)
from tests.helpers.audio import decoded_seconds


def tone(seconds: float, rate: int = 22050) -> bytes:
    """A 440 Hz tone as s16le PCM."""
    return b"".join(struct.pack("<h", int(8000 * math.sin(2 * math.pi * 440 * i / rate)))
                    for i in range(int(seconds * rate)))


@pytest.fixture
def ffmpeg(tmp_path: Path) -> str:
    """The ffmpeg the daemon would use by default."""
    return ffmpeg_executable(load_config(env={}, overrides={"state_dir": str(tmp_path)}))


async def encode(ffmpeg: str, audio_format: str, rate: int, pcm: bytes) -> bytes:
    """All of pcm through one Transcoder, fed and read at once; ffmpeg reaped afterwards."""
    transcoder = await Transcoder.start(ffmpeg, audio_format, rate)
    try:
        async def feed() -> None:
            for offset in range(0, len(pcm), 65536):
                await transcoder.write(pcm[offset:offset + 65536])
            await transcoder.close_input()

        feeder = asyncio.create_task(feed())
        out = bytearray()
        try:
            while data := await asyncio.wait_for(transcoder.read(), 20):
                out += data
        finally:
            feeder.cancel()
            await asyncio.gather(feeder, return_exceptions=True)
        return bytes(out)
    finally:
        await transcoder.aclose()


# The container ffmpeg must find behind each Content-Type a client is told (IANA / RFC 3003,
# 5334, 7845); raw formats (pcm, mulaw, alaw) have none, and are decoded in test_formats.
DEMUXER_OF_TYPE = {"audio/wav": "wav", "audio/ogg": "ogg", "audio/mpeg": "mp3",
                   "audio/ogg; codecs=opus": "ogg", "audio/webm; codecs=opus": "matroska,webm",
                   "audio/flac": "flac", "audio/aac": "aac"}


async def detected_container(ffmpeg: str, data: bytes) -> str:
    """The container ffmpeg recognises in data (its demuxer's name)."""
    proc = await asyncio.create_subprocess_exec(
        ffmpeg, "-hide_banner", "-i", "pipe:0", "-f", "null", "-", stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    _, err = await asyncio.wait_for(proc.communicate(data), timeout=30)
    match = re.search(r"Input #0, ([\w,]+), from", err.decode(errors="replace"))
    assert proc.returncode == 0 and match, err[-500:]
    return match.group(1)


async def test_every_format_is_the_content_type_it_is_sent_as(ffmpeg: str) -> None:
    """The audio of each format decodes as the container its Content-Type names."""
    pcm = tone(0.5)
    for audio_format in FORMATS:
        if AUDIO_FORMATS[audio_format].raw:
            continue
        if audio_format == "wav":
            data = wav.exact_header(22050, len(pcm)) + pcm
        else:
            data = await encode(ffmpeg, audio_format, 22050, pcm)
        assert await detected_container(ffmpeg, data) == DEMUXER_OF_TYPE[CONTENT_TYPES[audio_format]]


def test_mp3_resamples_rates_mpeg_does_not_know() -> None:
    """16 kHz stays, 16001 Hz is resampled to 22050 for libmp3lame."""
    assert "-ar" not in ffmpeg_arguments("mp3", 16000)[8:]
    args = ffmpeg_arguments("mp3", 16001)
    assert args[args.index("-ar", 8) + 1] == "22050"
    with pytest.raises(ValueError):
        ffmpeg_arguments("wav", 16000)


@pytest.mark.parametrize("audio_format", ["ogg", "mp3"])
async def test_encode_round_trip(ffmpeg: str, audio_format: str) -> None:
    """Two seconds of PCM come back as about two seconds of valid ogg/mp3."""
    data = await encode(ffmpeg, audio_format, 22050, tone(2.0))
    if audio_format == "ogg":
        assert data[:4] == b"OggS"
    else:
        assert data[:3] == b"ID3" or (data[0] == 0xFF and data[1] & 0xE0 == 0xE0)
    assert abs(await decoded_seconds(ffmpeg, data) - 2.0) < 0.1


async def test_feed_and_read_concurrently_without_deadlock(ffmpeg: str) -> None:
    """More PCM than any pipe buffer: feeding and reading in parallel finishes."""
    pcm = tone(1.0) * 30  # 30 s, ~1.3 MB of PCM
    out = await encode(ffmpeg, "ogg", 22050, pcm)
    assert out[:4] == b"OggS" and abs(await decoded_seconds(ffmpeg, bytes(out)) - 30) < 0.2


async def test_aclose_kills_and_reaps_a_running_ffmpeg(ffmpeg: str) -> None:
    """Stopping mid-stream leaves no process behind."""
    transcoder = await Transcoder.start(ffmpeg, "mp3", 22050)
    await transcoder.write(tone(0.5))
    pid = transcoder.pid
    await transcoder.aclose()
    await transcoder.aclose()  # idempotent
    assert not os.path.exists(f"/proc/{pid}")


async def test_ffmpeg_failure_is_a_transcode_error(tmp_path: Path) -> None:
    """A program that exits with an error is reported with what it said."""
    fake = tmp_path / "ffmpeg"
    fake.write_text("#!/bin/sh\necho 'no encoder here' >&2\nexit 1\n")
    fake.chmod(0o755)
    with pytest.raises(TranscodeError, match="no encoder here"):
        await encode(str(fake), "ogg", 22050, tone(0.1))
