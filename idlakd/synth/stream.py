"""AudioStream: what the synthesizer hands a door — content type, length if known, bytes, close."""

from __future__ import annotations

import contextlib
from typing import AsyncIterator, Callable

from idlakd.synth.marks import Mark, MarkTrack
from idlakd.synth.tasks import BackgroundTasks


class PcmMeter:
    """PCM pieces passed on unchanged, their duration added up (what the engines produced)."""

    def __init__(self, pieces: AsyncIterator[tuple[int, bytes]]) -> None:
        self._pieces = pieces
        #: Seconds of audio that went through so far.
        self.seconds = 0.0

    def __aiter__(self) -> "PcmMeter":
        """Itself: an iterator, not a generator, so nothing of it is left to finalise."""
        return self

    async def __anext__(self) -> tuple[int, bytes]:
        """The next (rate, PCM s16le) piece, counted."""
        rate, pcm = await anext(self._pieces)
        if rate > 0:
            self.seconds += len(pcm) / 2 / rate
        return rate, pcm


class AudioStream:
    """The audio of one request: iterate it for bytes, then aclose() it (always).

    Iterating may raise a domain error (Failed, TooLarge) after some bytes:
    the door must then end its answer as broken, never as complete. aclose()
    stops every worker and ffmpeg still working for the stream and releases
    its place under the limiter; it finishes even when the door calling it is
    being cancelled (the work moves to the synthesizer's background tasks,
    which its close() awaits).
    """

    def __init__(self, content_type: str, length: int | None, body: AsyncIterator[bytes | memoryview],
                 resources: contextlib.AsyncExitStack, background: BackgroundTasks,
                 on_abandon: Callable[[], None], meter: PcmMeter | None = None,
                 marks: MarkTrack | None = None) -> None:
        self.content_type = content_type
        #: Exact byte count when known before the first byte (complete or cached answers).
        self.length = length
        self._body = body
        self._resources = resources
        self._background = background
        self._on_abandon = on_abandon
        self._closed = False
        self._counted = False
        self._meter = meter
        self._marks = marks

    @property
    def audio_seconds(self) -> float | None:
        """Seconds of audio synthesised for the stream so far; None when not known (a cache hit)."""
        return None if self._meter is None else self._meter.seconds

    @property
    def time_scale(self) -> float:
        """Seconds of output audio per second synthesised (a tempo change makes it differ from 1)."""
        return 1.0 if self._marks is None else self._marks.time_scale

    def take_marks(self) -> list[Mark]:
        """The marks of the audio made so far, not taken before (none unless options asked)."""
        return [] if self._marks is None else self._marks.take()

    def __aiter__(self) -> AsyncIterator[bytes | memoryview]:
        """The bytes, in order, as they are made."""
        return self._body

    def abandon(self) -> bool:
        """The consumer went away before the end (a client that hung up or stopped reading).

        Counted once per stream however many layers notice; True the first time.
        """
        if self._counted:
            return False
        self._counted = True
        self._on_abandon()
        return True

    async def aclose(self) -> None:
        """Stop everything still working for the stream and release what it holds; idempotent."""
        if self._closed:
            return
        self._closed = True
        await self._background.finish(self._resources.aclose())
