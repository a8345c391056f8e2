"""Spare ffmpegs: one started ahead per recently used encoding, taken by one request, replaced behind it."""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from typing import Awaitable, Callable, Final, Generic, Hashable, TypeVar

from idlakd.synth.tasks import BackgroundTasks
from idlakd.synth.transcode import TranscodeError, Transcoder

log = logging.getLogger(__name__)

#: A spare nobody took for this long is stopped (the encoding is no longer in use).
SPARE_IDLE_SECONDS: Final = 120.0

K = TypeVar("K", bound=Hashable)


class Spares(Generic[K]):
    """At most `most` waiting ffmpegs, one per key, the least recently used dropped first.

    A spare has had no input: it is handed to exactly one request (take() forgets it)
    and never comes back, so no request's audio can reach another's answer.
    """

    def __init__(self, most: int, start: Callable[[K], Awaitable[Transcoder]],
                 background: BackgroundTasks) -> None:
        self._most = most
        self._start = start
        self._background = background
        # key -> (spare, when it became ready); oldest first.
        self._ready: collections.OrderedDict[K, tuple[Transcoder, float]] = \
            collections.OrderedDict()
        # key -> the task starting its spare (take() may claim it before it is ready).
        self._starting: dict[K, asyncio.Task[Transcoder | None]] = {}
        self._closed = False

    @property
    def pids(self) -> list[int]:
        """Process ids of the spares waiting now."""
        return [transcoder.pid for transcoder, _since in self._ready.values()]

    async def take(self, key: K) -> Transcoder | None:
        """The spare of key, waiting or still starting (sooner than a new start); from now on
        it is the caller's alone. None if there is none, or it died while it waited."""
        found = self._ready.pop(key, None)
        if found is not None:
            if found[0].running:
                return found[0]
            self._background.spawn(found[0].aclose())  # killed while it waited
            return None
        starting = self._starting.pop(key, None)  # popped: claimed, it never becomes a spare
        if starting is None:
            return None
        try:
            return await asyncio.shield(starting)
        except asyncio.CancelledError:
            # The caller is gone: the ffmpeg it claimed is stopped once started.
            starting.add_done_callback(self._stop_unclaimed)
            raise

    def _stop_unclaimed(self, task: asyncio.Task[Transcoder | None]) -> None:
        """Done callback: stop the ffmpeg a cancelled caller had claimed."""
        claimed = None if task.cancelled() or task.exception() is not None else task.result()
        if claimed is not None:
            self._background.spawn(claimed.aclose())

    def refill(self, key: K) -> None:
        """Start a spare of key in the background unless one waits or starts.

        Called as a stream of key starts (measured: starting it when the stream ends
        leaves back-to-back requests, a client's next sentence, nothing ready).
        """
        if self._most == 0 or self._closed or key in self._ready or key in self._starting:
            return
        self._starting[key] = self._background.spawn(self._start_spare(key))

    async def _start_spare(self, key: K) -> Transcoder | None:
        """Start a spare of key: the claimer's if take() claimed it meanwhile (returned), else
        kept waiting (at most `most`, the oldest dropped; returns None)."""
        try:
            transcoder = await self._start(key)
        except TranscodeError as exc:
            # A stream of this encoding would have failed the same way, and said so.
            log.warning("A spare ffmpeg could not start: %s", exc)
            self._forget(key)
            return None
        if self._starting.get(key) is not asyncio.current_task():
            return transcoder  # claimed by take()
        self._forget(key)
        if self._closed:
            await transcoder.aclose()
            return None
        self._ready[key] = (transcoder, time.monotonic())
        while len(self._ready) > self._most:
            _key, (oldest, _since) = self._ready.popitem(last=False)
            await oldest.aclose()
        return None

    def _forget(self, key: K) -> None:
        """This task no longer starts key's spare."""
        if self._starting.get(key) is asyncio.current_task():
            del self._starting[key]

    async def reap(self) -> int:
        """Stop spares unused for SPARE_IDLE_SECONDS; how many."""
        now = time.monotonic()
        stale = [key for key, (_t, since) in self._ready.items() if now - since >= SPARE_IDLE_SECONDS]
        for key in stale:
            transcoder, _since = self._ready.pop(key)
            await transcoder.aclose()
        return len(stale)

    async def close(self) -> None:
        """Stop every spare; one still starting stops itself once started (unless claimed)."""
        self._closed = True
        while self._ready:
            _key, (transcoder, _since) = self._ready.popitem()
            await transcoder.aclose()
