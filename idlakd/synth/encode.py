"""PCM pieces to the bytes of a format: WAV and PCM straight through, the rest through tracked ffmpegs."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from pathlib import Path
from typing import AsyncGenerator, AsyncIterator, Final

from idlakd.config import Config
from idlakd.synth import wav
from idlakd.synth.cache import CacheEntryWriter
from idlakd.synth.filters import prosody_filters
from idlakd.synth.formats import AudioFormat
from idlakd.synth.options import SpeechOptions
from idlakd.synth.pipeline import PIECE_BYTES, Flow, PcmPieces, next_pcm
from idlakd.synth.spares import Spares
from idlakd.synth.spool import Spool
from idlakd.synth.tasks import BackgroundTasks, cancel_and_wait
from idlakd.synth.transcode import TranscodeError, Transcoder, ffmpeg_executable

log = logging.getLogger(__name__)

# How long a failed ffmpeg's reader waits for the feeder to say whether it caused the failure.
_FEEDER_SETTLE_SECONDS: Final = 1.0


@dataclasses.dataclass(frozen=True)
class Encoding:
    """How one answer's PCM becomes its bytes: the format, the rates in and out, the filters."""

    spec: AudioFormat
    input_rate: int
    output_rate: int
    filters: tuple[str, ...] = ()

    @property
    def via_ffmpeg(self) -> bool:
        """Whether ffmpeg makes the bytes (a codec, a new rate or a filter is needed)."""
        return self.spec.needs_ffmpeg or bool(self.filters) or self.input_rate != self.output_rate

    @property
    def wav_header(self) -> bool:
        """Whether the bytes start with a WAV header written here (ffmpeg then makes raw PCM)."""
        return self.spec.name == "wav"

    @property
    def content_type(self) -> str:
        """The answer's Content-Type (raw PCM names its real rate)."""
        return self.spec.content_type_at(self.output_rate)


def plan_encoding(spec: AudioFormat, voice_rate: int, options: SpeechOptions,
                  native: frozenset[str] = frozenset()) -> Encoding:
    """The Encoding of an answer: options' rate and the prosody the engine did not do (native)."""
    return Encoding(spec, voice_rate, spec.output_rate(voice_rate, options.sample_rate),
                    tuple(prosody_filters(options, native)))


def _pieces(data: bytes) -> list[bytes | memoryview]:
    """data cut into pieces of at most PIECE_BYTES (views, no copies)."""
    if len(data) <= PIECE_BYTES:
        return [data]
    view = memoryview(data)
    return [view[offset:offset + PIECE_BYTES] for offset in range(0, len(view), PIECE_BYTES)]


class Encoder:
    """Turns a stream's PCM into its format; owns every ffmpeg it starts (stats, close)."""

    def __init__(self, config: Config, background: BackgroundTasks) -> None:
        self._config = config
        self._background = background
        self._transcoders: set[Transcoder] = set()
        self._ffmpeg: str | None = None
        # ffmpeg's start (15-25 ms) is longer than an eSpeak sentence: the next request
        # of an encoding finds one started already.
        self._spares: Spares[Encoding] = Spares(config.ffmpeg_spares, self._spawn, background)

    @property
    def pids(self) -> list[int]:
        """Process ids of the ffmpegs working for streams (spares not included)."""
        return [t.pid for t in self._transcoders]

    @property
    def spare_pids(self) -> list[int]:
        """Process ids of the spare ffmpegs waiting for a stream."""
        return self._spares.pids

    async def close(self) -> None:
        """Stop every ffmpeg still running, spares included."""
        await self._spares.close()
        await asyncio.gather(*(t.aclose() for t in list(self._transcoders)),
                             return_exceptions=True)

    async def reap_spares(self) -> int:
        """Stop spares unused for a while; how many."""
        return await self._spares.reap()

    async def start_transcoder(self, encoding: Encoding) -> Transcoder:
        """An ffmpeg for one stream (a spare if one waits), tracked; TranscodeError if none starts."""
        transcoder = await self._spares.take(encoding)
        if transcoder is None:
            transcoder = await self._spawn(encoding)
        # The next stream of this encoding (often a moment away) finds one waiting.
        self._spares.refill(encoding)
        self._transcoders.add(transcoder)
        return transcoder

    async def _spawn(self, encoding: Encoding) -> Transcoder:
        """Start an ffmpeg for encoding (not tracked); TranscodeError if it cannot start."""
        try:
            if self._ffmpeg is None:
                # imageio_ffmpeg imports and looks at the disk: once, off the loop.
                self._ffmpeg = await asyncio.to_thread(ffmpeg_executable, self._config)
            transcoder = await Transcoder.start(
                self._ffmpeg, encoding.spec.name, encoding.input_rate,
                self._config.synthesis_timeout_seconds, encoding.output_rate, encoding.filters)
        except OSError as exc:
            raise TranscodeError(f"ffmpeg could not start: {exc}") from None
        return transcoder

    def prestart(self, encoding: Encoding) -> "Prestarted":
        """Start ffmpeg for encoding in the background, before the first audio confirms its rate."""
        return Prestarted(self, self._background, encoding,
                          asyncio.create_task(self.start_transcoder(encoding)))

    async def stop_transcoder(self, transcoder: Transcoder) -> None:
        """Stop and reap ffmpeg, even if the caller is being cancelled."""
        try:
            await self._background.finish(transcoder.aclose())
        finally:
            self._transcoders.discard(transcoder)

    async def direct(self, encoding: Encoding, first: bytes, pieces: PcmPieces, flow: Flow,
                     writer: CacheEntryWriter | None) -> AsyncGenerator[bytes | memoryview, None]:
        """Streamed PCM without ffmpeg: for WAV a header of unknown length first.

        The cache copy of a WAV gets exact sizes, patched in once the length is known.
        """
        rate = encoding.input_rate
        if encoding.wav_header:
            yield wav.streaming_header(rate)
            if writer is not None:
                await writer.write(wav.exact_header(rate, 0))
        data_bytes = 0
        pcm: bytes | None = first
        while pcm is not None:
            for piece in _pieces(pcm):
                yield piece
                flow.moved()
            if writer is not None:
                await writer.write(pcm)
            data_bytes += len(pcm)
            pcm = await next_pcm(pieces, rate)
        if writer is not None and encoding.wav_header:
            await writer.write_at(0, wav.exact_header(rate, data_bytes))

    async def transcoded(self, transcoder: Transcoder, encoding: Encoding, first: bytes,
                         pieces: PcmPieces, flow: Flow,
                         writer: CacheEntryWriter | None) -> AsyncGenerator[bytes, None]:
        """ffmpeg's output (after a streaming WAV header for wav) while PCM is fed to it concurrently."""
        if not encoding.wav_header:
            encoded = self._encoded(transcoder, encoding.input_rate, first, pieces, flow, writer)
            async with contextlib.aclosing(encoded):
                async for data in encoded:
                    yield data
            return
        rate = encoding.output_rate
        yield wav.streaming_header(rate)
        if writer is not None:
            await writer.write(wav.exact_header(rate, 0))
        data_bytes = 0
        encoded = self._encoded(transcoder, encoding.input_rate, first, pieces, flow, writer)
        async with contextlib.aclosing(encoded):
            async for data in encoded:
                data_bytes += len(data)
                yield data
        if writer is not None:
            await writer.write_at(0, wav.exact_header(rate, data_bytes))

    async def _encoded(self, transcoder: Transcoder, rate: int, first: bytes,
                       pieces: PcmPieces, flow: Flow,
                       writer: CacheEntryWriter | None) -> AsyncGenerator[bytes, None]:
        """ffmpeg's output while PCM is fed to it concurrently; ffmpeg always stops at the end."""
        feeder = asyncio.create_task(self._feed(transcoder, rate, first, pieces))
        try:
            try:
                while data := await transcoder.read():
                    yield data
                    flow.moved()
                    if writer is not None:
                        await writer.write(data)
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
                # Its error, if any, was raised above or is moot (the consumer left).
                await cancel_and_wait(feeder)
            finally:
                await self.stop_transcoder(transcoder)

    async def _feed(self, transcoder: Transcoder, rate: int, first: bytes,
                    pieces: PcmPieces) -> None:
        """Push PCM into ffmpeg in order, then close its input; on failure stop ffmpeg so the reader ends."""
        try:
            pcm: bytes | None = first
            while pcm is not None:
                for piece in _pieces(pcm):
                    await transcoder.write(piece)
                pcm = await next_pcm(pieces, rate)
            await transcoder.close_input()
        except BaseException:
            await self._background.finish(transcoder.aclose())
            raise

    async def complete(self, encoding: Encoding, transcoder: Transcoder | None, first: bytes,
                       pieces: PcmPieces, flow: Flow, writer: CacheEntryWriter | None,
                       spool_dir: Path) -> tuple[bytes, Spool]:
        """Everything encoded (by transcoder, if the encoding needs ffmpeg) into a spool.

        Returns (header to send before it, spool); the caller closes the spool. The
        spool holds spool_bytes in memory, the rest in an unlinked temporary file:
        however long the answer, the daemon's memory stays bounded.
        """
        body = Spool(self._config.spool_bytes, spool_dir)
        try:
            if encoding.wav_header and writer is not None:
                await writer.write(wav.exact_header(encoding.output_rate, 0))
            if transcoder is not None:
                encoded = self._encoded(transcoder, encoding.input_rate, first, pieces, flow,
                                        writer)
                async with contextlib.aclosing(encoded):
                    async for data in encoded:
                        await body.write(data)
            else:
                pcm: bytes | None = first
                while pcm is not None:
                    await body.write(pcm)
                    flow.moved()
                    if writer is not None:
                        await writer.write(pcm)
                    pcm = await next_pcm(pieces, encoding.input_rate)
            if not encoding.wav_header:
                return b"", body
            # The header knows the size only now; the PCM follows it from the spool.
            header = wav.exact_header(encoding.output_rate, body.size)
            if writer is not None:
                await writer.write_at(0, header)
            return header, body
        except BaseException:
            await self._background.finish(body.aclose())
            raise


class Prestarted:
    """An ffmpeg started while the first audio is made (its start would add to the first byte).

    It is started for the rate the voice declares; take() uses it when the
    first audio confirms that rate, else stops it and starts the right one.
    """

    def __init__(self, encoder: Encoder, background: BackgroundTasks, encoding: Encoding,
                 task: asyncio.Task[Transcoder]) -> None:
        self._encoder = encoder
        self._background = background
        self.encoding = encoding
        self._task = task
        self._settled = False

    async def take(self, encoding: Encoding) -> Transcoder:
        """The ffmpeg for encoding: this one if it was started for it; TranscodeError if none starts."""
        if encoding != self.encoding or self._settled:
            await self.aclose()
            return await self._encoder.start_transcoder(encoding)
        try:
            # Shielded: a caller cancelled here must not leave the spawn half done.
            transcoder = await asyncio.shield(self._task)
        except asyncio.CancelledError:
            await self.aclose()
            raise
        self._settled = True
        return transcoder

    async def aclose(self) -> None:
        """Stop this ffmpeg unless it was taken; even a caller being cancelled stops it."""
        if not self._settled:
            self._settled = True
            await self._background.finish(self._discard())

    async def _discard(self) -> None:
        """Wait for the start (a cancelled spawn could leave ffmpeg behind), then stop it."""
        try:
            transcoder = await self._task
        except TranscodeError:
            return
        await self._encoder.stop_transcoder(transcoder)


async def spooled(header: bytes, body: Spool) -> AsyncIterator[bytes | memoryview]:
    """A complete answer: its header, then the spool's content in pieces."""
    if header:
        yield header
    blocks = body.blocks()
    async with contextlib.aclosing(blocks):
        async for block in blocks:
            for piece in _pieces(block):
                yield piece
