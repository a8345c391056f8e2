"""A document's chunks synthesised ahead on a voice's pool and handed out strictly in order.

Back-pressure runs from the consumer to the engines: a chunk holding
CHUNK_BUFFER_BYTES not yet taken stops reading its worker's pipe, so the
worker blocks on its write and its engine pauses. While it waits, the chunk
gives its global synthesis slot back (a paused worker uses no CPU), so slow
readers cannot hold every slot and stall other voices.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from typing import Any, AsyncGenerator, AsyncIterator, Callable, Final, Sequence

from idlakd.synth.document import Chunk
from idlakd.synth.limiter import Admission, Lease
from idlakd.synth.marks import MarkTrack
from idlakd.synth.pool import VoicePool
from idlakd.synth.tasks import cancel_and_wait
from idlakd.synth.workers import ChunkEvent, SynthesisError

log = logging.getLogger(__name__)

# Pieces of a head chunk's audio are handed out once this much has gathered
# (fewer writes and wake-ups per sentence; still far ahead of playback).
PIECE_BYTES: Final = 64 * 1024
# Most audio one chunk holds before its worker's pipe stops being read (back-pressure);
# a stream holds at most lookahead chunks of it.
CHUNK_BUFFER_BYTES: Final = 256 * 1024

#: (sample rate, PCM s16le) pieces of one stream, in text order.
PcmPieces = AsyncIterator[tuple[int, bytes]]


class AudioTooLong(Exception):
    """The stream's audio passed max_audio_seconds: synthesis stops."""

    def __init__(self, limit: float) -> None:
        super().__init__(f"audio longer than {limit:g} s")
        self.limit = limit


class ConsumerStalled(SynthesisError):
    """A chunk's audio was not taken for too long: its worker is stopped rather than kept waiting."""


class Flow:
    """When the stream's consumer last moved (took audio, or sent some): bounds waiting for room."""

    def __init__(self, patience: float) -> None:
        self.patience = patience
        self._loop = asyncio.get_running_loop()
        self._last = self._loop.time()

    def moved(self) -> None:
        """The consumer made progress."""
        self._last = self._loop.time()

    def remaining(self) -> float:
        """Seconds a chunk may still wait for room before its consumer counts as stalled."""
        return self._last + self.patience - self._loop.time()


class ChunkFeed:
    """The chunks of one stream in text order: all known at once, or added while it plays (a live session).

    The pipeline takes chunks as it has room for them; add() wakes it, close()
    says no more will come (the stream ends after the last one's audio).
    """

    def __init__(self, chunks: Sequence[Chunk] = (), closed: bool = True) -> None:
        self._chunks: collections.deque[Chunk] = collections.deque(chunks)
        self.closed = closed
        self._changed = asyncio.Event()
        self._listener: Callable[[], None] | None = None
        #: End offset of the text whose audio the consumer has taken (a live door's flush).
        self.spoken = 0
        self._spoken_waiters: list[tuple[int, asyncio.Future[None]]] = []

    def add(self, chunks: Sequence[Chunk]) -> None:
        """More chunks, after the ones before."""
        if self.closed:
            raise RuntimeError("chunks added to a closed feed")
        self._chunks.extend(chunks)
        self._changed.set()
        if self._listener is not None:
            self._listener()

    def close(self) -> None:
        """No more chunks will come."""
        self.closed = True
        self._changed.set()

    def listen(self, listener: Callable[[], None] | None) -> None:
        """Call listener (synchronously) whenever chunks are added."""
        self._listener = listener

    def take(self) -> Chunk | None:
        """The next chunk, if one is waiting."""
        return self._chunks.popleft() if self._chunks else None

    def taken(self, chunk: Chunk) -> None:
        """The consumer has taken all of chunk's audio: wake whoever waits for its text."""
        source = chunk.source()
        if source is None or source[1] <= self.spoken:
            return
        self.spoken = source[1]
        waiting = self._spoken_waiters
        self._spoken_waiters = [(end, future) for end, future in waiting if end > self.spoken]
        for end, future in waiting:
            if end <= self.spoken and not future.done():
                future.set_result(None)

    async def until_spoken(self, end: int) -> None:
        """Until the audio of the text up to offset end has been taken."""
        if end <= self.spoken:
            return
        future = asyncio.get_running_loop().create_future()
        self._spoken_waiters.append((end, future))
        await future

    @property
    def exhausted(self) -> bool:
        """Closed with nothing left to take."""
        return self.closed and not self._chunks

    async def wait(self) -> None:
        """Until chunks are added or the feed is closed."""
        self._changed.clear()
        if not self._chunks and not self.closed:
            await self._changed.wait()


class ChunkAudio:
    """One chunk's audio as its worker sends it, held (up to a bound) until the consumer takes it."""

    def __init__(self, flow: Flow, bound: int = CHUNK_BUFFER_BYTES) -> None:
        self.rate = 0
        self.size = 0
        self._parts: list[bytes] = []
        self._changed = asyncio.Event()
        self._room = asyncio.Event()
        self._wake_at = 1
        self._flow = flow
        self._bound = bound
        self._lease: Lease | None = None
        #: The worker's events not yet placed as marks, in arrival order.
        self.events: list[ChunkEvent] = []

    def hold(self, lease: Lease) -> None:
        """The chunk's synthesis slot, given back while the chunk waits for room."""
        self._lease = lease

    async def put(self, rate: int, pcm: bytes) -> None:
        """The sink given to the pool: one audio frame arrived; waits while bound bytes are held.

        Not returning leaves the worker's pipe unread, so the worker blocks on
        its write and its engine pauses. The wait is bounded by the consumer's
        progress, not by the worker's silence timeout: a consumer that moves
        nothing for the flow's patience raises ConsumerStalled (the worker is
        then stopped).
        """
        self.rate = rate
        self._parts.append(pcm)
        self.size += len(pcm)
        if self.size >= self._wake_at:
            self._changed.set()
        while self.size >= self._bound:
            remaining = self._flow.remaining()
            if remaining <= 0:
                raise ConsumerStalled(f"audio not taken for {self._flow.patience:g} s")
            self._room.clear()
            async with contextlib.AsyncExitStack() as stack:
                if self._lease is not None:
                    await stack.enter_async_context(self._lease.paused())
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(remaining):
                        await self._room.wait()

    def event(self, event: ChunkEvent) -> None:
        """The event sink given to the pool: kept until its audio is handed out."""
        self.events.append(event)

    def finished(self, _task: asyncio.Task[Any]) -> None:
        """Done callback of the chunk's task: wake the consumer to see the end (or failure)."""
        self._changed.set()

    def take(self) -> bytes:
        """Everything that arrived since the last take, joined; makes room for the worker."""
        pcm = b"".join(self._parts) if len(self._parts) > 1 else self._parts[0]
        self._parts = []
        self.size = 0
        self._room.set()
        self._flow.moved()
        return pcm

    async def wait(self, size: int) -> None:
        """Until at least size bytes are held, or the chunk's task ended."""
        self._wake_at = size
        self._changed.clear()
        await self._changed.wait()


def _place(marks: MarkTrack, chunk: Chunk, audio: ChunkAudio, start: int, rate: int,
           until: int | None) -> None:
    """Turn the chunk's events up to sample until (None: all) into marks."""
    while audio.events and (until is None or audio.events[0].sample <= until):
        marks.place(chunk, audio.events.pop(0), start, rate)


async def ordered_pcm(pool: VoicePool, chunks: Sequence[Chunk] | ChunkFeed, admission: Admission,
                      flow: Flow, max_audio_seconds: float, marks: MarkTrack | None = None
                      ) -> AsyncGenerator[tuple[int, bytes], None]:
    """Yield (rate, PCM) strictly in text order while the next chunks synthesise in parallel.

    The first audio is yielded as soon as its worker sends it, before the
    first sentence is finished. After that the head chunk's audio is yielded
    in pieces of PIECE_BYTES as it arrives, and a chunk's rest when it ends. A
    later chunk, synthesised meanwhile, comes out when it becomes the head.
    Every chunk yields at least once (empty PCM if it had no audio). Past
    max_audio_seconds of audio, AudioTooLong is raised and synthesis stops.
    With marks, each chunk's marks are placed as its audio is yielded (a mark
    is due once the audio it points at has been). With a ChunkFeed still open,
    the stream waits for more chunks after the last one's audio.
    """
    feed = chunks if isinstance(chunks, ChunkFeed) else ChunkFeed(chunks)
    # Enough chunks in flight to keep every worker of the voice busy, plus
    # the one being consumed; a bound, so a long text never piles up audio.
    lookahead = pool.size + 1
    pending: list[tuple[asyncio.Task[int], ChunkAudio, Chunk]] = []
    first = True
    produced = 0  # bytes of PCM yielded so far

    def fill() -> None:
        """Start chunks until lookahead are in flight (also when a live feed gets more)."""
        while len(pending) < lookahead and (chunk := feed.take()) is not None:
            audio = ChunkAudio(flow)
            task = asyncio.create_task(pool.stream(
                chunk, audio.put, admission, audio.hold, None if marks is None else audio.event))
            task.add_done_callback(audio.finished)
            pending.append((task, audio, chunk))

    feed.listen(fill)
    try:
        while True:
            fill()
            if not pending:
                if feed.exhausted:
                    break
                await feed.wait()
                # A live stream ran dry: its listener waits, so the next audio goes out at once.
                first = True
                continue
            # The head stays in `pending` until done, so cancellation reaches it too.
            task, audio, chunk = pending[0]
            chunk_start = produced // 2  # samples before this chunk
            yielded = False
            while True:
                if audio.size and (first or task.done() or audio.size >= PIECE_BYTES):
                    rate = audio.rate
                    pcm = audio.take()
                    produced += len(pcm)
                    # Counted in samples of the chunk's rate (every chunk shares it).
                    if produced > int(max_audio_seconds * rate) * 2:
                        raise AudioTooLong(max_audio_seconds)
                    if marks is not None:
                        _place(marks, chunk, audio, chunk_start, rate, produced // 2 - chunk_start)
                    yield rate, pcm
                    yielded, first = True, False
                elif task.done():
                    break
                else:
                    await audio.wait(1 if first else PIECE_BYTES)
            rate = await task  # the chunk's failure, if any, is raised here
            pending.pop(0)
            if marks is not None:
                _place(marks, chunk, audio, chunk_start, rate, None)
            if not yielded:
                yield rate, b""
            # Resumed after the chunk's last piece: the consumer has all of it.
            feed.taken(chunk)
    finally:
        feed.listen(None)
        # Cancel all before waiting for any: a worker freed by one must not
        # be picked up by the next pending chunk.
        for task, _audio, _chunk in pending:
            task.cancel()
        for task, _audio, _chunk in pending:
            error = await cancel_and_wait(task)
            if error is not None:
                # A chunk ahead of the consumer failed after the stream ended anyway.
                log.debug("A chunk of voice %s ahead of an ended stream failed: %s",
                          pool.voice.id, error)


async def next_pcm(pieces: PcmPieces, rate: int) -> bytes | None:
    """The next piece's PCM, or None at the end; every piece must share the first one's rate."""
    try:
        next_rate, pcm = await anext(pieces)
    except StopAsyncIteration:
        return None
    if next_rate != rate:
        raise SynthesisError(f"sample rate changed mid-utterance ({rate} -> {next_rate} Hz)")
    return pcm
