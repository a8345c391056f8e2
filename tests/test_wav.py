"""WAV headers: the streaming convention and exact complete files, checked with the stdlib parser."""

from __future__ import annotations

import io
import struct
import wave

import pytest

from idlakd.synth import wav


def test_exact_header_parses_with_the_wave_module() -> None:
    """A complete file: RIFF = 36 + data, data = PCM length; wave reads every field."""
    pcm = struct.pack("<4h", 0, 1000, -1000, 32767)
    data = wav.exact_header(22050, len(pcm)) + pcm
    assert len(wav.exact_header(22050, len(pcm))) == wav.HEADER_BYTES
    assert struct.unpack_from("<I", data, 4)[0] == len(data) - 8
    with wave.open(io.BytesIO(data)) as reader:
        assert reader.getframerate() == 22050
        assert reader.getnchannels() == 1
        assert reader.getsampwidth() == 2
        assert reader.getnframes() == 4
        assert reader.readframes(4) == pcm


def test_streaming_header_uses_unknown_sizes() -> None:
    """RIFF and data sizes are 0xFFFFFFFF; the format fields are right."""
    header = wav.streaming_header(16000)
    assert header[:4] == b"RIFF" and header[8:16] == b"WAVEfmt "
    assert struct.unpack_from("<I", header, 4)[0] == 0xFFFFFFFF
    assert struct.unpack_from("<I", header, 40)[0] == 0xFFFFFFFF
    info = wav.parse_wav(header + b"\x01\x00" * 10)
    assert (info.sample_rate, info.channels, info.bits_per_sample) == (16000, 1, 16)
    assert info.data_offset == 44 and info.data_size == 20  # clipped to what is there
    assert struct.unpack_from("<I", header, 28)[0] == 32000  # byte rate


def test_parse_wav_skips_other_chunks() -> None:
    """A LIST chunk before data (as many tools write) is skipped."""
    fmt = b"fmt " + struct.pack("<IHHIIHH", 16, 1, 1, 8000, 16000, 2, 16)
    body = b"WAVE" + fmt + b"LIST" + struct.pack("<I", 3) + b"abc\x00" + b"data" + struct.pack("<I", 4) + b"\x00" * 4
    info = wav.parse_wav(b"RIFF" + struct.pack("<I", len(body)) + body)
    assert info.sample_rate == 8000 and info.data_size == 4


@pytest.mark.parametrize("data", [b"", b"RIFX" + b"\x00" * 40, wav.streaming_header(8000)[:36]])
def test_parse_wav_refuses_non_wav(data: bytes) -> None:
    """Not RIFF/WAVE, or no data chunk: ValueError."""
    with pytest.raises(ValueError):
        wav.parse_wav(data)


def test_exact_header_bounds() -> None:
    """Odd byte counts and sizes beyond 4 GiB cannot be described."""
    with pytest.raises(ValueError):
        wav.exact_header(8000, 3)
    with pytest.raises(ValueError):
        wav.exact_header(8000, wav.MAX_DATA_BYTES + 2)
    with pytest.raises(ValueError):
        wav.exact_header(0, 2)
