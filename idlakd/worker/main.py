"""Synthesis worker process: loads one voice, then serves framed requests on stdin/stdout.

    python -m idlakd.worker --engine {espeak,tangle,command,piper} [--directory DIR]
        [--options JSON] [--idlak-root PATH] [--name TAG] [--log-level LEVEL]
        [--memory-mb N] [--allow-read PATH ...]

Before any engine is imported the worker confines itself (idlakd.worker.sandbox:
an address-space limit, and Landlock read-only access to its Python, its
engine's data and its voice), and the real stdout is moved to a private fd that
carries only protocol frames (see idlakd.worker.protocol), and fd 1 is pointed
at stderr: Kaldi, Idlak and other C libraries print to stdout and would
otherwise corrupt the stream. Log lines go to stderr; the daemon logs them
tagged with the voice. SIGINT is ignored (the parent stops the worker by
closing stdin, then terminating it). Exit codes: 0 stdin closed or parent
gone, 2 the parent sent a malformed frame, 3 the engine could not load.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import logging
import os
import re
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Final, Iterator, Sequence

from idlakd.worker import protocol, sandbox
from idlakd.worker.protocol import (MarkPoint, ProtocolError, Segment, Words, read_frame_sync,
                                    write_frame_sync)

if TYPE_CHECKING:  # engines are imported only after the stdout guard is in place
    from idlakd.worker.engines import Engine

logger = logging.getLogger("idlakd.worker.main")

EXIT_OK: Final = 0
EXIT_BAD_FRAME: Final = 2
EXIT_FATAL: Final = protocol.EXIT_FATAL
# The frame pipe's kernel buffer (Linux's default is 64 KiB, less than one eSpeak sentence):
# room for a few sentences, so the worker goes on synthesising while the daemon waits for
# a CPU instead of blocking on its write every ~0.7 ms of work. Back-pressure still holds,
# this much later; 256 KiB keeps hundreds of workers inside the per-user pipe allowance.
PIPE_BYTES: Final = 256 * 1024
# Audio held back to fill a frame goes out at the latest this long after the last write: a
# slow engine's audio still streams, and never looks like a worker gone silent.
FLUSH_SECONDS: Final = 0.05
# C0/C1 control characters other than tab, LF and CR (eSpeak reads U+0001 as a command).
_CONTROL: Final = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


def worker_argv(engine: str, directory: str = "", options: dict[str, Any] | None = None,
                idlak_root: Path | None = None, name: str = "",
                python: str = sys.executable, memory_mb: int = 0,
                allow_read: Sequence[str] = ()) -> list[str]:
    """The command line that starts a worker for one voice (for the daemon's pool)."""
    argv = [python, "-m", "idlakd.worker", "--engine", engine]
    if directory:
        argv += ["--directory", directory]
    if options:
        argv += ["--options", json.dumps(options)]
    if idlak_root is not None:
        argv += ["--idlak-root", str(idlak_root)]
    if name:
        argv += ["--name", name]
    if memory_mb > 0:
        argv += ["--memory-mb", str(memory_mb)]
    for path in allow_read:
        argv += ["--allow-read", path]
    return argv


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse the worker's command line."""
    parser = argparse.ArgumentParser(prog="python -m idlakd.worker",
                                     description="idlakd synthesis worker (framed pipe protocol)")
    parser.add_argument("--engine", required=True,
                        choices=("espeak", "tangle", "command", "piper"))
    parser.add_argument("--directory", default="", help="voice directory")
    parser.add_argument("--options", default="{}", help="engine options as a JSON object")
    parser.add_argument("--idlak-root", type=Path, default=None, help="Idlak checkout (tangle)")
    parser.add_argument("--name", default="", help="tag for log lines (the voice id)")
    parser.add_argument("--log-level", default="INFO",
                        choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    parser.add_argument("--memory-mb", type=int, default=0,
                        help="address-space limit in MiB (RLIMIT_AS); 0: none")
    parser.add_argument("--allow-read", action="append", default=[], metavar="PATH",
                        help="a further directory or file the worker may read (repeatable); "
                             "its voice directory (and Idlak root, for tangle) always are")
    args = parser.parse_args(argv)
    if args.memory_mb < 0:
        parser.error("--memory-mb must be 0 or more")
    try:
        args.options = json.loads(args.options)
    except json.JSONDecodeError as exc:
        parser.error(f"--options is not JSON: {exc}")
    if not isinstance(args.options, dict):
        parser.error("--options must be a JSON object")
    return args


def guard_stdout() -> BinaryIO:
    """Move the real stdout to a private fd for frames; point fd 1 and sys.stdout at stderr."""
    sys.stdout.flush()
    # os.dup makes the copy non-inheritable, so programs the engine starts
    # cannot write into the protocol stream either.
    private = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    with contextlib.suppress(OSError, AttributeError):  # not a pipe, or not Linux: as it is
        fcntl.fcntl(private, fcntl.F_SETPIPE_SZ, PIPE_BYTES)
    return open(private, "wb", closefd=True)


def _frames(data: bytes) -> Iterator[bytes]:
    """Split PCM into payloads of at most MAX_AUDIO_PAYLOAD bytes (whole samples)."""
    step = protocol.MAX_AUDIO_PAYLOAD
    for start in range(0, len(data), step):
        yield data[start:start + step]


def _audio_frames(pcm: bytes | bytearray, request_id: Any) -> Iterator[bytes]:
    """Audio frames holding pcm, at most MAX_AUDIO_PAYLOAD bytes each."""
    for payload in _frames(bytes(pcm)):
        yield protocol.encode_frame(protocol.AUDIO, payload, id=request_id)


def serve(engine: "Engine", stdin: BinaryIO, out: BinaryIO) -> int:
    """Answer synthesize requests one after another until stdin closes; returns the exit code."""
    while True:
        try:
            frame = read_frame_sync(stdin)
        except ProtocolError as exc:
            logger.error("bad frame from the parent, exiting: %s", exc)
            return EXIT_BAD_FRAME
        if frame is None:
            logger.debug("stdin closed, exiting")
            return EXIT_OK
        request_id = frame.header.get("id")
        if frame.type != protocol.SYNTHESIZE:
            logger.warning("ignoring unexpected %r frame", frame.type)
            write_frame_sync(out, protocol.ERROR, id=request_id,
                             message=f"unexpected frame type {frame.type!r}")
            continue
        try:
            request = protocol.decode_request(frame.payload)
        except ProtocolError as exc:
            write_frame_sync(out, protocol.ERROR, id=request_id, message=str(exc))
            continue
        _synthesize_one(engine, out, request_id, request)


#: An event for the parent: its kind, segment index and fields (the sample is added on the way).
Event = tuple[str, int, dict[str, int]]


def _audio(engine: "Engine", segments: list[Segment], events: bool
           ) -> Iterator[bytes | Event | int]:
    """PCM of the segments in order (engines speak texts; breaks are silence made here), and events.

    An int is the sample offset (in this request's audio) where the next
    events' positions count from; an event's own offset in ms is added to it.
    """
    from idlakd.worker.engines import Word

    samples = 0
    prosody = (1.0, 0.0, 0.0)
    for index, segment in enumerate(segments):
        if isinstance(segment, int):
            count = engine.sample_rate * segment // 1000
            for start in range(0, count, protocol.MAX_AUDIO_PAYLOAD // 2):
                yield bytes(2 * min(protocol.MAX_AUDIO_PAYLOAD // 2, count - start))
            samples += count
            continue
        if isinstance(segment, MarkPoint):
            if events:
                yield samples
                yield "mark", index, {}
            continue
        # The daemon sends clean text; a second sweep costs nothing and keeps
        # the engine safe from any other caller of the protocol.
        text = _CONTROL.sub("", segment.text)
        if not text.strip():
            continue
        wanted = (segment.rate, segment.pitch, segment.volume)
        if wanted != prosody and engine.native_prosody:
            engine.set_prosody(*wanted)
            prosody = wanted
        if events:
            yield samples
            yield "text", index, {}
        for item in engine.synthesize_words(text) if events else engine.synthesize(text):
            if isinstance(item, Word):
                yield "word", index, {"start": item.start, "length": item.length, "ms": item.ms}
            else:
                samples += len(item) // 2
                yield item


def _synthesize_one(engine: "Engine", out: BinaryIO, request_id: Any,
                    request: protocol.SynthesisRequest) -> None:
    """Run one request: start, audio and event frames as the engine yields, then end or error."""
    write_frame_sync(out, protocol.START, id=request_id, sample_rate=engine.sample_rate)
    started = time.monotonic()
    samples = 0
    base = 0  # where the current text's events count from
    carry = b""  # an odd byte left by an engine chunk; frames hold whole samples
    try:
        # Whatever an earlier request did to the engine (rate, volume, voice) is undone first.
        engine.reset()
    except Exception as exc:  # noqa: BLE001 - an engine that cannot reset fails this request
        logger.exception("request %s: engine reset failed", request_id)
        write_frame_sync(out, protocol.ERROR, id=request_id, message=f"{type(exc).__name__}: {exc}")
        return
    chunks = _audio(engine, request.segments, request.events)
    # The request's first audio goes out at once (time to first byte); after it, PCM is sent
    # in full frames of MAX_AUDIO_PAYLOAD (the daemon hands a chunk's audio on in pieces of
    # that size anyway) or after FLUSH_SECONDS, the rest with `end` in one write: an eSpeak
    # sentence takes ~4 frames instead of ~9, and each frame costs the worker and the daemon
    # a header, a write and a wake-up.
    pending = bytearray()
    first = True
    written = time.monotonic()
    while True:
        try:
            chunk = next(chunks)
        except StopIteration:
            break
        except Exception as exc:  # noqa: BLE001 - any engine failure fails only this request
            logger.exception("request %s failed", request_id)
            out.write(b"".join(_audio_frames(pending, request_id)))
            write_frame_sync(out, protocol.ERROR, id=request_id,
                             message=f"{type(exc).__name__}: {exc}")
            return
        if isinstance(chunk, int):
            base = chunk
            continue
        if isinstance(chunk, tuple):
            kind, index, fields = chunk
            offset = fields.pop("ms", 0) * engine.sample_rate // 1000
            write_frame_sync(out, protocol.EVENT, id=request_id, kind=kind, segment=index,
                             sample=base + offset, **fields)
            continue
        data = carry + chunk
        carry = data[len(data) & ~1:]
        data = data[:len(data) & ~1]
        samples += len(data) // 2
        # Writes stay outside the try above: a broken pipe is not an engine error.
        if first and data:
            first, written = False, time.monotonic()
            for payload in _frames(data):
                write_frame_sync(out, protocol.AUDIO, payload, id=request_id)
            continue
        pending += data
        now = time.monotonic()
        if len(pending) >= protocol.MAX_AUDIO_PAYLOAD or now - written >= FLUSH_SECONDS:
            whole = len(pending) - len(pending) % protocol.MAX_AUDIO_PAYLOAD
            whole = whole or len(pending)  # not a full frame: sent because it waited long
            out.write(b"".join(_audio_frames(pending[:whole], request_id)))
            out.flush()
            del pending[:whole]
            written = now
    out.write(b"".join(_audio_frames(pending, request_id))
              + protocol.encode_frame(protocol.END, id=request_id, samples=samples))
    out.flush()
    logger.debug("request %s: %d segments, %d samples in %.3f s", request_id,
                 len(request.segments), samples, time.monotonic() - started)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the worker; returns its exit code."""
    args = parse_args(argv)
    out = guard_stdout()  # before any engine import
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(stream=sys.stderr, level=args.log_level,
                        format=f"%(levelname)s {args.name or args.engine}[%(process)d] "
                               "%(name)s: %(message)s")
    engine: Engine | None = None
    try:
        try:
            # Before any engine code runs: a hostile text meets these limits, not the host.
            sandbox.confine(args.engine, args.memory_mb, args.directory,
                            str(args.idlak_root or ""), args.allow_read)
        except OSError as exc:
            logger.exception("cannot confine the worker")
            write_frame_sync(out, protocol.ERROR, id=None, fatal=True,
                             message=f"cannot confine the worker: {exc}")
            return EXIT_FATAL
        try:
            from idlakd.worker.engines import load_engine
            engine = load_engine(args.engine, args.directory, args.options, args.idlak_root)
        except Exception as exc:  # noqa: BLE001 - whatever the engine raises, report it as fatal
            logger.exception("cannot load engine %s", args.engine)
            write_frame_sync(out, protocol.ERROR, id=None, fatal=True,
                             message=f"{type(exc).__name__}: {exc}")
            return EXIT_FATAL
        write_frame_sync(out, protocol.READY, sample_rate=engine.sample_rate, engine=args.engine)
        return serve(engine, sys.stdin.buffer, out)
    except BrokenPipeError:
        # The parent went away; nothing to tell anyone. Point the fd at /dev/null
        # so the final flush of buffered frames cannot raise again at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, out.fileno())
        os.close(devnull)
        return EXIT_OK
    finally:
        if engine is not None:
            engine.close()
        out.close()


if __name__ == "__main__":
    sys.exit(main())
