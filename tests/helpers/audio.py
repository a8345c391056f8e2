"""Decode audio with the real ffmpeg to check what a client would hear."""

from __future__ import annotations

import array
import asyncio
import dataclasses
import math
import re
import statistics
from typing import Sequence


async def decoded_seconds(ffmpeg: str, data: bytes) -> float:
    """Decode a stream with ffmpeg to 8 kHz PCM and return its duration."""
    proc = await asyncio.create_subprocess_exec(
        ffmpeg, "-hide_banner", "-loglevel", "error", "-i", "pipe:0", "-f", "s16le", "-ac", "1",
        "-ar", "8000", "pipe:1", stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate(data)
    assert proc.returncode == 0, err
    return len(out) / 2 / 8000


@dataclasses.dataclass(frozen=True)
class Decoded:
    """A stream as ffmpeg decodes it: its codec and rate as ffmpeg reports them, and its samples."""

    codec: str
    rate: int
    samples: array.array[int]

    @property
    def seconds(self) -> float:
        """The decoded duration."""
        return len(self.samples) / self.rate


async def decode(ffmpeg: str, data: bytes, input_args: Sequence[str] = (),
                 rate: int | None = None) -> Decoded:
    """Decode data with ffmpeg to 16-bit mono samples (at rate, else the stream's own rate).

    input_args tell ffmpeg what raw samples are (e.g. -f mulaw -ar 8000).
    """
    args = [ffmpeg, "-hide_banner", "-nostats", *input_args, "-i", "pipe:0", "-f", "s16le",
            "-ac", "1", *(["-ar", str(rate)] if rate else []), "pipe:1"]
    proc = await asyncio.create_subprocess_exec(
        *args, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(data), timeout=60)
    said = err.decode(errors="replace")
    assert proc.returncode == 0, said[-1000:]
    # The first stream line is the input's: "Stream #0:0...: Audio: opus, 48000 Hz, mono, ..."
    match = re.search(r"Stream #0:0.*?: Audio: (\w+)[^,]*, (\d+) Hz", said)
    assert match, said[-1000:]
    samples = array.array("h", out[:len(out) // 2 * 2])
    return Decoded(match.group(1), rate or int(match.group(2)), samples)


def opus_input_rate(data: bytes) -> int:
    """The input sample rate an Ogg or WebM Opus stream declares (OpusHead, RFC 7845 §5.1)."""
    head = data.find(b"OpusHead")
    assert head >= 0, "no OpusHead"
    return int.from_bytes(data[head + 12:head + 16], "little")


def rms_db(samples: Sequence[int]) -> float:
    """The RMS level of 16-bit samples in dB relative to full scale."""
    power = sum(s * s for s in samples) / max(1, len(samples))
    return 10 * math.log10(max(power, 1e-9) / 32768 ** 2)


def median_pitch(samples: Sequence[int], rate: int, low: float = 60.0, high: float = 600.0) -> float:
    """The median fundamental (Hz) of the loud 40 ms frames, by normalised autocorrelation."""
    frame = int(rate * 0.04)
    loudest = max(abs(s) for s in samples)
    estimates: list[float] = []
    for start in range(0, len(samples) - frame, frame):
        window = samples[start:start + frame]
        if max(abs(s) for s in window) < loudest / 4:
            continue  # quiet or unvoiced: no clear period
        energy = sum(s * s for s in window)
        lags = range(int(rate / high), int(rate / low) + 1)
        scores = [sum(window[i] * window[i + lag] for i in range(frame - lag)) / energy
                  for lag in lags]
        best = max(scores)
        if best > 0.5:
            # The shortest lag nearly as good as the best: a period, not a multiple of it.
            first = next(i for i, score in enumerate(scores) if score >= 0.85 * best)
            while first + 1 < len(scores) and scores[first + 1] > scores[first]:
                first += 1
            estimates.append(rate / lags[first])
    assert estimates, "no voiced frame"
    return statistics.median(estimates)
