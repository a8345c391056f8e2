"""The Synthesizer: voice pools, the limiter, the encoder and the cache behind one call.

``synthesise(voice, text, audio_format, options) -> AudioStream`` is the whole
interface a door needs; ``stats()`` and ``check()`` serve the admin page,
metrics and readiness. Nothing here knows HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from typing import AsyncGenerator, AsyncIterator, BinaryIO, Final, Iterator, Mapping, Sequence

from idlakd.config import Config
from idlakd.errors import Busy, Failed, InvalidRequest, TooLarge
from idlakd.models import Voice
from idlakd.synth.cache import AudioCache, CacheEntryWriter, cache_key, close_file, read_block
from idlakd.synth.document import Chunk, Document, DocumentError, parse
from idlakd.synth.encode import Encoder, Prestarted, plan_encoding, spooled
from idlakd.synth.formats import AUDIO_FORMATS, FORMAT_NAMES, AudioFormat
from idlakd.synth.limiter import Admission, SynthesisLimiter
from idlakd.synth.marks import MarkTrack
from idlakd.synth.options import SpeechOptions
from idlakd.synth.pipeline import AudioTooLong, ChunkFeed, Flow, ordered_pcm
from idlakd.synth.pool import VoicePool
from idlakd.synth.prewarm import Prewarmer, spawns_at_once
from idlakd.synth.stats import CacheStats, SynthStats
from idlakd.synth.stream import AudioStream, PcmMeter
from idlakd.synth.tasks import BackgroundTasks, cancel_and_wait
from idlakd.synth.transcode import TranscodeError, Transcoder
from idlakd.synth.workers import SynthesisError

log = logging.getLogger(__name__)

SYNTHESIS_FAILED: Final = "Speech synthesis failed"
CANNOT_START: Final = "synthesis workers cannot start"
# Texts longer than this are parsed on a thread (a few milliseconds of work).
INLINE_PARSE_CHARS: Final = 2000
# A chunk waits for room up to synthesis_timeout_seconds after the consumer last moved,
# plus this: a door that bounds its own writes by synthesis_timeout_seconds lets a
# client that stops reading go first (and counts it as gone, not as a failure).
_ROOM_GRACE_SECONDS: Final = 1.0
# What check() synthesises, and how long its verdict is trusted: a success for a while
# (it cost a process and a voice load), a failure only briefly.
_CHECK_TEXT: Final = "Ready."
_CHECK_OK_SECONDS: Final = 600.0
_CHECK_FAILED_SECONDS: Final = 10.0


class Synthesizer:
    """Owns the worker pools, the global synthesis bound, the ffmpeg transcoders and the cache."""

    def __init__(self, config: Config) -> None:
        self._config = config
        self._limiter = SynthesisLimiter(config.max_concurrent_syntheses, config.max_queue,
                                         config.job_concurrency)
        self._background = BackgroundTasks()
        self._pools: dict[str, VoicePool] = {}
        self._retired: set[VoicePool] = set()
        self._encoder = Encoder(config, self._background)
        self._cache = AudioCache(config.cache_dir, config.cache_max_bytes)
        self._reaper: asyncio.Task[None] | None = None
        self._prewarmer = Prewarmer(spawns_at_once())
        # The start-up pre-warm, which check() (readiness) waits for.
        self._warming: asyncio.Task[None] | None = None
        self._accepting = True
        self._check: asyncio.Task[bool] | None = None
        self._checked: tuple[bool, float] | None = None
        self.requests = 0
        self.failures = 0
        self.disconnects = 0

    # -- lifecycle -------------------------------------------------------

    async def start(self) -> None:
        """Open the cache and start the idle-worker reaper (workers themselves start lazily)."""
        # stream:false answers spool to an unlinked temporary file here past spool_bytes
        # (a disk, unlike a tmpfs /tmp, does not count against the daemon's memory).
        await asyncio.to_thread(self._config.state_dir.mkdir, mode=0o700, parents=True,
                                exist_ok=True)
        await self._cache.open()
        self._reaper = asyncio.create_task(self._reap_forever(), name="synth-reaper")

    async def close(self) -> None:
        """Stop every worker and every ffmpeg, and wait until all are reaped."""
        self._accepting = False
        await self._prewarmer.close()
        for task in (self._reaper, self._check):
            if task is not None:
                await cancel_and_wait(task)
        self._reaper = self._check = None
        pools = list(self._pools.values()) + list(self._retired)
        self._pools.clear()
        self._retired.clear()
        await asyncio.gather(*(pool.close() for pool in pools), return_exceptions=True)
        await self._encoder.close()
        await self._background.close()

    async def _reap_forever(self) -> None:
        """Stop idle workers past worker_idle_seconds; forget retired pools once unused."""
        idle = self._config.worker_idle_seconds
        interval = max(0.5, min(30.0, idle / 4))
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(interval)
            try:
                now = loop.time()
                for pool in list(self._pools.values()):
                    pool.reap_idle(now)
                await self._encoder.reap_spares()
                self._retired = {pool for pool in self._retired if not pool.unused}
            except Exception:  # noqa: BLE001 - the reaper must outlive a bug in one round
                log.exception("Reaping idle workers failed; trying again in %g s", interval)

    # -- pools -----------------------------------------------------------

    def prewarm(self, voices: Sequence[Voice], startup: bool = False) -> None:
        """With prewarm_workers, start one worker for each voice new or changed since last seen,
        in the background (a few at a time); startup marks the round readiness waits for."""
        if not self._config.prewarm_workers or not self._accepting:
            return
        # A voice already seen keeps its pool (even with its workers reaped when idle):
        # only a voice added, or changed (its old pool retired), is warmed again.
        fresh = [voice for voice in voices
                 if (pool := self._pools.get(voice.id)) is None or pool.version != voice.version]
        if not fresh:
            return
        task = self._prewarmer.warm([self._pool_for(voice) for voice in fresh])
        if startup:
            self._warming = task

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
        """Retire a voice's workers (voice changed or removed): idle ones stop, busy ones after their stream."""
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
        """Process ids of every worker and ffmpeg this synthesizer runs (spare ffmpegs included)."""
        pids = [pid for pool in [*self._pools.values(), *self._retired] for pid in pool.worker_pids]
        return pids + self._encoder.pids + self._encoder.spare_pids

    def spare_pids(self) -> list[int]:
        """Process ids of the spare ffmpegs: started ahead, no input yet, working for nobody."""
        return self._encoder.spare_pids

    def busy_pids(self) -> list[int]:
        """Process ids of workers mid-chunk and of ffmpegs working for a stream (not spares)."""
        pids = [pid for pool in [*self._pools.values(), *self._retired] for pid in pool.busy_pids]
        return pids + self._encoder.pids

    def stats(self) -> SynthStats:
        """Per-voice workers busy/idle, the limiter, requests and failures, transcoders, cache."""
        every_pool = [*self._pools.values(), *self._retired]
        cache = self._cache
        return SynthStats(
            voices={voice_id: pool.stats() for voice_id, pool in sorted(self._pools.items())},
            syntheses=sum(pool.syntheses for pool in every_pool),
            synthesis_seconds=round(sum(pool.synthesis_seconds for pool in every_pool), 3),
            audio_seconds=round(sum(pool.audio_seconds for pool in every_pool), 3),
            retired_workers=sum(pool.worker_count for pool in self._retired),
            queue=self._limiter.waiting, running=self._limiter.running,
            streams=self._limiter.streams, max_concurrent=self._limiter.max_concurrent,
            max_queue=self._limiter.max_queue, max_streams=self._limiter.max_streams,
            requests=self.requests, failures=self.failures, disconnects=self.disconnects,
            transcoders=len(self._encoder.pids),
            cache=CacheStats(enabled=cache.enabled, files=len(cache), bytes=cache.total_bytes,
                             max_bytes=cache.max_bytes, hits=cache.hits, misses=cache.misses))

    # -- readiness -------------------------------------------------------

    async def check(self, voices: Sequence[Voice]) -> None:
        """Raise Failed unless synthesis works: a worker runs, or one just spoke a word.

        While the start-up pre-warm runs, it waits for it first (readiness means warm).

        The word goes through synthesise() like any request (the limiter
        included), and its worker stays warm for the next one. A verdict is
        trusted for a while; a caller that gives up (a timeout) leaves a slow
        first load running for the next call.
        """
        if self._warming is not None:
            # Ready once the start-up pre-warm is over: the first request then finds its
            # voice's worker running. A failed pre-warm falls through to speaking a word.
            # (asyncio.wait: a caller that gives up leaves it running, and it raises nothing.)
            await asyncio.wait([self._warming])
            self._warming = None
        if any(pool.worker_count for pool in self._pools.values()):
            return
        if not voices:
            raise Failed("no voices to synthesise with")
        if self._checked is not None:
            ok, at = self._checked
            if time.monotonic() - at < (_CHECK_OK_SECONDS if ok else _CHECK_FAILED_SECONDS):
                if not ok:
                    raise Failed(CANNOT_START)
                return
        if self._check is None:
            # The cheapest voice to start: eSpeak if there is one.
            voice = min(voices, key=lambda v: v.engine != "espeak")
            self._check = asyncio.create_task(self._speak_a_word(voice), name="synth-check")
        if not await asyncio.shield(self._check):
            raise Failed(CANNOT_START)

    async def _speak_a_word(self, voice: Voice) -> bool:
        """Synthesise _CHECK_TEXT with voice; whether audio came out (the failure is logged)."""
        ok = False
        try:
            audio = await self.synthesise(voice, _CHECK_TEXT, "wav", SpeechOptions(stream=False))
            try:
                async for _data in audio:
                    pass
            finally:
                await audio.aclose()
            ok = True
        except (Failed, Busy, InvalidRequest, TooLarge) as exc:
            log.warning("Readiness: voice %s could not synthesise: %s", voice.id, exc.message)
        finally:
            self._checked, self._check = (ok, time.monotonic()), None
        return ok

    # -- synthesis -------------------------------------------------------

    async def _document(self, text: str, text_type: str, lang: str,
                        speed: float = 1.0) -> Document:
        """Parse and bound the request text (a long one off the loop); speed stretches its audio."""
        reading = functools.partial(parse, text, self._config.max_break_share,
                                    text_type=text_type, lang=lang)
        try:
            # say-as may load a language's number and date data on first use (15 ms).
            if len(text) > INLINE_PARSE_CHARS or "say-as" in text:
                document = await asyncio.to_thread(reading)
            else:
                document = reading()
        except DocumentError as exc:
            raise InvalidRequest(f"text: {exc}") from None
        limit = self._config.max_audio_seconds
        if document.min_audio_seconds() / speed > limit:
            raise TooLarge(f"text: would make more than the limit of {limit:g} seconds of audio")
        return document

    async def _cached(self, key: str) -> tuple[BinaryIO, int] | None:
        """The cached answer for key, after waiting for an identical request writing it now."""
        while True:
            flight = self._cache.in_flight(key)
            if flight is not None:
                await flight.wait()
            found = await self._cache.lookup(key)
            # A twin may have claimed the key during the lookup: wait for it too.
            if found is not None or self._cache.in_flight(key) is None:
                return found

    def abandoned(self) -> None:
        """Count a consumer that left before the end (its stream is stopped by whoever noticed)."""
        self.disconnects += 1

    async def synthesise(self, voice: Voice, text: str, audio_format: str,
                         options: SpeechOptions = SpeechOptions(),
                         background: bool = False) -> AudioStream:
        """The audio of text in voice and format: returned once the answer can start.

        background (a job's text): its chunks yield to interactive ones under the limiter,
        and it is never cached.

        Raises before any byte: InvalidRequest (format, rate, text), TooLarge (audio
        estimate, or more audio than max_audio_seconds before the first byte),
        Busy (limiter full, or closing), Failed (synthesis or encoding failed).
        A stream returns after its first audio; a complete answer once all of
        it is made (its length is then exact). The caller must aclose() it.
        """
        spec = _format(audio_format, options)
        if not self._accepting:
            raise Busy()
        chunks = (await self._document(text, options.text_type, voice.language,
                                       options.speed)).chunks
        self.requests += 1
        # A cached answer is served before any PCM tells the voice's rate: raw PCM, whose
        # Content-Type names it, is cached only when the rate was asked. A cached answer
        # has no marks: a request for marks is always synthesised.
        cacheable = not spec.rate_in_content_type or options.sample_rate is not None
        key = (cache_key(voice.id, voice.version, audio_format, text, options)
               if self._cache.enabled and cacheable and not options.marks and not background
               else None)
        marks = (MarkTrack(options.marks, text, 1 / options.speed) if options.marks else None)
        resources = contextlib.AsyncExitStack()
        try:
            if key is not None:
                cached = await self._cached(key)
                if cached is not None:
                    handle, size = cached
                    resources.push_async_callback(close_file, handle)
                    blocks = _file_blocks(handle)
                    resources.push_async_callback(blocks.aclose)
                    # Cached formats name no rate in their Content-Type, or the asked one (pcm).
                    content_type = spec.content_type_at(options.sample_rate or 0)
                    return self._audio(content_type, size, blocks, resources)
            # Checked again after the awaits above: no pool may appear after close().
            if not self._accepting:
                raise Busy()
            pool = self._pool_for(voice)
            fatal = pool.fatal_chunk(chunks)
            if fatal is not None:
                log.warning("Refused a chunk of voice %s that recently stopped a worker", voice.id)
                raise InvalidRequest(f"text: the voice's engine failed on {fatal.text[:40]!r} a "
                                     "moment ago; it is not tried again")
            admission = self._limiter.admit(background)
            resources.callback(admission.release)
            resources.enter_context(pool.use())
            writer: CacheEntryWriter | None = None
            if key is not None:
                writer = await self._cache.begin(key, self._cache.reserve(key))
                if writer is not None:
                    resources.push_async_callback(writer.abort)
            return await self._speech(voice, spec, options, pool, admission, chunks, marks,
                                      writer, resources)
        except BaseException:
            await self._background.finish(resources.aclose())
            raise

    async def _speech(self, voice: Voice, spec: AudioFormat, options: SpeechOptions,
                      pool: VoicePool, admission: Admission, chunks: Sequence[Chunk] | ChunkFeed,
                      marks: MarkTrack | None, writer: CacheEntryWriter | None,
                      resources: contextlib.AsyncExitStack) -> AudioStream:
        """The AudioStream of chunks on pool, once its first audio exists; resources become its own.

        On failure the caller closes resources.
        """
        audio_format = spec.name
        flow = Flow(self._config.synthesis_timeout_seconds + _ROOM_GRACE_SECONDS)
        # The engines' audio, before a tempo filter makes it 1/speed as long.
        made = ordered_pcm(pool, chunks, admission, flow,
                           self._config.max_audio_seconds * options.speed, marks)
        resources.push_async_callback(made.aclose)
        pcm = PcmMeter(made)  # the stream's audio seconds, for usage
        # No engine applies prosody itself yet: every change is an ffmpeg filter.
        native: frozenset[str] = frozenset()
        prestarted: Prestarted | None = None
        if voice.sample_rate is not None:
            # ffmpeg's start (10-25 ms) overlaps the first chunk's synthesis instead
            # of adding to the first byte, at the rate the voice declares.
            expected = plan_encoding(spec, voice.sample_rate, options, native)
            if expected.via_ffmpeg:
                prestarted = self._encoder.prestart(expected)
                resources.push_async_callback(prestarted.aclose)
        with self._failures(voice, "before any audio"):
            rate, first = await anext(pcm)
        length: int | None = None
        encoding = plan_encoding(spec, rate, options, native)
        content_type = encoding.content_type
        transcoder: Transcoder | None = None
        if encoding.via_ffmpeg:
            with self._failures(voice, f"cannot encode {audio_format}"):
                transcoder = await (self._encoder.start_transcoder(encoding)
                                    if prestarted is None else prestarted.take(encoding))
            resources.push_async_callback(self._encoder.stop_transcoder, transcoder)
        if not options.stream:
            with self._failures(voice, "before the answer"):
                header, spool = await self._encoder.complete(
                    encoding, transcoder, first, pcm, flow, writer, self._config.state_dir)
            resources.push_async_callback(spool.aclose)
            length = len(header) + spool.size
            body: AsyncIterator[bytes | memoryview] = spooled(header, spool)
            if writer is not None:
                # Made durable off the answer's path: the client never waits for fsync.
                self._background.spawn(writer.commit())
        elif transcoder is None:
            body = self._encoder.direct(encoding, first, pcm, flow, writer)
        else:
            body = self._encoder.transcoded(transcoder, encoding, first, pcm, flow, writer)
        guarded = self._guarded(body, voice, writer)
        resources.push_async_callback(guarded.aclose)
        return self._audio(content_type, length, guarded, resources, pcm, marks)

    async def open_live(self, voice: Voice, audio_format: str,
                        options: SpeechOptions = SpeechOptions()) -> LiveSpeech:
        """A session whose text comes while it plays (plain text; no cache); Busy when full."""
        spec = _format(audio_format, options)
        if not self._accepting:
            raise Busy()
        resources = contextlib.AsyncExitStack()
        try:
            pool = self._pool_for(voice)
            admission = self._limiter.admit()
            resources.callback(admission.release)
            resources.enter_context(pool.use())
        except BaseException:
            await self._background.finish(resources.aclose())
            raise
        self.requests += 1
        return LiveSpeech(self, voice, spec, options, pool, admission, resources)

    def _audio(self, content_type: str, length: int | None,
               body: AsyncIterator[bytes | memoryview],
               resources: contextlib.AsyncExitStack, meter: PcmMeter | None = None,
               marks: MarkTrack | None = None) -> AudioStream:
        """An AudioStream owning resources (closed by its aclose)."""
        return AudioStream(content_type, length, body, resources.pop_all(), self._background,
                           self.abandoned, meter, marks)

    @contextlib.contextmanager
    def _failures(self, voice: Voice, when: str) -> Iterator[None]:
        """Synthesis or encoding errors become Failed, audio past the limit TooLarge (logged here)."""
        try:
            yield
        except (SynthesisError, TranscodeError, StopAsyncIteration) as exc:
            self.failures += 1
            log.error("Synthesis failed for voice %s %s: %s", voice.id, when,
                      exc or type(exc).__name__)
            raise Failed(SYNTHESIS_FAILED) from None
        except AudioTooLong:
            # The voice id only: the text is the user's, and may be long or private.
            limit = self._config.max_audio_seconds
            log.warning("Audio for voice %s passed max_audio_seconds (%g s); synthesis stopped",
                        voice.id, limit)
            raise TooLarge(f"Audio longer than the limit of {limit:g} seconds") from None

    async def _guarded(self, body: AsyncIterator[bytes | memoryview], voice: Voice,
                       writer: CacheEntryWriter | None
                       ) -> AsyncGenerator[bytes | memoryview, None]:
        """body with its failures as domain errors; the cache entry committed after the last byte."""
        with self._failures(voice, "mid-stream"):
            async with contextlib.aclosing(body):  # type: ignore[type-var]
                async for data in body:
                    yield data
        if writer is not None and not writer.closed:
            # The consumer has the last byte: only now is the entry made durable.
            self._background.spawn(writer.commit())


def _format(audio_format: str, options: SpeechOptions) -> AudioFormat:
    """The format asked for, checked with the asked rate; InvalidRequest if either is refused."""
    spec = AUDIO_FORMATS.get(audio_format)
    if spec is None:
        raise InvalidRequest(
            f"audio_format: Not a valid choice. Valid choices: {'|'.join(FORMAT_NAMES)}")
    refused = None if options.sample_rate is None else spec.refused_rate(options.sample_rate)
    if refused is not None:
        raise InvalidRequest(f"sample_rate: {refused}")
    return spec


class LiveSpeech:
    """Speech whose text arrives while it plays: say() adds plain text, end() says no more comes.

    audio() returns the one AudioStream of the whole session once its first
    audio exists; closing that stream (or this object, before it) stops
    everything working for the session and releases its place in the limiter.
    """

    def __init__(self, synth: "Synthesizer", voice: Voice, spec: AudioFormat,
                 options: SpeechOptions, pool: VoicePool, admission: Admission,
                 resources: contextlib.AsyncExitStack) -> None:
        self._synth = synth
        self.voice = voice
        self._spec = spec
        self._options = options
        self._pool = pool
        self._admission = admission
        self._resources = resources
        self._feed = ChunkFeed(closed=False)
        self._marks = (MarkTrack(options.marks, "", 1 / options.speed) if options.marks else None)
        self._said = 0  # characters said so far (where the next text's offsets start)
        #: End offset of the last words said (what until_spoken() of "all said so far" waits for).
        self.queued = 0

    @property
    def ended(self) -> bool:
        """Whether end() was called."""
        return self._feed.closed

    async def say(self, text: str) -> int:
        """Queue plain text (sentences or parts of one) after what was said; its character count.

        Raises InvalidRequest (nothing to say, a chunk that just crashed the voice)
        or TooLarge (the audio estimate) before anything is queued.
        """
        if self._feed.closed:
            raise InvalidRequest("text: the speech has ended")
        document = await self._synth._document(text, "text", self.voice.language,
                                               self._options.speed)
        fatal = self._pool.fatal_chunk(document.chunks)
        if fatal is not None:
            raise InvalidRequest(f"text: the voice's engine failed on {fatal.text[:40]!r} a "
                                 "moment ago; it is not tried again")
        if self._marks is not None:
            self._marks.append_text(text)
        chunks = [chunk.shifted(self._said) for chunk in document.chunks]
        self._feed.add(chunks)
        self.queued = max([self.queued] + [source[1] for chunk in chunks
                                           if (source := chunk.source()) is not None])
        self._said += len(text)
        return len(text)

    @property
    def unspoken(self) -> int:
        """Characters of words said whose audio the consumer has not taken yet."""
        return self.queued - self._feed.spoken

    async def until_spoken(self, end: int) -> None:
        """Until the consumer of audio() has taken the audio of the words up to offset end."""
        await self._feed.until_spoken(end)

    def end(self) -> None:
        """No more text: the audio ends after what was said."""
        self._feed.close()

    async def audio(self) -> AudioStream:
        """The session's audio, once its first sound exists (waits for text); call once."""
        try:
            return await self._synth._speech(self.voice, self._spec, self._options, self._pool,
                                             self._admission, self._feed, self._marks, None,
                                             self._resources)
        except BaseException:
            await self.aclose()
            raise

    async def aclose(self) -> None:
        """Stop the session if audio() has not taken it over; idempotent."""
        self._feed.close()
        await self._synth._background.finish(self._resources.aclose())


async def _file_blocks(handle: BinaryIO) -> AsyncGenerator[bytes, None]:
    """A cached file's content, block by block, read off the loop."""
    while block := await read_block(handle):
        yield block
