"""The workers of one voice: started lazily, kept warm, one checked out per chunk, stopped cleanly."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import itertools
import logging
from typing import Any, Callable, Final, Iterable, Iterator

from idlakd.config import Config
from idlakd.models import Voice
from idlakd.synth.document import Chunk
from idlakd.synth.limiter import Admission, Lease, SynthesisLimiter
from idlakd.synth.stats import PoolStats
from idlakd.synth.tasks import BackgroundTasks
from idlakd.synth.workers import (BUSY_STOP_GRACE, IDLE_STOP_GRACE, AudioSink, Collector,
                                  EngineFailed, EventSink, Worker, WorkerFailed)
from idlakd.worker.protocol import encode_segments

log = logging.getLogger(__name__)

# A chunk that killed or stalled a worker is refused for this long (bounded count).
FATAL_CHUNK_MEMORY_SECONDS: Final = 600.0
FATAL_CHUNK_MEMORY_SIZE: Final = 1024


def _chunk_digest(chunk: Chunk) -> str:
    """A stable digest of what a worker is asked to say."""
    return hashlib.sha256(encode_segments(chunk.wire())).hexdigest()


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
        # Streams using the pool: a retired pool keeps its workers for them, so an
        # in-flight request does not start a fresh worker for every remaining chunk.
        self.users = 0
        self.retired = False
        self._closed = False
        self.syntheses = 0
        self.errors = 0
        self.synthesis_seconds = 0.0
        self.audio_seconds = 0.0
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
        """Process ids of this pool's workers."""
        return [w.pid for w in self._workers]

    @property
    def busy_pids(self) -> list[int]:
        """Process ids of workers checked out for a chunk right now."""
        return [w.pid for w in self._workers if w not in self._idle]

    @property
    def unused(self) -> bool:
        """No worker, no chunk, no stream: a retired pool in this state can be forgotten."""
        return not self._workers and self.busy == 0 and self.users == 0

    def stats(self) -> PoolStats:
        """Counters for the admin page and metrics."""
        return PoolStats(voice_id=self.voice.id, version=self.version,
                         workers=len(self._workers), busy=self.busy, idle=len(self._idle),
                         syntheses=self.syntheses, errors=self.errors,
                         synthesis_seconds=round(self.synthesis_seconds, 3),
                         audio_seconds=round(self.audio_seconds, 3), retired=self.retired)

    @contextlib.contextmanager
    def use(self) -> Iterator[VoicePool]:
        """Hold the pool for one stream (its chunks may follow each other after a retire)."""
        self.users += 1
        try:
            yield self
        finally:
            self.users -= 1
            if self.retired and self.users == 0:
                self._stop_idle()

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

    def _discard(self, worker: Worker, grace: float = BUSY_STOP_GRACE) -> asyncio.Task[Any]:
        """Stop a worker in the background (it finishes even if the caller is cancelled)."""
        self._workers.discard(worker)
        with contextlib.suppress(ValueError):
            self._idle.remove(worker)
        return self._background.spawn(worker.stop(grace))

    async def synthesize(self, chunk: Chunk, admission: Admission | None = None) -> tuple[int, bytes]:
        """Synthesise one chunk on a checked-out worker: (sample_rate, PCM); raises SynthesisError."""
        collector = Collector()
        rate = await self.stream(chunk, collector, admission)
        return rate, b"".join(collector.parts)

    async def stream(self, chunk: Chunk, sink: AudioSink, admission: Admission | None = None,
                     on_slot: Callable[[Lease], None] | None = None,
                     on_event: EventSink | None = None) -> int:
        """Synthesise one chunk on a checked-out worker, audio to sink(rate, pcm) as it arrives.

        on_slot receives the chunk's synthesis slot once held (the sink may pause it);
        on_event, where the chunk's segments and words fall (asked for only when given).

        Returns the sample rate once the chunk is complete; raises SynthesisError.
        """
        # A background chunk (a job's) takes its slot before a worker of the voice: waiting
        # for a slot, it must not hold a worker an interactive request of the voice could use.
        background = admission is not None and admission.background
        async with contextlib.AsyncExitStack() as held:
            if not background:
                await held.enter_async_context(self._capacity)
            lease = await held.enter_async_context(self._limiter.slot(admission))
            if background:
                await held.enter_async_context(self._capacity)
            if on_slot is not None:
                on_slot(lease)
            worker, fresh = await self._checkout()
            try:
                return await self._run(worker, chunk, sink, on_event)
            except WorkerFailed as exc:
                # A warm worker that died while idle (killed from outside, or
                # exiting as we picked it) had not started this chunk (nothing
                # reached the sink): one retry on a fresh worker is safe and
                # hides the race from the client.
                if fresh or not exc.before_start:
                    raise
                log.warning("Retrying a chunk of voice %s on a new worker", self.voice.id)
            worker, _fresh = await self._checkout(spawn=True)
            return await self._run(worker, chunk, sink, on_event)

    async def _checkout(self, spawn: bool = False) -> tuple[Worker, bool]:
        """A warm idle worker, else a new one: (worker, whether it is new)."""
        if self._closed:
            # Shutting down: no new worker may outlive close().
            raise WorkerFailed(f"voice {self.voice.id}: the service is stopping")
        worker = None if spawn else self._take_idle()
        if worker is not None:
            return worker, False
        name = f"{self.voice.id}#{next(self._names)}"
        try:
            worker = await Worker.spawn(self.voice, self._config, name)
        except WorkerFailed:
            self.errors += 1
            raise
        if self._closed:
            await asyncio.shield(self._discard(worker))
            raise WorkerFailed(f"voice {self.voice.id}: the service is stopping")
        return worker, True

    async def _run(self, worker: Worker, chunk: Chunk, sink: AudioSink,
                   on_event: EventSink | None = None) -> int:
        """Run one chunk on a checked-out worker; it goes back idle, or is stopped if in doubt."""
        self._workers.add(worker)
        self.busy += 1
        keep = False
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            rate, size = await worker.stream(chunk, self._config.synthesis_timeout_seconds, sink,
                                             on_event)
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
            # unknown, so it is stopped rather than reused. A retired pool keeps
            # a good worker only while a stream still has chunks for it.
            self.busy -= 1
            if keep and worker.alive and not self._closed and (not self.retired or self.users):
                self._idle.append(worker)
            else:
                await asyncio.shield(self._discard(worker))

    async def warm(self) -> bool:
        """Start one worker ahead of any request (pre-warm), unless one runs; whether one is idle now.

        Raises WorkerFailed if it cannot start.
        """
        if self._workers or self.retired:
            return bool(self._idle)
        # A place of the pool, like a chunk: with workers_per_voice=1 the first request
        # waits for this worker instead of starting a second.
        async with self._capacity:
            if self._workers or self.retired:
                return bool(self._idle)
            worker, _fresh = await self._checkout(spawn=True)
            if self.retired:
                await asyncio.shield(self._discard(worker, IDLE_STOP_GRACE))
                return False
            self._workers.add(worker)
            self._idle.append(worker)
            return True

    def reap_idle(self, now: float) -> int:
        """Stop workers idle for worker_idle_seconds; returns how many."""
        limit = self._config.worker_idle_seconds
        stale = [w for w in self._idle if now - w.last_used >= limit]
        for worker in stale:
            log.info("Stopping worker %s, idle for %.0f s", worker.name, now - worker.last_used)
            self._discard(worker, IDLE_STOP_GRACE)
        return len(stale)

    def _stop_idle(self) -> None:
        """Stop every idle worker."""
        for worker in list(self._idle):
            self._discard(worker, IDLE_STOP_GRACE)

    def retire(self) -> None:
        """Take no new streams: idle workers stop once no running stream needs them, busy ones after their chunk."""
        self.retired = True
        if self.users == 0:
            self._stop_idle()

    async def close(self) -> None:
        """Stop every worker, busy ones included; no new one starts afterwards."""
        self.retired = True
        self._closed = True
        tasks = [self._discard(worker, IDLE_STOP_GRACE if worker in self._idle else BUSY_STOP_GRACE)
                 for worker in list(self._workers | set(self._idle))]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
