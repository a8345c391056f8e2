"""RIFF/WAVE headers for 16-bit mono PCM: a streaming one (unknown length) and an exact one."""

from __future__ import annotations

import dataclasses
import struct
from typing import Final

HEADER_BYTES: Final = 44
BITS_PER_SAMPLE: Final = 16
CHANNELS: Final = 1
# The streaming convention: sizes that say "until the end of the stream".
UNKNOWN_SIZE: Final = 0xFFFFFFFF
# Largest data chunk an exact header can describe (RIFF size = 36 + data).
MAX_DATA_BYTES: Final = 0xFFFFFFFF - 36


def _header(sample_rate: int, riff_size: int, data_size: int) -> bytes:
    """Pack the 44-byte canonical header."""
    if not 0 < sample_rate <= 0xFFFFFFFF:
        raise ValueError(f"sample rate {sample_rate} out of range")
    block_align = CHANNELS * BITS_PER_SAMPLE // 8
    return struct.pack(
        "<4sI4s4sIHHIIHH4sI",
        b"RIFF", riff_size, b"WAVE",
        b"fmt ", 16, 1, CHANNELS, sample_rate, sample_rate * block_align,
        block_align, BITS_PER_SAMPLE,
        b"data", data_size,
    )


def streaming_header(sample_rate: int) -> bytes:
    """A header for PCM of unknown length: RIFF and data sizes are 0xFFFFFFFF."""
    return _header(sample_rate, UNKNOWN_SIZE, UNKNOWN_SIZE)


def exact_header(sample_rate: int, data_bytes: int) -> bytes:
    """A header for exactly data_bytes of PCM (a complete file)."""
    if not 0 <= data_bytes <= MAX_DATA_BYTES:
        raise ValueError(f"{data_bytes} bytes of PCM do not fit in a WAV file")
    if data_bytes % 2:
        raise ValueError("16-bit PCM has an even number of bytes")
    return _header(sample_rate, 36 + data_bytes, data_bytes)


@dataclasses.dataclass(frozen=True)
class WavInfo:
    """What a parsed WAV file holds: format fields and where its PCM lies."""

    sample_rate: int
    channels: int
    bits_per_sample: int
    data_offset: int
    data_size: int


def parse_wav(data: bytes) -> WavInfo:
    """Parse a RIFF/WAVE PCM file (any chunk order); the data size is clipped to what is present."""
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise ValueError("not a RIFF/WAVE file")
    position = 12
    fmt: tuple[int, int, int, int] | None = None
    while position + 8 <= len(data):
        chunk_id, size = struct.unpack_from("<4sI", data, position)
        body = position + 8
        if chunk_id == b"fmt ":
            if size < 16 or body + 16 > len(data):
                raise ValueError("short fmt chunk")
            fmt = struct.unpack_from("<HHIxxxxxxH", data, body)
        elif chunk_id == b"data":
            if fmt is None:
                raise ValueError("data chunk before fmt chunk")
            audio_format, channels, rate, bits = fmt
            if audio_format not in (1, 0xFFFE):
                raise ValueError(f"not PCM (format {audio_format})")
            return WavInfo(rate, channels, bits, body, min(size, len(data) - body))
        # Chunks are word-aligned.
        position = body + size + (size & 1)
    raise ValueError("no data chunk")
