"""The worker pipe framing: round trips and every malformed-frame case."""

from __future__ import annotations

import asyncio
import io
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from idlakd.worker.protocol import (
    MAX_HEADER_BYTES,
    Frame,
    MarkPoint,
    ProtocolError,
    Words,
    decode_request,
    encode_frame,
    encode_request,
    read_frame,
    read_frame_sync,
    write_frame_sync,
)


def _reader(data: bytes, eof: bool = True, limit: int = 2**16) -> asyncio.StreamReader:
    """A StreamReader pre-fed with data (and EOF unless told otherwise)."""
    reader = asyncio.StreamReader(limit=limit)
    reader.feed_data(data)
    if eof:
        reader.feed_eof()
    return reader


def _header(**fields: object) -> bytes:
    """A raw header line with exactly the given fields."""
    return json.dumps(fields).encode() + b"\n"


def test_encode_layout() -> None:
    """The header is one JSON line with type and payload_length, then the raw bytes."""
    data = encode_frame("audio", b"\x00\x01\x02", id=7)
    line, _, rest = data.partition(b"\n")
    assert json.loads(line) == {"type": "audio", "id": 7, "payload_length": 3}
    assert rest == b"\x00\x01\x02"


def test_encode_refuses_reserved_fields_and_huge_header() -> None:
    """Callers cannot forge the length, and an oversize header is refused."""
    with pytest.raises(ValueError):
        encode_frame("x", b"", payload_length=5)
    with pytest.raises(ValueError):
        encode_frame("x", b"", blob="a" * MAX_HEADER_BYTES)


async def test_async_round_trip_many_frames() -> None:
    """Several frames (with and without payloads, non-ASCII fields) decode in order, then EOF."""
    frames: list[tuple[str, bytes, dict[str, Any]]] = [
        ("ready", b"", {"sample_rate": 22050, "engine": "espeak"}),
        ("synthesize", "Grüße, мир\n".encode(), {"id": 1, "markup": False}),
        ("audio", bytes(range(256)) * 100, {"id": 1}),
        ("end", b"", {"id": 1, "samples": 12800, "note": "é\n"}),
    ]
    reader = _reader(b"".join(encode_frame(t, p, **f) for t, p, f in frames))
    for kind, payload, fields in frames:
        frame = await read_frame(reader, timeout=1.0)
        assert frame == Frame(kind, {"type": kind, **fields, "payload_length": len(payload)}, payload)
    assert await read_frame(reader, timeout=1.0) is None
    assert await read_frame(reader, timeout=None) is None


def test_sync_round_trip() -> None:
    """write_frame_sync / read_frame_sync agree with each other and with encode_frame."""
    buf = io.BytesIO()
    write_frame_sync(buf, "start", id=3, sample_rate=16000)
    write_frame_sync(buf, "audio", b"\xff" * 70000, id=3)
    write_frame_sync(buf, "end", id=3, samples=35000)
    buf.seek(0)
    assert read_frame_sync(buf) == Frame("start", {"type": "start", "id": 3, "sample_rate": 16000,
                                                   "payload_length": 0}, b"")
    audio = read_frame_sync(buf)
    assert audio is not None and audio.payload == b"\xff" * 70000
    end = read_frame_sync(buf)
    assert end is not None and end.header["samples"] == 35000
    assert read_frame_sync(buf) is None


BAD_FRAMES = {
    "not json": b"hello world\n",
    "not utf-8": b"\xff\xfe{}\n",
    "json array": b"[1, 2]\n",
    "no type": _header(payload_length=0),
    "empty type": _header(type="", payload_length=0),
    "type not a string": _header(type=5, payload_length=0),
    "no length": _header(type="end"),
    "length is a string": _header(type="end", payload_length="3"),
    "length is a bool": _header(type="end", payload_length=True),
    "length is a float": _header(type="end", payload_length=1.5),
    "negative length": _header(type="end", payload_length=-1),
    "absurd length": _header(type="end", payload_length=1 << 40),
    "eof in header": b'{"type": "end", "payl',
    "eof in payload": _header(type="audio", payload_length=10) + b"12345",
    "eof after header, payload due": _header(type="audio", payload_length=1),
    "oversize header": b'{"type": "x", "pad": "' + b"a" * MAX_HEADER_BYTES + b'", "payload_length": 0}\n',
    "oversize header, no newline": b"a" * (MAX_HEADER_BYTES + 10),
}


@pytest.mark.parametrize("data", BAD_FRAMES.values(), ids=BAD_FRAMES.keys())
async def test_async_bad_frames_raise(data: bytes) -> None:
    """Garbage raises ProtocolError; it is never mistaken for EOF."""
    with pytest.raises(ProtocolError):
        await read_frame(_reader(data), timeout=1.0)


@pytest.mark.parametrize("data", BAD_FRAMES.values(), ids=BAD_FRAMES.keys())
def test_sync_bad_frames_raise(data: bytes) -> None:
    """The worker's blocking reader applies the same rules."""
    with pytest.raises(ProtocolError):
        read_frame_sync(io.BytesIO(data))


async def test_bad_frame_after_good_one() -> None:
    """A good frame is delivered; the garbage after it then raises."""
    reader = _reader(encode_frame("end", id=1, samples=0) + b"garbage\n")
    frame = await read_frame(reader, timeout=1.0)
    assert frame is not None and frame.type == "end"
    with pytest.raises(ProtocolError):
        await read_frame(reader, timeout=1.0)


async def test_timeout_while_silent_and_mid_frame() -> None:
    """A silent or stalled peer raises TimeoutError (asyncio.TimeoutError is the same class)."""
    with pytest.raises(TimeoutError):
        await read_frame(_reader(b"", eof=False), timeout=0.05)
    stalled = _reader(_header(type="audio", payload_length=100) + b"x" * 10, eof=False)
    with pytest.raises(asyncio.TimeoutError):
        await read_frame(stalled, timeout=0.05)


async def test_payload_arriving_in_pieces() -> None:
    """readexactly waits for a payload fed in several pieces."""
    reader = asyncio.StreamReader()
    data = encode_frame("audio", b"abcdefghij", id=2)

    async def feed() -> None:
        for i in range(0, len(data), 3):
            reader.feed_data(data[i:i + 3])
            await asyncio.sleep(0.001)
        reader.feed_eof()

    feeder = asyncio.create_task(feed())
    frame = await read_frame(reader, timeout=2.0)
    await feeder
    assert frame is not None and frame.payload == b"abcdefghij"
    assert await read_frame(reader, timeout=1.0) is None


async def test_over_pipe_from_subprocess() -> None:
    """Frames survive a real OS pipe from a child process."""
    script = (
        "import sys\n"
        "from idlakd.worker.protocol import write_frame_sync\n"
        "out = sys.stdout.buffer\n"
        "for i in range(20):\n"
        "    write_frame_sync(out, 'audio', bytes([i]) * 65536, id=i)\n"
    )
    import sys
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, stdout=asyncio.subprocess.PIPE)
    assert proc.stdout is not None
    for i in range(20):
        frame = await read_frame(proc.stdout, timeout=10.0)
        assert frame is not None and frame.header["id"] == i and frame.payload == bytes([i]) * 65536
    assert await read_frame(proc.stdout, timeout=10.0) is None
    assert await proc.wait() == 0


_JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=8,
)


@settings(max_examples=60, deadline=None)
@given(
    kind=st.text(min_size=1),
    payload=st.binary(max_size=3000),
    fields=st.dictionaries(st.text().filter(lambda k: k not in ("type", "payload", "payload_length")),
                           _JSON_VALUES, max_size=4),
)
def test_round_trip_property(kind: str, payload: bytes, fields: dict[str, object]) -> None:
    """Any type, payload and JSON fields survive encode -> read_frame_sync unchanged."""
    frame = read_frame_sync(io.BytesIO(encode_frame(kind, payload, **fields) * 2))
    assert frame == Frame(kind, {"type": kind, **fields, "payload_length": len(payload)}, payload)


def test_synthesis_requests_carry_prosody_marks_and_the_events_flag() -> None:
    """Segments decode to words with prosody, breaks and marks; events only when asked."""
    payload = encode_request([{"text": "Hi", "prosody": {"rate": 1.5, "pitch": -2, "volume": 3}},
                              {"break_ms": 200}, {"mark": "m1"}, {"text": "there"}], events=True)
    request = decode_request(payload)
    assert request.events is True
    assert request.segments == [Words("Hi", 1.5, -2.0, 3.0), 200, MarkPoint("m1"), Words("there")]
    assert decode_request(encode_request([{"text": "x"}])).events is False


@pytest.mark.parametrize("segment", [
    {"text": "x", "prosody": {"rate": 9}}, {"text": "x", "prosody": {"rate": True}},
    {"text": "x", "prosody": {"speed": 1}}, {"text": "x", "prosody": [1]},
    {"mark": "m" * 65}, {"mark": 3}, {"break_ms": -1},
])
def test_bad_segments_are_protocol_errors(segment: dict[str, Any]) -> None:
    """Out-of-bounds prosody, unknown keys and oversized marks are refused by the worker."""
    with pytest.raises(ProtocolError):
        decode_request(encode_request([segment]))
