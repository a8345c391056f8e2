"""The global bound on synthesis: chunks at once, requests waiting, streams open."""

from __future__ import annotations

import asyncio
import contextlib
from typing import AsyncIterator

from idlakd.errors import Busy


class Admission:
    """One stream's place under the limiter: waiting until its first chunk gets a slot, open until released."""

    def __init__(self, limiter: SynthesisLimiter) -> None:
        self._limiter = limiter
        self._waiting = True
        self._open = True

    def started(self) -> None:
        """The stream got its first synthesis slot: it no longer counts as waiting."""
        if self._waiting:
            self._waiting = False
            self._limiter.waiting -= 1

    def release(self) -> None:
        """The stream is over (served, failed or gone); safe to call twice."""
        self.started()
        if self._open:
            self._open = False
            self._limiter.streams -= 1


class SynthesisLimiter:
    """max_concurrent chunks at once, max_queue streams waiting, and at most
    max_concurrent + max_queue streams open at all; beyond that, Busy (503).

    A stream stops counting as waiting once its first chunk has a slot, but it
    keeps counting as open until it ends: between chunks (behind a slow
    client) it holds no slot, yet it holds its ffmpeg, buffers and pool, so
    the open-stream cap bounds those however slowly clients read.
    """

    def __init__(self, max_concurrent: int, max_queue: int) -> None:
        self.max_concurrent = max_concurrent
        self.max_queue = max_queue
        self.max_streams = max_concurrent + max_queue
        self._slots = asyncio.Semaphore(max_concurrent)
        self.waiting = 0
        self.running = 0
        self.streams = 0

    def admit(self) -> Admission:
        """Count a new stream, or raise Busy (before any response starts) when full."""
        queue_full = self.waiting >= self.max_queue and (self._slots.locked() or self.waiting > 0)
        if queue_full or self.streams >= self.max_streams:
            raise Busy()
        self.waiting += 1
        self.streams += 1
        return Admission(self)

    @contextlib.asynccontextmanager
    async def slot(self, admission: Admission | None) -> AsyncIterator[Lease]:
        """Hold one of the max_concurrent synthesis slots (given back while its chunk waits)."""
        await self._slots.acquire()
        lease = Lease(self)
        if admission is not None:
            admission.started()
        try:
            yield lease
        finally:
            lease.give_back()


class Lease:
    """One held synthesis slot; it can be given back while its chunk waits for a slow consumer."""

    def __init__(self, limiter: SynthesisLimiter) -> None:
        self._limiter = limiter
        self.held = True
        limiter.running += 1

    def give_back(self) -> None:
        """Release the slot if held; safe to call twice."""
        if self.held:
            self.held = False
            self._limiter.running -= 1
            self._limiter._slots.release()

    @contextlib.asynccontextmanager
    async def paused(self) -> AsyncIterator[None]:
        """No slot while the body runs: a worker blocked on a slow reader uses no CPU, so
        other streams (of any voice) may synthesise meanwhile; the slot is taken again after."""
        self.give_back()
        yield
        # Only after a normal end: a chunk cancelled or failed while it waited takes nothing
        # back (give_back() then stays a no-op), so its cleanup never queues for a slot.
        await self._limiter._slots.acquire()
        self.held = True
        self._limiter.running += 1
