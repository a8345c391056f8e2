"""Encoding, resampling and filtering through one ffmpeg subprocess pipe per request."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Final, Sequence

from idlakd.config import Config
from idlakd.synth.formats import AUDIO_FORMATS, FORMAT_NAMES
from idlakd.synth.reaping import reap

log = logging.getLogger(__name__)

#: The names of the formats served (the table is idlakd.synth.formats).
FORMATS: Final = FORMAT_NAMES
#: Content types of the formats whose type does not depend on the rate.
CONTENT_TYPES: Final = {f.name: f.content_type for f in AUDIO_FORMATS.values()
                        if not f.rate_in_content_type}
#: Formats always encoded by ffmpeg (wav and pcm only when resampled or filtered).
ENCODED_FORMATS: Final = tuple(f.name for f in AUDIO_FORMATS.values() if f.needs_ffmpeg)
_READ_SIZE: Final = 64 * 1024
_STOP_WAIT: Final = 0.5
# How long ffmpeg alone may keep a caller waiting (synthesis_timeout_seconds' default).
DEFAULT_TIMEOUT: Final = 60.0


class TranscodeError(Exception):
    """ffmpeg could not encode the stream (or exited early); the message holds its stderr."""


def ffmpeg_executable(config: Config) -> str:
    """The configured ffmpeg, else the static binary shipped with imageio-ffmpeg."""
    if config.ffmpeg is not None:
        return str(config.ffmpeg)
    # Imported late: only needed when ogg/mp3 are asked for.
    import imageio_ffmpeg  # type: ignore[import-untyped]

    return str(imageio_ffmpeg.get_ffmpeg_exe())


def ffmpeg_arguments(audio_format: str, sample_rate: int, output_rate: int | None = None,
                     filters: Sequence[str] = ()) -> list[str]:
    """ffmpeg arguments (without the program) reading s16le mono at sample_rate on stdin, writing on stdout.

    output_rate None: the format's own rule (see AudioFormat.output_rate). wav and
    pcm come out as raw s16le (a WAV header is the caller's); ValueError when they
    need no ffmpeg at all (same rate, no filters), or the format is unknown.
    """
    spec = AUDIO_FORMATS.get(audio_format)
    if spec is None:
        raise ValueError(f"no audio format {audio_format!r}")
    rate = spec.output_rate(sample_rate, None) if output_rate is None else output_rate
    if not spec.needs_ffmpeg and rate == sample_rate and not filters:
        raise ValueError(f"ffmpeg does not encode {audio_format!r} here")
    args = ["-hide_banner", "-loglevel", "error",
            "-f", "s16le", "-ar", str(sample_rate), "-ac", "1", "-i", "pipe:0"]
    if filters:
        args += ["-af", ",".join(filters)]
    if rate != sample_rate:
        args += ["-ar", str(rate)]
    args += list(spec.codec_args) if spec.needs_ffmpeg else ["-c:a", "pcm_s16le", "-f", "s16le"]
    # Small pages/frames flushed promptly: the client hears the start early.
    args += ["-flush_packets", "1", "pipe:1"]
    return args


class Transcoder:
    """One running ffmpeg: PCM in through write()/close_input(), encoded bytes out through read().

    Every wait that depends on ffmpeg alone is bounded by timeout: taking its
    input, and finishing its output once the input is closed. Output while
    input still flows waits for the synthesis feeding it, which bounds itself.
    """

    def __init__(self, process: asyncio.subprocess.Process, audio_format: str,
                 timeout: float = DEFAULT_TIMEOUT) -> None:
        self._process = process
        self.audio_format = audio_format
        self._timeout = timeout
        self._input_closed = False
        self._stderr: list[bytes] = []
        self._stderr_task = asyncio.create_task(self._collect_stderr())

    @classmethod
    async def start(cls, executable: str, audio_format: str, sample_rate: int,
                    timeout: float = DEFAULT_TIMEOUT, output_rate: int | None = None,
                    filters: Sequence[str] = ()) -> "Transcoder":
        """Start ffmpeg for one stream (see ffmpeg_arguments); raises OSError if it cannot start."""
        # Own process group: a Ctrl-C meant for the daemon must not cut the streams it
        # lets finish during its shutdown grace; ffmpeg still ends when its
        # stdin closes, so it cannot outlive the daemon.
        process = await asyncio.create_subprocess_exec(
            executable, *ffmpeg_arguments(audio_format, sample_rate, output_rate, filters),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, process_group=0)
        return cls(process, audio_format, timeout)

    @property
    def pid(self) -> int:
        """The ffmpeg process id."""
        return self._process.pid

    @property
    def running(self) -> bool:
        """Whether ffmpeg has not exited (as far as the loop has seen)."""
        return self._process.returncode is None

    async def _collect_stderr(self) -> None:
        """Keep ffmpeg's (short, -loglevel error) stderr for the error message."""
        assert self._process.stderr is not None
        while line := await self._process.stderr.readline():
            self._stderr.append(line)
            del self._stderr[:-20]

    def _error(self, what: str) -> TranscodeError:
        """A TranscodeError carrying what ffmpeg said."""
        said = b"".join(self._stderr).decode("utf-8", "replace").strip()
        return TranscodeError(f"ffmpeg {what}: {said or 'no message'}")

    async def write(self, pcm: bytes | memoryview) -> None:
        """Feed PCM; waits while ffmpeg's input pipe is full (so the reader must run concurrently)."""
        assert self._process.stdin is not None
        try:
            self._process.stdin.write(pcm)
            async with asyncio.timeout(self._timeout):
                await self._process.stdin.drain()
        except (BrokenPipeError, ConnectionResetError):
            await self._stderr_settled()
            raise self._error("stopped reading its input") from None
        except TimeoutError:
            raise TranscodeError(f"ffmpeg took no input for {self._timeout:g} s") from None

    async def close_input(self) -> None:
        """Signal the end of the PCM: ffmpeg flushes and ends its output."""
        assert self._process.stdin is not None
        self._input_closed = True
        if not self._process.stdin.is_closing():
            self._process.stdin.close()
        try:
            async with asyncio.timeout(self._timeout):
                await self._process.stdin.wait_closed()
        except (BrokenPipeError, ConnectionResetError):
            pass
        except TimeoutError:
            raise TranscodeError(f"ffmpeg took no input for {self._timeout:g} s") from None

    async def read(self) -> bytes:
        """The next piece of encoded output; b"" at the end (after checking ffmpeg succeeded)."""
        assert self._process.stdout is not None
        try:
            # Until the input ends, output waits for synthesis; after, only for ffmpeg.
            async with asyncio.timeout(self._timeout if self._input_closed else None):
                data = await self._process.stdout.read(_READ_SIZE)
                if data:
                    return data
                code = await self._process.wait()
        except TimeoutError:
            raise TranscodeError(f"ffmpeg did not finish within {self._timeout:g} s") from None
        await self._stderr_settled()
        if code != 0:
            raise self._error(f"exited with status {code}")
        return b""

    async def _stderr_settled(self) -> None:
        """Let the stderr reader take the last lines (it ends at EOF)."""
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._stderr_task), _STOP_WAIT)

    async def aclose(self) -> None:
        """Stop ffmpeg if it still runs and reap it; safe to call more than once."""
        process = self._process
        if process.stdin is not None and not process.stdin.is_closing():
            process.stdin.close()
        if process.returncode is None:
            # Output nobody will read: no point letting ffmpeg finish.
            with contextlib.suppress(ProcessLookupError):
                process.kill()
        await reap(process)
        self._stderr_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._stderr_task
