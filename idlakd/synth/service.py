"""The synthesis service: split text, pipeline chunks over a voice's pool, stream audio in order."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, AsyncGenerator, AsyncIterator, Awaitable, Callable, Final, Mapping

from aiohttp import HttpVersion11, web

from idlakd.config import Config
from idlakd.errors import APIError, PayloadTooLarge, ServiceUnavailable, Unprocessable
from idlakd.web.keys import disconnect_counted_key
from idlakd.models import Voice
from idlakd.synth import wav
from idlakd.synth.cache import AudioCache, CacheEntryWriter, cache_key, close_file, read_block
from idlakd.synth.pool import (Admission, BackgroundTasks, SynthesisError, SynthesisLimiter,
                               VoicePool)
from idlakd.synth.document import Chunk, Document, DocumentError, parse
from idlakd.synth.spool import Spool
from idlakd.synth.transcode import (CONTENT_TYPES, FORMATS, TranscodeError, Transcoder,
                                    ffmpeg_executable)

log = logging.getLogger(__name__)

SYNTHESIS_FAILED: Final = "Speech synthesis failed"
# How often a running request checks that its client is still connected.
DISCONNECT_POLL_SECONDS: Final = 0.2
# Texts longer than this are parsed on a thread (a few milliseconds of work).
INLINE_PARSE_CHARS: Final = 2000
# Largest piece handed to response.write / ffmpeg at once.
_WRITE_SIZE: Final = 64 * 1024
# Most audio one chunk holds before its worker's pipe stops being read (back-pressure);
# a request holds at most lookahead chunks of it.
CHUNK_BUFFER_BYTES: Final = 256 * 1024
# A chunk waits for room up to synthesis_timeout_seconds after the consumer last moved,
# plus this: a client that stops reading is let go by _send first (counted as a disconnect).
_ROOM_GRACE_SECONDS: Final = 1.0
# How long a failed ffmpeg's reader waits for the feeder to say whether it caused the failure.
_FEEDER_SETTLE_SECONDS: Final = 1.0


class AudioTooLong(Exception):
    """The request's audio passed max_audio_seconds: synthesis stops (413, or an aborted stream)."""

    def __init__(self, limit: float) -> None:
        super().__init__(f"audio longer than {limit:g} s")
        self.limit = limit


class ConsumerStalled(SynthesisError):
    """A chunk's audio was not taken for too long: its worker is stopped rather than kept waiting."""


class SynthService:
    """Owns the worker pools, the global synthesis bound, the ffmpeg transcoders and the cache."""

    def __init__(self, config: Config) -> None:
        self._config = config
        self._limiter = SynthesisLimiter(config.max_concurrent_syntheses, config.max_queue)
        self._background = BackgroundTasks()
        self._pools: dict[str, VoicePool] = {}
        self._retired: set[VoicePool] = set()
        self._transcoders: set[Transcoder] = set()
        self._cache = AudioCache(config.cache_dir, config.cache_max_bytes)
        self._reaper: asyncio.Task[None] | None = None
        self._accepting = True
        self.requests = 0
        self.failures = 0
        self.disconnects = 0

    # -- lifecycle -------------------------------------------------------

    def _count_disconnect(self, response: web.StreamResponse) -> bool:
        """Count a client that went away once, however many layers notice it."""
        if response.get(disconnect_counted_key):
            return False
        response[disconnect_counted_key] = True
        self.disconnects += 1
        return True

    async def _send(self, response: web.StreamResponse, data: bytes | memoryview) -> None:
        """Write to the client; one that takes nothing for synthesis_timeout_seconds is let go.

        Without this a client that stops reading holds its stream (and ffmpeg) forever.
        """
        try:
            async with asyncio.timeout(self._config.synthesis_timeout_seconds):
                await response.write(data)
        except TimeoutError:
            raise ConnectionResetError("the client stopped reading") from None

    async def start(self) -> None:
        """Open the cache and start the idle-worker reaper (workers themselves start lazily)."""
        # stream:false answers spool to an unlinked temporary file here past spool_bytes
        # (a disk, unlike a tmpfs /tmp, does not count against the daemon's memory).
        await asyncio.to_thread(self._config.state_dir.mkdir, mode=0o700, parents=True,
                                exist_ok=True)
        await self._cache.open()
        self._reaper = asyncio.create_task(self._reap_forever())

    async def close(self) -> None:
        """Stop every worker and every ffmpeg, and wait until all are reaped."""
        self._accepting = False
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
            self._reaper = None
        pools = list(self._pools.values()) + list(self._retired)
        self._pools.clear()
        self._retired.clear()
        await asyncio.gather(*(pool.close() for pool in pools), return_exceptions=True)
        await asyncio.gather(*(t.aclose() for t in list(self._transcoders)), return_exceptions=True)
        await self._background.close()

    async def _reap_forever(self) -> None:
        """Stop idle workers past worker_idle_seconds; forget retired pools once empty."""
        idle = self._config.worker_idle_seconds
        interval = max(0.5, min(30.0, idle / 4))
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(interval)
            now = loop.time()
            for pool in list(self._pools.values()):
                pool.reap_idle(now)
            for pool in list(self._retired):
                if pool.worker_count == 0 and pool.busy == 0:
                    self._retired.discard(pool)

    # -- pools -----------------------------------------------------------

    def _pool_for(self, voice: Voice) -> VoicePool:
        """The pool of this voice at its current version; an older version's pool is retired."""
        pool = self._pools.get(voice.id)
        if pool is not None and pool.version != voice.version:
            log.info("Voice %s changed (version %s -> %s): retiring its workers",
                     voice.id, pool.version, voice.version)
            self.retire(voice.id)
            pool = None
        if pool is None:
            pool = VoicePool(voice, self._config, self._limiter, self._background)
            self._pools[voice.id] = pool
        return pool

    def retire(self, voice_id: str) -> None:
        """Retire a voice's workers (voice changed or removed): idle ones stop, busy ones after their chunk."""
        pool = self._pools.pop(voice_id, None)
        if pool is not None:
            pool.retire()
            self._retired.add(pool)

    def sync_voices(self, versions: Mapping[str, str]) -> None:
        """Retire the pool of every voice that is gone or changed (versions: id -> version)."""
        for voice_id, pool in list(self._pools.items()):
            if versions.get(voice_id) != pool.version:
                log.info("Voice %s removed or changed: retiring its workers", voice_id)
                self.retire(voice_id)

    def worker_pids(self) -> list[int]:
        """Process ids of every worker and ffmpeg this service runs (tests check none is left)."""
        pids = [pid for pool in [*self._pools.values(), *self._retired] for pid in pool.worker_pids]
        return pids + [t.pid for t in self._transcoders]

    def busy_pids(self) -> list[int]:
        """Process ids of workers mid-chunk and of running ffmpegs."""
        pids = [pid for pool in [*self._pools.values(), *self._retired] for pid in pool.busy_pids]
        return pids + [t.pid for t in self._transcoders]

    def stats(self) -> dict[str, Any]:
        """Per-voice workers busy/idle, queue length, syntheses and errors (admin page, metrics)."""
        every_pool = [*self._pools.values(), *self._retired]
        return {
            "voices": {voice_id: pool.stats() for voice_id, pool in sorted(self._pools.items())},
            "syntheses": sum(pool.syntheses for pool in every_pool),
            "synthesis_seconds": round(sum(pool.synthesis_seconds for pool in every_pool), 3),
            "audio_seconds": round(sum(pool.audio_seconds for pool in every_pool), 3),
            "retired_workers": sum(pool.worker_count for pool in self._retired),
            "queue": self._limiter.waiting,
            "running": self._limiter.running,
            "max_concurrent": self._limiter.max_concurrent,
            "max_queue": self._limiter.max_queue,
            "requests": self.requests,
            "failures": self.failures,
            "disconnects": self.disconnects,
            "transcoders": len(self._transcoders),
            "cache": {
                "enabled": self._cache.enabled,
                "files": len(self._cache),
                "bytes": self._cache.total_bytes,
                "max_bytes": self._cache.max_bytes,
                "hits": self._cache.hits,
                "misses": self._cache.misses,
            },
        }

    # -- the request -----------------------------------------------------

    async def _document(self, text: str) -> Document:
        """Parse and bound the request text (a long one off the loop); 422 or 413 if unusable."""
        share = self._config.max_break_share
        try:
            if len(text) > INLINE_PARSE_CHARS:
                document = await asyncio.to_thread(parse, text, share)
            else:
                document = parse(text, share)
        except DocumentError as exc:
            raise Unprocessable(f"text: {exc}") from None
        limit = self._config.max_audio_seconds
        if document.min_audio_seconds() > limit:
            raise PayloadTooLarge(f"text: would make more than the limit of {limit:g} seconds "
                                  "of audio")
        return document

    async def respond(self, request: web.Request, voice: Voice, text: str, audio_format: str,
                      stream: bool = True) -> web.StreamResponse:
        """Answer /speech: audio streamed in order as chunks finish, or a complete file if not stream."""
        if audio_format not in FORMATS:
            raise Unprocessable(f"audio_format: Not a valid choice. Valid choices: {'|'.join(FORMATS)}")
        if not self._accepting:
            raise ServiceUnavailable()
        chunks = list((await self._document(text)).chunks)
        self.requests += 1
        key = cache_key(voice.id, voice.version, audio_format, text) if self._cache.enabled else None
        if key is not None:
            cached = await self._cache.lookup(key)
            if cached is not None:
                return await self._send_cached(request, cached[0], cached[1], audio_format, stream)
        pool = self._pool_for(voice)
        fatal = pool.fatal_chunk(chunks)
        if fatal is not None:
            log.warning("Refused a chunk of voice %s that recently stopped a worker", voice.id)
            raise Unprocessable(f"text: the voice's engine failed on {fatal.text[:40]!r} a moment "
                                "ago; it is not tried again")
        admission = self._limiter.admit()
        response = web.StreamResponse()
        response.content_type = CONTENT_TYPES[audio_format]
        if stream and request.version == HttpVersion11:
            # HTTP/1.0 has no chunked encoding: without a Content-Length aiohttp then
            # ends the body by closing the connection.
            response.enable_chunked_encoding()
        work = asyncio.create_task(
            self._serve(request, response, pool, chunks, audio_format, stream, key, admission))
        watcher = asyncio.create_task(self._watch_client(request, work))
        try:
            return await work
        except asyncio.CancelledError:
            transport = request.transport
            if (transport is None or transport.is_closing()) and self._count_disconnect(response):
                log.info("Client went away during /speech (voice %s); its synthesis stopped",
                         voice.id)
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                # The handler itself was cancelled (handler_cancellation, or shutdown).
                raise
            # The watcher cancelled the work: nothing more to send.
            return response
        finally:
            watcher.cancel()
            try:
                await _cancel_and_wait(work)
            finally:
                admission.release()

    async def _watch_client(self, request: web.Request, work: asyncio.Task[Any]) -> None:
        """Cancel the work (stopping its workers and ffmpeg) as soon as the client disconnects."""
        while not work.done():
            await asyncio.sleep(DISCONNECT_POLL_SECONDS)
            transport = request.transport
            if transport is None or transport.is_closing():
                if not work.cancelling():
                    work.cancel()
                return

    async def _serve(self, request: web.Request, response: web.StreamResponse, pool: VoicePool,
                     chunks: list[Chunk], audio_format: str, stream: bool, key: str | None,
                     admission: Admission) -> web.StreamResponse:
        """Synthesise and send; maps failures to a JSON error before the status line, an abort after."""
        writer: CacheEntryWriter | None = None
        committed = False
        flow = _Flow(self._config.synthesis_timeout_seconds + _ROOM_GRACE_SECONDS)
        try:
            if key is not None:
                writer = await self._cache.begin(key)
            async with contextlib.aclosing(self._synthesise(pool, chunks, admission, flow)) as pieces:
                try:
                    if not await self._deliver(request, response, pool, pieces, audio_format,
                                               stream, writer, flow):
                        return response
                except AudioTooLong as exc:
                    # The voice id only: the text is the user's, and may be long or private.
                    log.warning("Audio for voice %s passed max_audio_seconds (%g s); synthesis "
                                "stopped", pool.voice.id, exc.limit)
                    if response.prepared:
                        # Never a clean end of a truncated file: the client must see
                        # an incomplete body.
                        if request.transport is not None:
                            request.transport.abort()
                        return response
                    raise PayloadTooLarge(
                        f"Audio longer than the limit of {exc.limit:g} seconds") from None
            if writer is not None:
                committed = await writer.commit()
            if stream:
                await response.write_eof()
            return response
        except ConnectionError:  # reset, broken pipe, aiohttp's "Connection lost", or stalled
            self._count_disconnect(response)
            log.info("Client went away during /speech (voice %s)", pool.voice.id)
            if request.transport is not None:
                request.transport.abort()
            return response
        finally:
            if writer is not None and not committed:
                await self._background.finish(writer.abort())

    async def _deliver(self, request: web.Request, response: web.StreamResponse, pool: VoicePool,
                       pieces: AsyncIterator[tuple[int, bytes]], audio_format: str, stream: bool,
                       writer: CacheEntryWriter | None, flow: _Flow) -> bool:
        """Send the audio as a stream or a complete file; False if a started stream was aborted."""
        try:
            rate, first = await anext(pieces)
        except SynthesisError as exc:
            self.failures += 1
            log.error("Synthesis failed for voice %s before any audio: %s", pool.voice.id, exc)
            raise APIError(SYNTHESIS_FAILED) from None
        if not stream:
            try:
                await self._send_complete(request, response, rate, first, pieces, audio_format,
                                          writer)
            except SynthesisError as exc:
                self.failures += 1
                log.error("Synthesis failed for voice %s: %s", pool.voice.id, exc)
                raise APIError(SYNTHESIS_FAILED) from None
            return True
        transcoder: Transcoder | None = None
        if audio_format != "wav":
            try:
                transcoder = await self._start_transcoder(audio_format, rate)
            except TranscodeError as exc:
                self.failures += 1
                log.error("Cannot encode %s: %s", audio_format, exc)
                raise APIError(SYNTHESIS_FAILED) from None
        try:
            await response.prepare(request)
        except BaseException:
            if transcoder is not None:
                await self._stop_transcoder(transcoder)
            raise
        try:
            await self._send_stream(response, rate, first, pieces, transcoder, writer, flow)
        except (SynthesisError, TranscodeError) as exc:
            self.failures += 1
            log.error("Synthesis failed for voice %s mid-stream, aborting the "
                      "connection: %s", pool.voice.id, exc)
            # Never a clean end of a truncated file: the client must see
            # an incomplete body.
            if request.transport is not None:
                request.transport.abort()
            return False
        return True

    async def _synthesise(self, pool: VoicePool, chunks: list[Chunk], admission: Admission,
                          flow: _Flow) -> AsyncGenerator[tuple[int, bytes], None]:
        """Yield (rate, PCM) strictly in text order while the next chunks synthesise in parallel.

        The response's first audio is yielded as soon as its worker sends it,
        before the first sentence is finished. After that the head chunk's
        audio is yielded in pieces of _WRITE_SIZE as it arrives (fewer writes
        and wake-ups per sentence; still far ahead of playback), and a chunk's
        rest when it ends. A later chunk, synthesised meanwhile, comes out
        when it becomes the head. Every chunk yields at least once (empty PCM
        if it had no audio). A chunk holding CHUNK_BUFFER_BYTES not yet taken
        stops reading its worker (which then waits): a slow consumer slows
        the engines down instead of piling audio up here. Past
        max_audio_seconds of audio, AudioTooLong is raised and synthesis stops.
        """
        # Enough chunks in flight to keep every worker of the voice busy, plus
        # the one being written; a bound, so a long text never piles up audio.
        lookahead = pool.size + 1
        pending: list[tuple[asyncio.Task[int], _ChunkAudio]] = []
        index = 0
        first = True
        limit = self._config.max_audio_seconds
        produced = 0  # bytes of PCM yielded so far
        try:
            while index < len(chunks) or pending:
                while index < len(chunks) and len(pending) < lookahead:
                    audio = _ChunkAudio(flow)
                    task = asyncio.create_task(pool.stream(chunks[index], audio.put, admission))
                    task.add_done_callback(audio.finished)
                    pending.append((task, audio))
                    index += 1
                # The head stays in `pending` until done, so cancellation reaches it too.
                task, audio = pending[0]
                yielded = False
                while True:
                    if audio.size and (first or task.done() or audio.size >= _WRITE_SIZE):
                        rate = audio.rate
                        pcm = audio.take()
                        produced += len(pcm)
                        # Counted in samples of the chunk's rate (every chunk shares it).
                        if produced > int(limit * rate) * 2:
                            raise AudioTooLong(limit)
                        yield rate, pcm
                        yielded, first = True, False
                    elif task.done():
                        break
                    else:
                        await audio.wait(1 if first else _WRITE_SIZE)
                rate = await task  # the chunk's failure, if any, is raised here
                pending.pop(0)
                if not yielded:
                    yield rate, b""
        finally:
            # Cancel all before waiting for any: a worker freed by one must not
            # be picked up by the next pending chunk.
            for task, _audio in pending:
                task.cancel()
            for task, _audio in pending:
                await _cancel_and_wait(task)

    async def _send_stream(self, response: web.StreamResponse, rate: int, first: bytes,
                           pieces: AsyncIterator[tuple[int, bytes]], transcoder: Transcoder | None,
                           writer: CacheEntryWriter | None, flow: _Flow) -> None:
        """Write audio to a prepared response as each piece arrives (through ffmpeg if given)."""
        if transcoder is None:
            await self._send(response, wav.streaming_header(rate))
            if writer is not None:
                await writer.write(wav.exact_header(rate, 0))
            data_bytes = 0
            pcm: bytes | None = first
            while pcm is not None:
                for offset in range(0, len(pcm), _WRITE_SIZE):
                    await self._send(response, pcm[offset:offset + _WRITE_SIZE])
                    flow.moved()
                if writer is not None:
                    await writer.write(pcm)
                data_bytes += len(pcm)
                pcm = await _next_pcm(pieces, rate)
            if writer is not None:
                await writer.write_at(0, wav.exact_header(rate, data_bytes))
            return

        async def send(data: bytes) -> None:
            await self._send(response, data)
            flow.moved()
            if writer is not None:
                await writer.write(data)

        await self._transcode(transcoder, rate, first, pieces, send)

    async def _transcode(self, transcoder: Transcoder, rate: int, first: bytes,
                         pieces: AsyncIterator[tuple[int, bytes]],
                         out: Callable[[bytes], Awaitable[None]]) -> None:
        """Feed the PCM through ffmpeg, handing its output to out as it comes; ffmpeg always stops."""
        feeder = asyncio.create_task(self._feed(transcoder, rate, first, pieces))
        try:
            try:
                while data := await transcoder.read():
                    await out(data)
            except TranscodeError:
                # ffmpeg may have stopped because the feeder failed (it stops ffmpeg, then
                # raises): give it a moment to end, and report its reason if so.
                await asyncio.wait([feeder], timeout=_FEEDER_SETTLE_SECONDS)
                if feeder.done() and not feeder.cancelled() and feeder.exception() is not None:
                    raise feeder.exception() from None  # type: ignore[misc]
                raise
            await feeder
        finally:
            try:
                await self._stop_feeder(feeder)
            finally:
                await self._stop_transcoder(transcoder)

    async def _feed(self, transcoder: Transcoder, rate: int, first: bytes,
                    pieces: AsyncIterator[tuple[int, bytes]]) -> None:
        """Push PCM into ffmpeg in order, then close its input; on failure stop ffmpeg so the reader ends."""
        try:
            pcm: bytes | None = first
            while pcm is not None:
                for offset in range(0, len(pcm), _WRITE_SIZE):
                    await transcoder.write(pcm[offset:offset + _WRITE_SIZE])
                pcm = await _next_pcm(pieces, rate)
            await transcoder.close_input()
        except BaseException:
            await self._background.finish(transcoder.aclose())
            raise

    @staticmethod
    async def _stop_feeder(feeder: asyncio.Task[None]) -> None:
        """Cancel the feeder if still running and wait for it (its error was handled by the reader)."""
        await _cancel_and_wait(feeder)
        if not feeder.cancelled():
            feeder.exception()  # retrieved, so asyncio does not log it again

    async def _start_transcoder(self, audio_format: str, rate: int) -> Transcoder:
        """Start ffmpeg and track it so close() can stop it."""
        try:
            transcoder = await Transcoder.start(ffmpeg_executable(self._config), audio_format, rate)
        except OSError as exc:
            raise TranscodeError(f"ffmpeg could not start: {exc}") from None
        self._transcoders.add(transcoder)
        return transcoder

    async def _stop_transcoder(self, transcoder: Transcoder) -> None:
        """Stop and reap ffmpeg, even if the caller is being cancelled."""
        try:
            await self._background.finish(transcoder.aclose())
        finally:
            self._transcoders.discard(transcoder)

    async def _send_complete(self, request: web.Request, response: web.StreamResponse, rate: int,
                             first: bytes, pieces: AsyncIterator[tuple[int, bytes]],
                             audio_format: str, writer: CacheEntryWriter | None) -> None:
        """Synthesise (and encode) everything into a spool, then send one file with Content-Length.

        The spool holds spool_bytes in memory, the rest in an unlinked temporary
        file: however long the answer, the daemon's memory stays bounded.
        """
        body = Spool(self._config.spool_bytes, self._config.state_dir)
        try:
            header = b""
            if audio_format == "wav":
                if writer is not None:
                    await writer.write(wav.exact_header(rate, 0))
                pcm: bytes | None = first
                while pcm is not None:
                    await body.write(pcm)
                    if writer is not None:
                        await writer.write(pcm)
                    pcm = await _next_pcm(pieces, rate)
                # The header knows the size only now; the PCM follows it from the spool.
                header = wav.exact_header(rate, body.size)
                if writer is not None:
                    await writer.write_at(0, header)
            else:
                async def keep(data: bytes) -> None:
                    await body.write(data)
                    if writer is not None:
                        await writer.write(data)

                try:
                    # A tracked ffmpeg (stopped by close()) encodes while synthesis runs.
                    transcoder = await self._start_transcoder(audio_format, rate)
                    await self._transcode(transcoder, rate, first, pieces, keep)
                except TranscodeError as exc:
                    self.failures += 1
                    log.error("Encoding %s failed: %s", audio_format, exc)
                    raise APIError(SYNTHESIS_FAILED) from None
            response.content_length = len(header) + body.size
            await response.prepare(request)
            if header:
                await self._send(response, header)
            async for block in body.blocks():
                view = memoryview(block)
                for offset in range(0, len(view), _WRITE_SIZE):
                    await self._send(response, view[offset:offset + _WRITE_SIZE])
            await response.write_eof()
        finally:
            await self._background.finish(body.aclose())

    async def _send_cached(self, request: web.Request, handle: Any, size: int, audio_format: str,
                           stream: bool) -> web.StreamResponse:
        """Serve a cached file (complete, exact sizes); chunked if a stream was asked for."""
        response = web.StreamResponse()
        response.content_type = CONTENT_TYPES[audio_format]
        if stream and request.version == HttpVersion11:
            response.enable_chunked_encoding()
        else:
            # The size is known: HTTP/1.0 gets it too, even when it asked for a stream.
            response.content_length = size
        try:
            await response.prepare(request)
            while block := await read_block(handle):
                await self._send(response, block)
            await response.write_eof()
        except ConnectionError:  # reset, broken pipe, aiohttp's "Connection lost", or stalled
            self._count_disconnect(response)
            if request.transport is not None:
                request.transport.abort()
        finally:
            await close_file(handle)
        return response


class _Flow:
    """When the request's consumer last moved (took audio, or sent some): bounds waiting for room."""

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


class _ChunkAudio:
    """One chunk's audio as its worker sends it, held (up to a bound) until the consumer takes it."""

    def __init__(self, flow: _Flow, bound: int = CHUNK_BUFFER_BYTES) -> None:
        self.rate = 0
        self.size = 0
        self._parts: list[bytes] = []
        self._changed = asyncio.Event()
        self._room = asyncio.Event()
        self._wake_at = 1
        self._flow = flow
        self._bound = bound

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
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await self._room.wait()

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


async def _next_pcm(pieces: AsyncIterator[tuple[int, bytes]], rate: int) -> bytes | None:
    """The next chunk's PCM, or None at the end; every chunk must share the first one's rate."""
    try:
        next_rate, pcm = await anext(pieces)
    except StopAsyncIteration:
        return None
    if next_rate != rate:
        raise SynthesisError(f"sample rate changed mid-utterance ({rate} -> {next_rate} Hz)")
    return pcm


async def _cancel_and_wait(task: asyncio.Task[Any]) -> None:
    """Cancel task (once) and wait until it has really ended, even if the caller is cancelled meanwhile."""
    if not task.done() and not task.cancelling():
        task.cancel()
    interrupted = False
    while not task.done():
        try:
            await asyncio.wait([task])
        except asyncio.CancelledError:
            # Cleanup must finish (the task is stopping its subprocesses);
            # the caller's cancellation is raised right after.
            interrupted = True
    if not task.cancelled():
        task.exception()  # retrieved: the caller already handled or reported it
    if interrupted:
        raise asyncio.CancelledError
