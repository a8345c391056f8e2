"""Worker subprocesses per voice: start lazily, keep warm, check out one per chunk, stop cleanly."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import itertools
import logging
import os
import signal
from pathlib import Path
from typing import Any, Awaitable, Callable, Coroutine, Final, Iterable

from idlakd.config import Config
from idlakd.errors import ServiceUnavailable
from idlakd.models import Voice
from idlakd.worker.protocol import (AUDIO, END, ERROR, MAX_HEADER_BYTES, READY, START,
                                   SYNTHESIZE, ProtocolError, encode_frame, encode_segments,
                                   read_frame)
from idlakd.synth.reaping import reap
from idlakd.synth.document import Chunk
from idlakd.worker.engines import command_program
from idlakd.worker.main import worker_argv

log = logging.getLogger(__name__)

# Loading a voice (Idlak especially) can take far longer than one chunk.
MIN_STARTUP_TIMEOUT: Final = 30.0
# How long a worker asked to stop (stdin closed) may take before SIGTERM, then SIGKILL.
IDLE_STOP_GRACE: Final = 2.0
BUSY_STOP_GRACE: Final = 0.2
TERM_GRACE: Final = 0.5
# The package's parent directory, so `python -m idlakd.worker` works from a source tree.
_PACKAGE_PARENT: Final = str(Path(__file__).resolve().parents[2])

# A chunk that killed or stalled a worker is refused for this long (bounded count).
FATAL_CHUNK_MEMORY_SECONDS: Final = 600.0
FATAL_CHUNK_MEMORY_SIZE: Final = 1024

#: Receives a chunk's audio as its worker sends it: (sample rate, PCM s16le). The worker's
#: pipe is not read again until the sink returns, so a sink that waits for room makes the
#: worker (and its engine) wait too: back-pressure from the consumer to the engine.
AudioSink = Callable[[int, bytes], Awaitable[None]]


class _Collector:
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


class BackgroundTasks:
    """Tasks that must finish even if their starter is cancelled (stopping workers); awaited on close."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run coro in its own task, kept referenced until it ends."""
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def finish(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Run coro to completion even if the caller is cancelled meanwhile."""
        task = self.spawn(coro)
        await asyncio.shield(task)

    async def close(self) -> None:
        """Wait for every task still running."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)


class Admission:
    """One request's place in the global queue: waiting until its first chunk gets a slot."""

    def __init__(self, limiter: "SynthesisLimiter") -> None:
        self._limiter = limiter
        self._waiting = True

    def started(self) -> None:
        """The request got its first synthesis slot: it no longer counts as waiting."""
        if self._waiting:
            self._waiting = False
            self._limiter.waiting -= 1

    def release(self) -> None:
        """The request is over (served, failed or gone)."""
        self.started()


class SynthesisLimiter:
    """The global bound: max_concurrent chunks at once, max_queue requests waiting, beyond that 503."""

    def __init__(self, max_concurrent: int, max_queue: int) -> None:
        self.max_concurrent = max_concurrent
        self.max_queue = max_queue
        self._slots = asyncio.Semaphore(max_concurrent)
        self.waiting = 0
        self.running = 0

    def admit(self) -> Admission:
        """Queue a request, or raise ServiceUnavailable (before any response starts) if the queue is full."""
        if self.waiting >= self.max_queue and (self._slots.locked() or self.waiting > 0):
            raise ServiceUnavailable()
        self.waiting += 1
        return Admission(self)

    @contextlib.asynccontextmanager
    async def slot(self, admission: Admission | None) -> Any:
        """Hold one of the max_concurrent synthesis slots."""
        async with self._slots:
            if admission is not None:
                admission.started()
            self.running += 1
            try:
                yield
            finally:
                self.running -= 1


def _chunk_digest(chunk: Chunk) -> str:
    """A stable digest of what a worker is asked to say."""
    return hashlib.sha256(encode_segments(chunk.wire())).hexdigest()


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
                # the daemon, which then stops its workers itself.
                start_new_session=True)
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

    async def _read(self, timeout: float) -> Any:
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
            log.info("[worker %s] %s", self.name, line.decode("utf-8", "replace").rstrip())

    async def synthesize(self, chunk: Chunk, timeout: float) -> tuple[int, bytes]:
        """Synthesise one chunk: (sample_rate, PCM); EngineFailed keeps the worker, WorkerFailed does not."""
        collector = _Collector()
        rate, _size = await self.stream(chunk, timeout, collector)
        return rate, b"".join(collector.parts)

    async def stream(self, chunk: Chunk, timeout: float, sink: AudioSink) -> tuple[int, int]:
        """Synthesise one chunk, passing each audio frame to sink(rate, pcm) as it arrives.

        Returns (sample_rate, PCM bytes) once the worker ended the chunk. Audio
        only ever follows the worker's `start`, so a WorkerFailed with
        before_start set has sent nothing to the sink. EngineFailed keeps the
        worker, WorkerFailed does not. While the sink waits (its consumer is
        behind) the pipe is not read, so the worker blocks on its write; that
        wait is the sink's to bound, and does not count as the worker's silence
        (timeout applies to reading frames only). Whatever the sink raises ends
        the chunk, and the caller stops the worker (it is mid-utterance).
        """
        assert self.process.stdin is not None
        request_id = next(self._ids)
        try:
            self.process.stdin.write(encode_frame(
                SYNTHESIZE, encode_segments(chunk.wire()), id=request_id))
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
        while True:
            try:
                frame = await self._read(timeout)
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


class VoicePool:
    """The workers of one (voice id, voice version): at most workers_per_voice, idle ones kept warm."""

    def __init__(self, voice: Voice, config: Config, limiter: SynthesisLimiter,
                 background: BackgroundTasks) -> None:
        self.voice = voice
        self.version = voice.version
        self._config = config
        self._limiter = limiter
        self._background = background
        self.size = config.workers_per_voice
        self._capacity = asyncio.Semaphore(self.size)
        self._idle: collections.deque[Worker] = collections.deque()
        self._workers: set[Worker] = set()
        self._names = itertools.count(1)
        self.busy = 0
        self.retired = False
        self._closed = False
        self.syntheses = 0
        self.errors = 0
        self.synthesis_seconds = 0.0
        self.audio_seconds = 0.0
        self.sample_rate: int | None = None
        # Digests of chunks that killed or stalled a worker mid-synthesis, with when.
        self._fatal_chunks: collections.OrderedDict[str, float] = collections.OrderedDict()

    def fatal_chunk(self, chunks: Iterable[Chunk]) -> Chunk | None:
        """A chunk that recently killed or stalled a worker of this voice: not tried again."""
        if not self._fatal_chunks:
            return None
        now = asyncio.get_running_loop().time()
        for key, when in list(self._fatal_chunks.items()):
            if now - when < FATAL_CHUNK_MEMORY_SECONDS:
                break
            del self._fatal_chunks[key]
        return next((c for c in chunks if _chunk_digest(c) in self._fatal_chunks), None)

    def _remember_fatal(self, chunk: Chunk) -> None:
        """Remember a chunk that took its worker down, so a repeat cannot respawn workers in a loop."""
        key = _chunk_digest(chunk)
        self._fatal_chunks.pop(key, None)
        self._fatal_chunks[key] = asyncio.get_running_loop().time()
        while len(self._fatal_chunks) > FATAL_CHUNK_MEMORY_SIZE:
            self._fatal_chunks.popitem(last=False)

    @property
    def worker_count(self) -> int:
        """Workers alive or starting."""
        return len(self._workers)

    @property
    def worker_pids(self) -> list[int]:
        """Process ids of this pool's workers (for tests and the admin page)."""
        return [w.pid for w in self._workers]

    @property
    def busy_pids(self) -> list[int]:
        """Process ids of workers checked out for a chunk right now."""
        return [w.pid for w in self._workers if w not in self._idle]

    def stats(self) -> dict[str, Any]:
        """Counters for the admin page and metrics."""
        return {
            "voice_id": self.voice.id,
            "version": self.version,
            "workers": len(self._workers),
            "busy": self.busy,
            "idle": len(self._idle),
            "syntheses": self.syntheses,
            "errors": self.errors,
            "synthesis_seconds": round(self.synthesis_seconds, 3),
            "audio_seconds": round(self.audio_seconds, 3),
            "retired": self.retired,
        }

    def _take_idle(self) -> Worker | None:
        """The most recently used live idle worker (the rest may be reaped); dead ones are dropped."""
        while self._idle:
            worker = self._idle.pop()
            if worker.alive:
                return worker
            log.warning("Idle worker %s died (status %s); replacing it",
                        worker.name, worker.process.returncode)
            self._discard(worker)
        return None

    async def _spawn(self) -> Worker:
        """Start a new worker for this voice."""
        name = f"{self.voice.id}#{next(self._names)}"
        worker = await Worker.spawn(self.voice, self._config, name)
        self.sample_rate = worker.sample_rate
        return worker

    def _discard(self, worker: Worker, grace: float = BUSY_STOP_GRACE) -> asyncio.Task[Any]:
        """Stop a worker in the background (it finishes even if the caller is cancelled)."""
        self._workers.discard(worker)
        with contextlib.suppress(ValueError):
            self._idle.remove(worker)
        return self._background.spawn(worker.stop(grace))

    async def synthesize(self, chunk: Chunk, admission: Admission | None = None) -> tuple[int, bytes]:
        """Synthesise one chunk on a checked-out worker: (sample_rate, PCM); raises SynthesisError."""
        collector = _Collector()
        rate = await self.stream(chunk, collector, admission)
        return rate, b"".join(collector.parts)

    async def stream(self, chunk: Chunk, sink: AudioSink, admission: Admission | None = None) -> int:
        """Synthesise one chunk on a checked-out worker, audio to sink(rate, pcm) as it arrives.

        Returns the sample rate once the chunk is complete; raises SynthesisError.
        """
        async with self._capacity, self._limiter.slot(admission):
            worker, fresh = await self._checkout()
            try:
                return await self._run(worker, chunk, sink)
            except WorkerFailed as exc:
                # A warm worker that died while idle (killed from outside, or
                # exiting as we picked it) had not started this chunk (nothing
                # reached the sink): one retry on a fresh worker is safe and
                # hides the race from the client.
                if fresh or not exc.before_start:
                    raise
                log.warning("Retrying a chunk of voice %s on a new worker", self.voice.id)
            worker, _fresh = await self._checkout(spawn=True)
            return await self._run(worker, chunk, sink)

    async def _checkout(self, spawn: bool = False) -> tuple[Worker, bool]:
        """A warm idle worker, else a new one: (worker, whether it is new)."""
        if self._closed:
            # Shutting down: no new worker may outlive close().
            raise WorkerFailed(f"voice {self.voice.id}: the service is stopping")
        worker = None if spawn else self._take_idle()
        if worker is not None:
            return worker, False
        try:
            worker = await self._spawn()
        except WorkerFailed:
            self.errors += 1
            raise
        if self._closed:
            await asyncio.shield(self._discard(worker))
            raise WorkerFailed(f"voice {self.voice.id}: the service is stopping")
        return worker, True

    async def _run(self, worker: Worker, chunk: Chunk, sink: AudioSink) -> int:
        """Run one chunk on a checked-out worker; it goes back idle, or is stopped if in doubt."""
        self._workers.add(worker)
        self.busy += 1
        keep = False
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            rate, size = await worker.stream(chunk, self._config.synthesis_timeout_seconds, sink)
            keep = True
            self.syntheses += 1
            self.synthesis_seconds += loop.time() - started
            self.audio_seconds += size / 2 / rate
            return rate
        except EngineFailed:
            keep = True
            self.errors += 1
            raise
        except WorkerFailed as exc:
            self.errors += 1
            log.warning("%s; discarding it", exc)
            if not exc.before_start:
                self._remember_fatal(chunk)
            raise
        finally:
            # Cancelled mid-utterance, died, stalled: the worker's state is
            # unknown, so it is stopped rather than reused.
            self.busy -= 1
            if keep and worker.alive and not self.retired:
                self._idle.append(worker)
            else:
                await asyncio.shield(self._discard(worker))

    def reap_idle(self, now: float) -> int:
        """Stop workers idle for worker_idle_seconds; returns how many."""
        limit = self._config.worker_idle_seconds
        stale = [w for w in self._idle if now - w.last_used >= limit]
        for worker in stale:
            log.info("Stopping worker %s, idle for %.0f s", worker.name, now - worker.last_used)
            self._discard(worker, IDLE_STOP_GRACE)
        return len(stale)

    def retire(self) -> None:
        """Stop taking work: idle workers stop now, busy ones when their chunk ends."""
        self.retired = True
        for worker in list(self._idle):
            self._discard(worker, IDLE_STOP_GRACE)

    async def close(self) -> None:
        """Stop every worker, busy ones included; no new one starts afterwards."""
        self.retired = True
        self._closed = True
        tasks = [self._discard(worker, IDLE_STOP_GRACE if worker in self._idle else BUSY_STOP_GRACE)
                 for worker in list(self._workers | set(self._idle))]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
