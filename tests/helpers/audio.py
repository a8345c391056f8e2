"""Decode audio with the real ffmpeg to check what a client would hear."""

from __future__ import annotations

import asyncio


async def decoded_seconds(ffmpeg: str, data: bytes) -> float:
    """Decode a stream with ffmpeg to 8 kHz PCM and return its duration."""
    proc = await asyncio.create_subprocess_exec(
        ffmpeg, "-hide_banner", "-loglevel", "error", "-i", "pipe:0", "-f", "s16le", "-ac", "1",
        "-ar", "8000", "pipe:1", stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate(data)
    assert proc.returncode == 0, err
    return len(out) / 2 / 8000
