"""The daemon's side of one worker subprocess: start it, send it chunks, read its frames, stop it."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import logging
import os
import re
import signal
from pathlib import Path
from typing import Any, Awaitable, Callable, Final

from idlakd.config import Config
from idlakd.models import Voice
from idlakd.synth.document import Chunk
from idlakd.synth.reaping import reap
from idlakd.worker.engines import command_program
from idlakd.worker.main import worker_argv
from idlakd.worker.protocol import (AUDIO, END, ERROR, EVENT, MAX_HEADER_BYTES, READY, START,
                                    SYNTHESIZE, ProtocolError, encode_frame, encode_request,
                                    read_frame)

log = logging.getLogger(__name__)

# Loading a voice (Idlak especially) can take far longer than one chunk.
MIN_STARTUP_TIMEOUT: Final = 30.0
# How long a worker asked to stop (stdin closed) may take before SIGTERM, then SIGKILL.
IDLE_STOP_GRACE: Final = 2.0
BUSY_STOP_GRACE: Final = 0.2
TERM_GRACE: Final = 0.5
# The package's parent directory, so `python -m idlakd.worker` works from a source tree.
_PACKAGE_PARENT: Final = str(Path(__file__).resolve().parents[2])

#: Receives a chunk's audio as its worker sends it: (sample rate, PCM s16le). The worker's
#: pipe is not read again until the sink returns, so a sink that waits for room makes the
#: worker (and its engine) wait too: back-pressure from the consumer to the engine.
AudioSink = Callable[[int, bytes], Awaitable[None]]


@dataclasses.dataclass(frozen=True)
class ChunkEvent:
    """Where something of a chunk falls in its audio: a text segment, a mark or a word starts."""

    #: "text", "mark" or "word".
    kind: str
    #: Index of the segment in the chunk.
    segment: int
    #: Offset in the chunk's audio, in samples.
    sample: int
    #: A word's characters in its segment's text.
    start: int = 0
    length: int = 0


#: Receives a chunk's events (asked for only when given).
EventSink = Callable[[ChunkEvent], None]
_EVENT_KINDS: Final = frozenset({"text", "mark", "word"})
# Control characters but tab: in a relayed line they could colour, overwrite (CR) or clear the
# terminal or journal view of the daemon's log (onnxruntime colours its own warnings).
_UNPRINTABLE: Final = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f]")


def log_safe(text: str) -> str:
    """text with its control characters written as \\xNN escapes."""
    return _UNPRINTABLE.sub(lambda found: f"\\x{ord(found.group()):02x}", text)


class Silence:
    """One deadline for a chunk's frames: TimeoutError once none arrived for `timeout` seconds.

    Used as `with silence:` around each frame read. A new `asyncio.timeout` per frame
    (a context, a timer handle and a heap entry each) was 13-15 % of the daemon's CPU
    on the /speech path; here a frame costs a clock read, and one timer per chunk
    re-arms itself only when it fires. Time spent outside the reads (the sink waiting
    for a slow consumer) does not count as silence.
    """

    def __init__(self, timeout: float) -> None:
        self._timeout = timeout
        self._loop = asyncio.get_running_loop()
        self._task: asyncio.Task[Any] | None = None
        self._since = 0.0  # when the current read began, or the last frame came
        self._reading = False
        self._timer: asyncio.TimerHandle | None = None
        self._expired = False

    def __enter__(self) -> None:
        """A read begins: the worker's silence counts from now."""
        self._since = self._loop.time()
        self._reading = True
        if self._timer is None:
            self._task = asyncio.current_task()
            self._timer = self._loop.call_at(self._since + self._timeout, self._check)

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 _trace: Any) -> bool:
        """A read ended; a cancellation this deadline caused becomes TimeoutError."""
        self._reading = False
        if self._expired and kind is asyncio.CancelledError:
            assert self._task is not None
            if self._task.uncancel() == 0:
                raise TimeoutError from error
        return False

    def _check(self) -> None:
        """The timer fired: cancel the read if it has waited timeout, else fire again later."""
        due = self._since + self._timeout
        if not self._reading:
            self._timer = None  # re-armed by the next read
        elif self._loop.time() >= due:
            self._timer = None
            self._expired = True
            assert self._task is not None
            self._task.cancel()
        else:
            self._timer = self._loop.call_at(due, self._check)

    def close(self) -> None:
        """Drop the timer (the chunk ended)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class Collector:
    """A sink that keeps every frame (whole-chunk synthesis, where the caller wants it all)."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    async def __call__(self, _rate: int, pcm: bytes) -> None:
        """Keep one frame."""
        self.parts.append(pcm)


class SynthesisError(Exception):
    """A chunk could not be synthesised."""


class EngineFailed(SynthesisError):
    """The engine refused this chunk; the worker itself is fine and keeps serving."""


class WorkerFailed(SynthesisError):
    """The worker died, stalled, broke the protocol or could not start; it has been discarded."""

    #: True when the worker failed before it acknowledged the chunk (`start`).
    before_start = False


def worker_command(voice: Voice, config: Config, name: str) -> list[str]:
    """The argv starting a worker for this voice: its memory limit and what else it may read."""
    allow_read: list[str] = []
    if voice.engine == "command":
        # The worker finds its Python, voice directory and system tools itself; a command
        # voice's program may live anywhere (/opt/piper/piper), so its directory is added,
        # and that of the file a symlink to it names (Landlock checks the real file).
        argv, _reason = command_program(voice.options.get("argv"), voice.directory)
        if argv is not None:
            allow_read = list(dict.fromkeys([os.path.dirname(os.path.abspath(argv[0])),
                                             os.path.dirname(os.path.realpath(argv[0]))]))
    return worker_argv(voice.engine, voice.directory, voice.options, config.idlak_root, name,
                       memory_mb=config.worker_memory_mb, allow_read=allow_read)


def _worker_environment() -> dict[str, str]:
    """The daemon's environment, with the idlakd package importable whatever the cwd."""
    env = dict(os.environ)
    paths = [_PACKAGE_PARENT] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    return env


class Worker:
    """One worker subprocess speaking the frame protocol; used by one chunk at a time."""

    def __init__(self, name: str, process: asyncio.subprocess.Process) -> None:
        self.name = name
        self.process = process
        self.sample_rate = 0
        self.engine = ""
        self.last_used = asyncio.get_running_loop().time()
        self._ids = itertools.count(1)
        self._stderr_task = asyncio.create_task(self._log_stderr())

    @property
    def pid(self) -> int:
        """The worker's process id."""
        return self.process.pid

    @property
    def alive(self) -> bool:
        """Whether the process still runs."""
        return self.process.returncode is None

    @classmethod
    async def spawn(cls, voice: Voice, config: Config, name: str) -> "Worker":
        """Start a worker and wait for its `ready` frame; raises WorkerFailed."""
        try:
            process = await asyncio.create_subprocess_exec(
                *worker_command(voice, config, name),
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE, env=_worker_environment(),
                limit=2 * MAX_HEADER_BYTES,
                # Its own process group: stopping it also stops what it runs
                # (a command engine's program), and a terminal's Ctrl-C is for
                # the daemon, which then stops its workers itself. A group, not a
                # new session: setpgid keeps the spawn cheap (measured: the loop
                # stalls ~1.9 ms per spawn instead of ~2.7 ms with setsid).
                process_group=0)
        except OSError as exc:
            raise WorkerFailed(f"worker {name} could not start: {exc}") from None
        worker = cls(name, process)
        try:
            await worker._await_ready(max(config.synthesis_timeout_seconds, MIN_STARTUP_TIMEOUT))
        except BaseException:
            await worker.stop(BUSY_STOP_GRACE)
            raise
        log.info("Worker %s (pid %d) ready: engine %s at %d Hz",
                 name, process.pid, worker.engine, worker.sample_rate)
        return worker

    async def _await_ready(self, timeout: float) -> None:
        """Read the `ready` frame (or the fatal error that replaces it)."""
        frame = await self._read(timeout)
        if frame.type == READY:
            rate = frame.header.get("sample_rate")
            if not isinstance(rate, int) or isinstance(rate, bool) or rate <= 0:
                raise WorkerFailed(f"worker {self.name} reported a bad sample rate {rate!r}")
            self.sample_rate = rate
            self.engine = str(frame.header.get("engine", ""))
            return
        if frame.type == ERROR:
            raise WorkerFailed(f"worker {self.name} could not load the voice: "
                               f"{frame.header.get('message', 'no message')}")
        raise WorkerFailed(f"worker {self.name} sent {frame.type!r} instead of 'ready'")

    async def _read(self, timeout: float | None) -> Any:
        """Read one frame; every way it can fail becomes WorkerFailed."""
        assert self.process.stdout is not None
        try:
            frame = await read_frame(self.process.stdout, timeout)
        except TimeoutError:
            raise WorkerFailed(f"worker {self.name} silent for {timeout:g} s") from None
        except ProtocolError as exc:
            raise WorkerFailed(f"worker {self.name} broke the protocol: {exc}") from None
        if frame is None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(TERM_GRACE):
                    await self.process.wait()
            raise WorkerFailed(f"worker {self.name} exited (status {self.process.returncode})")
        return frame

    async def _log_stderr(self) -> None:
        """Log the worker's stderr line by line, tagged with its name (voice)."""
        assert self.process.stderr is not None
        stream = self.process.stderr
        while True:
            try:
                line = await stream.readline()
            except ValueError:
                # A line over the buffer limit: log what is there rather than stop.
                line = await stream.read(MAX_HEADER_BYTES)
            if not line:
                return
            log.info("[worker %s] %s", self.name,
                     log_safe(line.decode("utf-8", "replace").rstrip("\r\n")))

    async def synthesize(self, chunk: Chunk, timeout: float) -> tuple[int, bytes]:
        """Synthesise one chunk: (sample_rate, PCM); EngineFailed keeps the worker, WorkerFailed does not."""
        collector = Collector()
        rate, _size = await self.stream(chunk, timeout, collector)
        return rate, b"".join(collector.parts)

    async def stream(self, chunk: Chunk, timeout: float, sink: AudioSink,
                     on_event: EventSink | None = None) -> tuple[int, int]:
        """Synthesise one chunk, passing each audio frame to sink(rate, pcm) as it arrives.

        Returns (sample_rate, PCM bytes) once the worker ended the chunk. Audio
        only ever follows the worker's `start`, so a WorkerFailed with
        before_start set has sent nothing to the sink. EngineFailed keeps the
        worker, WorkerFailed does not. While the sink waits (its consumer is
        behind) the pipe is not read, so the worker blocks on its write; that
        wait is the sink's to bound, and does not count as the worker's silence
        (timeout applies to reading frames only). Whatever the sink raises ends
        the chunk, and the caller stops the worker (it is mid-utterance).
        With on_event, the worker reports where segments and words fall.
        """
        assert self.process.stdin is not None
        request_id = next(self._ids)
        try:
            self.process.stdin.write(encode_frame(
                SYNTHESIZE, encode_request(chunk.wire(), on_event is not None), id=request_id))
            async with asyncio.timeout(timeout):
                await self.process.stdin.drain()
        except (BrokenPipeError, ConnectionResetError):
            failure = WorkerFailed(f"worker {self.name} closed its input")
            failure.before_start = True
            raise failure from None
        except TimeoutError:
            raise WorkerFailed(f"worker {self.name} not reading its input for {timeout:g} s") from None
        size = 0
        rate = self.sample_rate
        started = False
        silence = Silence(timeout)
        try:
            while True:
                try:
                    with silence:
                        frame = await self._read(None)
                except TimeoutError:
                    failure = WorkerFailed(f"worker {self.name} silent for {timeout:g} s")
                    failure.before_start = not started
                    raise failure from None
                except WorkerFailed as exc:
                    exc.before_start = not started
                    raise
                if frame.header.get("id") != request_id:
                    raise WorkerFailed(f"worker {self.name} answered id {frame.header.get('id')!r}, "
                                       f"expected {request_id}")
                if frame.type == AUDIO:
                    if not started:
                        raise WorkerFailed(f"worker {self.name} sent audio before 'start'")
                    size += len(frame.payload)
                    await sink(rate, frame.payload)
                elif frame.type == EVENT and on_event is not None:
                    on_event(self._event(frame.header, len(chunk.segments)))
                elif frame.type == START:
                    started = True
                    rate = int(frame.header.get("sample_rate") or rate)
                elif frame.type == END:
                    samples = frame.header.get("samples")
                    if samples is not None and samples * 2 != size:
                        raise WorkerFailed(f"worker {self.name} announced {samples} samples, "
                                           f"sent {size // 2}")
                    self.last_used = asyncio.get_running_loop().time()
                    return rate, size
                elif frame.type == ERROR:
                    self.last_used = asyncio.get_running_loop().time()
                    raise EngineFailed(str(frame.header.get("message") or "synthesis failed"))
                else:
                    raise WorkerFailed(f"worker {self.name} sent unexpected {frame.type!r}")
        finally:
            silence.close()

    def _event(self, header: dict[str, Any], segments: int) -> ChunkEvent:
        """An event frame's fields checked; WorkerFailed if they make no sense."""
        values = [header.get(key, 0) for key in ("segment", "sample", "start", "length")]
        if (header.get("kind") not in _EVENT_KINDS
                or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0
                           for v in values) or values[0] >= segments):
            raise WorkerFailed(f"worker {self.name} sent a bad event {str(header)[:80]!r}")
        return ChunkEvent(header["kind"], *values)

    def _signal_group(self, signum: int) -> None:
        """Send a signal to the worker's process group (the worker and anything it started)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signum)

    async def stop(self, grace: float = IDLE_STOP_GRACE) -> None:
        """Close stdin, wait up to grace, terminate, kill (the whole group); always reap the process."""
        process = self.process
        if process.stdin is not None and not process.stdin.is_closing():
            process.stdin.close()
        signalled = False
        for signum, wait in ((None, grace), (signal.SIGTERM, TERM_GRACE), (signal.SIGKILL, None)):
            if process.returncode is not None:
                break
            if signum is not None:
                signalled = True
                self._signal_group(signum)
            try:
                async with asyncio.timeout(wait):
                    await reap(process)
            except TimeoutError:
                # Expected for a busy worker (it reads stdin only between chunks).
                log.debug("Worker %s (pid %d) did not stop within %g s", self.name,
                          process.pid, wait)
        await reap(process)
        if signalled:
            # The worker was stopped mid-work: a program it ran may have ignored
            # SIGTERM. The group outlives its leader while any member is left.
            self._signal_group(signal.SIGKILL)
        # A grandchild may still hold stderr open: do not wait for its EOF forever.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(TERM_GRACE):
                await asyncio.shield(self._stderr_task)
        self._stderr_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._stderr_task
        log.debug("Worker %s (pid %d) stopped, status %s", self.name, process.pid,
                  process.returncode)


