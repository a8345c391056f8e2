"""PCM pieces to the bytes of a format: WAV straight through, ogg/mp3 through tracked ffmpegs."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path
from typing import AsyncGenerator, AsyncIterator, Final

from idlakd.config import Config
from idlakd.synth import wav
from idlakd.synth.cache import CacheEntryWriter
from idlakd.synth.pipeline import PIECE_BYTES, Flow, PcmPieces, next_pcm
from idlakd.synth.spool import Spool
from idlakd.synth.tasks import BackgroundTasks, cancel_and_wait
from idlakd.synth.transcode import TranscodeError, Transcoder, ffmpeg_executable

log = logging.getLogger(__name__)

# How long a failed ffmpeg's reader waits for the feeder to say whether it caused the failure.
_FEEDER_SETTLE_SECONDS: Final = 1.0


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

    @property
    def pids(self) -> list[int]:
        """Process ids of the running ffmpegs."""
        return [t.pid for t in self._transcoders]

    async def close(self) -> None:
        """Stop every ffmpeg still running."""
        await asyncio.gather(*(t.aclose() for t in list(self._transcoders)),
                             return_exceptions=True)

    async def start_transcoder(self, audio_format: str, rate: int) -> Transcoder:
        """Start ffmpeg for one stream and track it; TranscodeError if it cannot start."""
        try:
            if self._ffmpeg is None:
                # imageio_ffmpeg imports and looks at the disk: once, off the loop.
                self._ffmpeg = await asyncio.to_thread(ffmpeg_executable, self._config)
            transcoder = await Transcoder.start(self._ffmpeg, audio_format, rate,
                                                self._config.synthesis_timeout_seconds)
        except OSError as exc:
            raise TranscodeError(f"ffmpeg could not start: {exc}") from None
        self._transcoders.add(transcoder)
        return transcoder

    async def stop_transcoder(self, transcoder: Transcoder) -> None:
        """Stop and reap ffmpeg, even if the caller is being cancelled."""
        try:
            await self._background.finish(transcoder.aclose())
        finally:
            self._transcoders.discard(transcoder)

    async def wav(self, rate: int, first: bytes, pieces: PcmPieces, flow: Flow,
                  writer: CacheEntryWriter | None) -> AsyncGenerator[bytes | memoryview, None]:
        """A streamed WAV: a header of unknown length, then the PCM as it comes.

        The cache copy gets exact sizes, patched in once the length is known.
        """
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
        if writer is not None:
            await writer.write_at(0, wav.exact_header(rate, data_bytes))

    async def transcoded(self, transcoder: Transcoder, rate: int, first: bytes,
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

    async def complete(self, audio_format: str, rate: int, first: bytes, pieces: PcmPieces,
                       flow: Flow, writer: CacheEntryWriter | None,
                       spool_dir: Path) -> tuple[bytes, Spool]:
        """Everything encoded into a spool: (header to send before it, spool); the caller closes the spool.

        The spool holds spool_bytes in memory, the rest in an unlinked temporary
        file: however long the answer, the daemon's memory stays bounded.
        """
        body = Spool(self._config.spool_bytes, spool_dir)
        try:
            if audio_format == "wav":
                if writer is not None:
                    await writer.write(wav.exact_header(rate, 0))
                pcm: bytes | None = first
                while pcm is not None:
                    await body.write(pcm)
                    flow.moved()
                    if writer is not None:
                        await writer.write(pcm)
                    pcm = await next_pcm(pieces, rate)
                # The header knows the size only now; the PCM follows it from the spool.
                header = wav.exact_header(rate, body.size)
                if writer is not None:
                    await writer.write_at(0, header)
                return header, body
            transcoder = await self.start_transcoder(audio_format, rate)
            encoded = self.transcoded(transcoder, rate, first, pieces, flow, writer)
            async with contextlib.aclosing(encoded):
                async for data in encoded:
                    await body.write(data)
            return b"", body
        except BaseException:
            await self._background.finish(body.aclose())
            raise


async def spooled(header: bytes, body: Spool) -> AsyncIterator[bytes | memoryview]:
    """A complete answer: its header, then the spool's content in pieces."""
    if header:
        yield header
    blocks = body.blocks()
    async with contextlib.aclosing(blocks):
        async for block in blocks:
            for piece in _pieces(block):
                yield piece
