"""Pipe framing between the daemon and a synthesis worker (Wyoming style).

Every frame is one JSON header line followed by a raw payload::

    {"type": "audio", "id": 7, "payload_length": 4096}\\n
    <exactly 4096 raw bytes>

- The header is a JSON object on one line, UTF-8, terminated by ``\\n``, at most
  ``MAX_HEADER_BYTES`` (64 KiB) including the newline. It holds at least
  ``"type"`` (a string) and ``"payload_length"`` (an int >= 0); other keys are
  message fields.
- Then exactly ``payload_length`` bytes follow (``0`` means no payload). Audio
  is never base64-encoded and nothing is ever "read until EOF".
- A malformed frame (bad JSON, missing or negative length, oversize header or
  payload, EOF in the middle of a frame) raises ``ProtocolError``. Only EOF
  exactly *between* frames is a clean end (``None``); garbage is never EOF.

Messages, parent -> worker (worker stdin):

- ``synthesize``: field ``id`` (int); payload = a JSON object
  ``{"segments": [...], "events": bool?}``, UTF-8, each segment one of
  ``{"text": str, "prosody"?: {"rate", "pitch", "volume"}}`` (plain words:
  never markup, never control characters; prosody as a rate factor,
  semitones and dB, for engines that apply it), ``{"break_ms": int}``
  (silence, at most ``MAX_BREAK_MS``) or ``{"mark": str}`` (a named point).
  The daemon's document model writes them; the worker checks them again.
- Closing the worker's stdin asks it to shut down.

Messages, worker -> parent (worker's protocol fd, its original stdout):

- ``ready`` once, after the engine loaded: fields ``sample_rate`` (int),
  ``engine`` (str).
- Per request, in order: ``start`` (``id``, ``sample_rate``), zero or more
  ``audio`` (``id``; payload = mono signed 16-bit little-endian PCM, at most
  ``MAX_AUDIO_PAYLOAD`` bytes per frame; a request's first audio is sent as soon as the
  engine yields it, later audio in full frames or once held back for 50 ms, and the
  rest just before ``end``)
  and, when the request asked for events, ``event`` frames (``id``, ``kind``
  "text" | "mark" | "word", ``segment`` (its index), ``sample`` (offset in
  the request's audio); a word adds ``start`` and ``length``, characters in
  the segment's text) — an event may come before the audio it points into,
  then exactly one of ``end`` (``id``, ``samples``: total sample count) or
  ``error`` (``id``, ``message``). After ``error`` the worker keeps serving.
- A fatal start-up failure (engine cannot load): ``error`` with
  ``fatal: true`` and ``id: null``, then exit code ``EXIT_FATAL`` (3).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from typing import IO, Any, BinaryIO, Final

MAX_HEADER_BYTES: Final = 64 * 1024
# Audio frames stay small so the daemon can forward PCM promptly and no frame
# ever needs a big buffer.
MAX_AUDIO_PAYLOAD: Final = 64 * 1024
# A sanity bound for any payload, so a corrupt length cannot make a reader
# allocate gigabytes; synthesis texts and audio frames are far below it.
MAX_PAYLOAD_BYTES: Final = 16 * 1024 * 1024
EXIT_FATAL: Final = 3
#: Longest silence one segment may ask for (the daemon's bound is the same).
MAX_BREAK_MS: Final = 10_000
#: Longest text of one segment (the daemon sends sentences of a few hundred characters).
MAX_SEGMENT_CHARS: Final = 4096
#: Longest name of a mark segment.
MAX_MARK_CHARS: Final = 64
#: Bounds of a text segment's prosody: rate factor, semitones, dB.
PROSODY_BOUNDS: Final = {"rate": (0.25, 4.0), "pitch": (-12.0, 12.0), "volume": (-30.0, 12.0)}

# Message types.
SYNTHESIZE: Final = "synthesize"
READY: Final = "ready"
START: Final = "start"
AUDIO: Final = "audio"
EVENT: Final = "event"
END: Final = "end"
ERROR: Final = "error"


# One encoder for every header (json.dumps with options builds a new one per call).
_HEADER_ENCODER: Final = json.JSONEncoder(ensure_ascii=True, separators=(",", ":"))


class ProtocolError(Exception):
    """The peer sent a malformed frame (never a clean EOF)."""


@dataclasses.dataclass(frozen=True)
class Frame:
    """One decoded frame: its type, full header (incl. type/payload_length) and payload."""

    type: str
    header: dict[str, Any]
    payload: bytes


def encode_frame(type: str, payload: bytes = b"", **fields: Any) -> bytes:
    """Serialise one frame: a JSON header line plus the raw payload."""
    if "type" in fields or "payload_length" in fields:
        raise ValueError("'type' and 'payload_length' are set by encode_frame")
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise ValueError(f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD_BYTES}")
    header = {"type": type, **fields, "payload_length": len(payload)}
    # ensure_ascii keeps the line pure ASCII; the encoder never emits a raw newline.
    line = _HEADER_ENCODER.encode(header).encode("ascii") + b"\n"
    if len(line) > MAX_HEADER_BYTES:
        raise ValueError(f"frame header of {len(line)} bytes exceeds {MAX_HEADER_BYTES}")
    return line + bytes(payload)


def _parse_header(line: bytes) -> tuple[str, dict[str, Any], int]:
    """Decode and check a header line (with or without its newline)."""
    try:
        header = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtocolError(f"frame header is not JSON: {line[:80]!r}") from exc
    if not isinstance(header, dict):
        raise ProtocolError(f"frame header is not a JSON object: {line[:80]!r}")
    kind = header.get("type")
    if not isinstance(kind, str) or not kind:
        raise ProtocolError(f"frame header has no 'type': {line[:80]!r}")
    length = header.get("payload_length")
    # bool is an int subclass; true/false is not a length.
    if not isinstance(length, int) or isinstance(length, bool):
        raise ProtocolError(f"frame header has no integer 'payload_length': {line[:80]!r}")
    if length < 0:
        raise ProtocolError(f"negative payload_length {length}")
    if length > MAX_PAYLOAD_BYTES:
        raise ProtocolError(f"payload_length {length} exceeds {MAX_PAYLOAD_BYTES}")
    return kind, header, length


def encode_segments(segments: list[dict[str, Any]]) -> bytes:
    """The payload of a synthesize frame without events."""
    return encode_request(segments)


@dataclasses.dataclass(frozen=True)
class Words:
    """A text segment: words to speak, and how (neutral values: as the voice does)."""

    text: str
    rate: float = 1.0
    pitch: float = 0.0
    volume: float = 0.0


@dataclasses.dataclass(frozen=True)
class MarkPoint:
    """A mark segment: a named point whose audio position the worker reports."""

    name: str


#: One segment of a synthesize request: words, a break (int milliseconds) or a mark.
Segment = Words | int | MarkPoint


@dataclasses.dataclass(frozen=True)
class SynthesisRequest:
    """A decoded synthesize payload."""

    segments: list[Segment]
    #: Whether the parent wants event frames (text and mark positions, words).
    events: bool = False


def decode_request(payload: bytes) -> SynthesisRequest:
    """A synthesize payload as segments; ProtocolError if malformed."""
    try:
        body = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise ProtocolError("synthesize payload is not UTF-8 JSON") from None
    segments = body.get("segments") if isinstance(body, dict) else None
    if not isinstance(segments, list):
        raise ProtocolError("synthesize payload has no 'segments' list")
    assert isinstance(body, dict)
    return SynthesisRequest([_segment(segment) for segment in segments],
                            body.get("events") is True)


def decode_segments(payload: bytes) -> list[Segment]:
    """A synthesize payload's segments; ProtocolError if malformed."""
    return decode_request(payload).segments


def _segment(segment: Any) -> Segment:
    """One checked segment; ProtocolError if malformed."""
    if not isinstance(segment, dict):
        raise ProtocolError(f"bad segment {str(segment)[:80]!r}")
    text = segment.get("text")
    pause = segment.get("break_ms")
    name = segment.get("mark")
    if isinstance(text, str) and len(text) <= MAX_SEGMENT_CHARS:
        return Words(text, **_prosody(segment.get("prosody")))
    if isinstance(pause, int) and not isinstance(pause, bool) and 0 <= pause <= MAX_BREAK_MS:
        return pause
    if isinstance(name, str) and len(name) <= MAX_MARK_CHARS:
        return MarkPoint(name)
    raise ProtocolError(f"bad segment {str(segment)[:80]!r}")


def _prosody(prosody: Any) -> dict[str, float]:
    """A text segment's prosody, every value a number inside its bounds."""
    if prosody is None:
        return {}
    if not isinstance(prosody, dict) or set(prosody) - set(PROSODY_BOUNDS):
        raise ProtocolError(f"bad prosody {str(prosody)[:80]!r}")
    values: dict[str, float] = {}
    for key, value in prosody.items():
        low, high = PROSODY_BOUNDS[key]
        if (not isinstance(value, (int, float)) or isinstance(value, bool)
                or not low <= value <= high):
            raise ProtocolError(f"bad prosody {key} {str(value)[:20]!r}")
        values[key] = float(value)
    return values


def encode_request(segments: list[dict[str, Any]], events: bool = False) -> bytes:
    """The payload of a synthesize frame."""
    body: dict[str, Any] = {"segments": segments}
    if events:
        body["events"] = True
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


async def _read_frame(reader: asyncio.StreamReader) -> Frame | None:
    """Read one frame without a deadline."""
    try:
        line = await reader.readuntil(b"\n")
    except asyncio.IncompleteReadError as exc:
        if not exc.partial:
            return None
        raise ProtocolError(
            f"EOF inside a frame header after {len(exc.partial)} bytes") from None
    except asyncio.LimitOverrunError as exc:
        # The reader's buffer limit is the effective header bound here.
        raise ProtocolError(f"frame header longer than the stream limit ({exc.consumed}+ bytes)") from None
    if len(line) > MAX_HEADER_BYTES:
        raise ProtocolError(f"frame header of {len(line)} bytes exceeds {MAX_HEADER_BYTES}")
    kind, header, length = _parse_header(line)
    try:
        payload = await reader.readexactly(length) if length else b""
    except asyncio.IncompleteReadError as exc:
        raise ProtocolError(
            f"EOF inside a {kind!r} payload: {len(exc.partial)} of {length} bytes") from None
    return Frame(kind, header, payload)


async def read_frame(reader: asyncio.StreamReader, timeout: float | None) -> Frame | None:
    """Read one frame; None on clean EOF between frames; TimeoutError if it takes longer than timeout.

    After a timeout or ProtocolError the stream may sit mid-frame: discard the peer.
    """
    if timeout is None:
        return await _read_frame(reader)
    async with asyncio.timeout(timeout):
        return await _read_frame(reader)


def read_exactly_sync(stream: IO[bytes], count: int) -> bytes:
    """Read exactly count bytes, looping over short reads; shorter only at EOF."""
    parts: list[bytes] = []
    remaining = count
    while remaining:
        chunk = stream.read(remaining)
        if not chunk:
            break
        parts.append(chunk)
        remaining -= len(chunk)
    return b"".join(parts)


def read_frame_sync(stream: BinaryIO) -> Frame | None:
    """Blocking read of one frame from a binary stream; None on clean EOF between frames."""
    line = stream.readline(MAX_HEADER_BYTES + 1)
    if not line:
        return None
    if not line.endswith(b"\n"):
        if len(line) > MAX_HEADER_BYTES:
            raise ProtocolError(f"frame header exceeds {MAX_HEADER_BYTES} bytes")
        raise ProtocolError(f"EOF inside a frame header after {len(line)} bytes")
    kind, header, length = _parse_header(line)
    payload = read_exactly_sync(stream, length) if length else b""
    if len(payload) != length:
        raise ProtocolError(f"EOF inside a {kind!r} payload: {len(payload)} of {length} bytes")
    return Frame(kind, header, payload)


def write_frame_sync(stream: BinaryIO, type: str, payload: bytes = b"", **fields: Any) -> None:
    """Write one frame and flush it, so the parent sees it at once."""
    stream.write(encode_frame(type, payload, **fields))
    stream.flush()
