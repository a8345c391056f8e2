"""Audio formats served, and ogg/mp3 encoding through one ffmpeg subprocess pipe per request."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Final

from idlakd.config import Config
from idlakd.synth.reaping import reap

log = logging.getLogger(__name__)

FORMATS: Final = ("wav", "ogg", "mp3")
CONTENT_TYPES: Final = {"wav": "audio/wav", "ogg": "audio/ogg", "mp3": "audio/mpeg"}
ENCODED_FORMATS: Final = ("ogg", "mp3")

# MPEG audio only knows these rates; anything else is resampled to the
# nearest one above (or the highest) so a voice at an odd rate still works.
_MP3_RATES: Final = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)
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


def ffmpeg_arguments(audio_format: str, sample_rate: int) -> list[str]:
    """ffmpeg arguments (without the program) reading s16le mono on stdin, writing the format on stdout."""
    args = ["-hide_banner", "-loglevel", "error",
            "-f", "s16le", "-ar", str(sample_rate), "-ac", "1", "-i", "pipe:0"]
    if audio_format == "ogg":
        args += ["-c:a", "libvorbis", "-q:a", "4", "-f", "ogg"]
    elif audio_format == "mp3":
        if sample_rate not in _MP3_RATES:
            target = next((r for r in _MP3_RATES if r >= sample_rate), _MP3_RATES[-1])
            args += ["-ar", str(target)]
        args += ["-c:a", "libmp3lame", "-q:a", "4", "-f", "mp3"]
    else:
        raise ValueError(f"ffmpeg does not encode {audio_format!r} here")
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
                    timeout: float = DEFAULT_TIMEOUT) -> "Transcoder":
        """Start ffmpeg for one stream; raises OSError if it cannot start."""
        # Own process group: a Ctrl-C meant for the daemon must not cut the streams it
        # lets finish during its shutdown grace; ffmpeg still ends when its
        # stdin closes, so it cannot outlive the daemon.
        process = await asyncio.create_subprocess_exec(
            executable, *ffmpeg_arguments(audio_format, sample_rate),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, process_group=0)
        return cls(process, audio_format, timeout)

    @property
    def pid(self) -> int:
        """The ffmpeg process id."""
        return self._process.pid

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
