"""Any text-to-speech program as an engine: text on its stdin, a WAV file on its stdout.

Options: ``argv`` (list of strings, run without a shell; a relative program
path is taken relative to the voice directory, which is also the working
directory), optional ``sample_rate`` (int; without it, the engine speaks
``probe_text`` once at load to learn the rate from the WAV header).

The WAV is parsed as it streams (RIFF, ``fmt ``, ``data``; sizes of
0xFFFFFFFF or other streaming placeholders mean "until EOF"); it must be
16-bit PCM, and several channels are averaged down to mono. PCM is yielded
as soon as it is read. There is no timeout here: the daemon kills a silent
worker. A non-zero exit raises ``CommandError`` with the program's stderr tail.
It gets plain words only: the daemon's document model has read any markup.
"""

from __future__ import annotations

import collections
import logging
import struct
import subprocess
import sys
import threading
from array import array
from typing import IO, Any, Final, Iterator, Mapping

from idlakd.worker.engines.base import Engine, EngineError, command_program
from idlakd.worker.protocol import read_exactly_sync

logger = logging.getLogger(__name__)

READ_SIZE: Final = 64 * 1024
STDERR_TAIL_LINES: Final = 20
WAVE_FORMAT_PCM: Final = 1
WAVE_FORMAT_EXTENSIBLE: Final = 0xFFFE
# The GUID tail shared by all WAVE_FORMAT_EXTENSIBLE subformats.
_KSDATAFORMAT_TAIL: Final = b"\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71"


class CommandError(EngineError):
    """The command failed: it exited non-zero or wrote something that is not a 16-bit WAV."""


class NoOutputError(CommandError):
    """The command wrote nothing at all on stdout."""


def _downmix(data: bytes, channels: int) -> bytes:
    """Average interleaved s16le channels into mono s16le."""
    samples = array("h", data)
    if sys.byteorder == "big":
        samples.byteswap()
    mono = array("h", (sum(samples[i:i + channels]) // channels
                       for i in range(0, len(samples), channels)))
    if sys.byteorder == "big":
        mono.byteswap()
    return mono.tobytes()


def read_wav_stream(stream: IO[bytes]) -> tuple[int, Iterator[bytes]]:
    """Parse a WAV header from a stream: (sample_rate, iterator of mono s16le PCM chunks)."""
    riff = read_exactly_sync(stream, 12)
    if not riff:
        raise NoOutputError("the program wrote no output")
    if len(riff) < 12 or riff[:4] != b"RIFF" or riff[8:12] != b"WAVE":
        raise CommandError(f"output is not a RIFF/WAVE file (starts {riff[:12]!r})")
    channels = rate = 0
    while True:
        head = read_exactly_sync(stream, 8)
        if len(head) < 8:
            raise CommandError("WAV output ended before its data chunk")
        chunk_id, size = head[:4], struct.unpack("<I", head[4:])[0]
        if chunk_id == b"data":
            break
        body = read_exactly_sync(stream, size + (size & 1))  # chunks are padded to even sizes
        if chunk_id != b"fmt ":
            continue
        if len(body) < 16:
            raise CommandError("WAV fmt chunk is too short")
        tag, channels, rate, _, _, bits = struct.unpack("<HHIIHH", body[:16])
        if tag == WAVE_FORMAT_EXTENSIBLE and len(body) >= 40 and body[26:40] == _KSDATAFORMAT_TAIL:
            tag = struct.unpack("<H", body[24:26])[0]
        if tag != WAVE_FORMAT_PCM or bits != 16:
            raise CommandError(f"WAV must be 16-bit PCM (format {tag}, {bits} bits)")
        if channels < 1 or rate < 1:
            raise CommandError(f"WAV has {channels} channels at {rate} Hz")
    if not rate:
        raise CommandError("WAV data chunk comes before any fmt chunk")
    frame_bytes = 2 * channels

    def pcm() -> Iterator[bytes]:
        """Yield the data chunk as it arrives, whole frames only, downmixed to mono."""
        # A streaming writer cannot know the length and puts a placeholder
        # (0xFFFFFFFF, 0x7FFFF000, or 0): read to EOF then, and also stop at EOF
        # if the program wrote less than it announced.
        remaining = size if 0 < size < 0x7FFF0000 else None
        pending = b""
        read = getattr(stream, "read1", stream.read)
        while remaining is None or remaining > 0:
            want = READ_SIZE if remaining is None else min(READ_SIZE, remaining)
            chunk = read(want)
            if not chunk:
                break
            if remaining is not None:
                remaining -= len(chunk)
            pending += chunk
            usable = len(pending) - len(pending) % frame_bytes
            if usable:
                block, pending = pending[:usable], pending[usable:]
                if sys.byteorder == "big" and channels == 1:
                    swapped = array("h", block)
                    swapped.byteswap()
                    block = swapped.tobytes()
                yield block if channels == 1 else _downmix(block, channels)

    return rate, pcm()


class CommandEngine(Engine):
    """Runs a fresh process per request; the program writes a WAV to stdout."""

    def __init__(self, directory: str, options: Mapping[str, Any]) -> None:
        argv, reason = command_program(options.get("argv"), directory)
        if argv is None:
            raise EngineError(reason or "bad argv")
        self._argv = argv
        self._cwd = directory or None
        rate = options.get("sample_rate")
        if rate is not None:
            if not isinstance(rate, int) or isinstance(rate, bool) or rate <= 0:
                raise EngineError("option 'sample_rate' must be a positive whole number")
            self.sample_rate = rate
        else:
            self.sample_rate = 0  # learned from the probe below
            probe = str(options.get("probe_text", "Ready."))
            for _ in self.synthesize(probe):
                pass
        logger.info("command engine %s at %d Hz", self._argv[0], self.sample_rate)

    def synthesize(self, text: str) -> Iterator[bytes]:
        """Run the program on the text and yield its PCM as it streams out."""
        proc = subprocess.Popen(self._argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, cwd=self._cwd)
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        stderr_tail: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL_LINES)
        # Feed stdin and drain stderr on threads: a program that writes before it
        # has read all its input, or fills the stderr pipe, must not deadlock us.
        feeder = threading.Thread(target=_feed, args=(proc.stdin, text.encode("utf-8")), daemon=True)
        drainer = threading.Thread(target=_drain, args=(proc.stderr, stderr_tail), daemon=True)
        feeder.start()
        drainer.start()
        finished = False
        try:
            try:
                rate, chunks = read_wav_stream(proc.stdout)
            except CommandError as exc:
                # Usually the program failed and wrote nothing; give it a moment to
                # exit so its status and stderr explain why, but never hang here.
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
                finished = True
                if proc.returncode != 0:
                    prefix = "" if isinstance(exc, NoOutputError) else f"{exc}; "
                    raise self._failure(proc, drainer, stderr_tail, prefix) from None
                raise
            if self.sample_rate == 0:
                self.sample_rate = rate
            elif rate != self.sample_rate:
                raise CommandError(f"program wrote {rate} Hz, the voice is {self.sample_rate} Hz")
            yield from chunks
            if proc.wait() != 0:
                raise self._failure(proc, drainer, stderr_tail)
            finished = True
        finally:
            if not finished and proc.poll() is None:
                proc.kill()
            proc.wait()
            proc.stdout.close()
            feeder.join()
            drainer.join()
            proc.stderr.close()

    def _failure(self, proc: subprocess.Popen[bytes], drainer: threading.Thread,
                 stderr_tail: collections.deque[str], prefix: str = "") -> CommandError:
        """The error for a non-zero exit, with the tail of what the program said."""
        drainer.join()
        tail = " | ".join(stderr_tail) or "(no stderr)"
        return CommandError(f"{prefix}{self._argv[0]} exited with {proc.returncode}: {tail}")


def _feed(stdin: IO[bytes], data: bytes) -> None:
    """Write the text to the program and close its stdin (it may exit without reading)."""
    try:
        stdin.write(data)
    except BrokenPipeError:
        pass  # the program did not want (all of) its input; its exit status tells the story
    finally:
        try:
            stdin.close()
        except BrokenPipeError:
            pass


def _drain(stderr: IO[bytes], tail: collections.deque[str]) -> None:
    """Keep the last lines of the program's stderr and log them."""
    for raw in stderr:
        line = raw.decode("utf-8", errors="replace").rstrip()
        if line:
            tail.append(line)
            logger.info("command: %s", line)
