"""The global bound on synthesis: chunks at once, requests waiting, streams open."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import AsyncIterator, Final

from idlakd.errors import Busy

#: Background chunks wait this long after the last interactive chunk started or ended: a
#: conversation's next request, typically a moment after the last, finds the CPUs free.
INTERACTIVE_QUIET_SECONDS: Final = 0.25


class Admission:
    """One stream's place under the limiter: waiting until its first chunk gets a slot, open until released.

    A background stream (a job's) is not counted as waiting or open: it never makes an
    interactive request wait for room, nor get a 503.
    """

    def __init__(self, limiter: SynthesisLimiter, background: bool = False) -> None:
        self._limiter = limiter
        self.background = background
        self._waiting = not background
        self._open = not background

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

    Background streams (jobs) come last: one of their chunks gets a slot only while no
    interactive chunk runs or waits, none did for quiet seconds, and fewer than
    max_background background chunks run.
    So jobs use the machine only while it has no interactive work, never take more than
    max_background slots, and an interactive request never waits for a slot behind them
    while max_background < max_concurrent (with a single slot: at most one chunk of
    MAX_CHUNK_CHARS).

    A stream stops counting as waiting once its first chunk has a slot, but it
    keeps counting as open until it ends: between chunks (behind a slow
    client) it holds no slot, yet it holds its ffmpeg, buffers and pool, so
    the open-stream cap bounds those however slowly clients read.
    """

    def __init__(self, max_concurrent: int, max_queue: int, max_background: int = 1,
                 quiet: float = INTERACTIVE_QUIET_SECONDS) -> None:
        self.max_concurrent = max_concurrent
        self._quiet = quiet
        # When an interactive chunk last took or gave back a slot.
        self._last_interactive = -quiet
        self.max_background = max_background
        self.max_queue = max_queue
        self.max_streams = max_concurrent + max_queue
        self._slots = asyncio.Semaphore(max_concurrent)
        self.waiting = 0
        self.running = 0
        self.streams = 0
        #: Slots held by background chunks (counted in running too).
        self.background_running = 0
        # Set whenever a slot is given back: background chunks look again.
        self._freed = asyncio.Event()

    def admit(self, background: bool = False) -> Admission:
        """Count a new stream, or raise Busy (before any response starts) when full.

        A background stream is never refused: its chunks wait for spare slots instead.
        """
        if background:
            return Admission(self, background=True)
        queue_full = self.waiting >= self.max_queue and (self._slots.locked() or self.waiting > 0)
        if queue_full or self.streams >= self.max_streams:
            raise Busy()
        self.waiting += 1
        self.streams += 1
        return Admission(self)

    @contextlib.asynccontextmanager
    async def slot(self, admission: Admission | None) -> AsyncIterator[Lease]:
        """Hold one of the max_concurrent synthesis slots (given back while its chunk waits)."""
        background = admission is not None and admission.background
        if background:
            await self._spare_slot()
        else:
            await self._slots.acquire()
            self._last_interactive = time.monotonic()
        lease = Lease(self, background)
        if admission is not None:
            admission.started()
        try:
            yield lease
        finally:
            lease.give_back()

    def background_may_start(self) -> bool:
        """Whether a background chunk may take a slot now: no interactive chunk waits for one
        (the semaphore is not locked) or runs or did within quiet seconds, and fewer than
        max_background background ones run."""
        return (not self._slots.locked() and self.background_running < self.max_background
                and self.running == self.background_running and self._quiet_for() <= 0)

    def _quiet_for(self) -> float:
        """Seconds until interactive work has been quiet for long enough (0 or less: now)."""
        return self._last_interactive + self._quiet - time.monotonic()

    async def _spare_slot(self) -> None:
        """Take a slot for a background chunk once background_may_start()."""
        while not self.background_may_start():
            self._freed.clear()
            with contextlib.suppress(TimeoutError):
                # A slot given back wakes it; so does the end of the quiet time.
                async with asyncio.timeout(max(self._quiet_for(), 0.0) or None):
                    await self._freed.wait()
        # Not locked: this takes the slot at once, without yielding to another task.
        await self._slots.acquire()

    def _released(self, background: bool) -> None:
        """A slot was given back: waiting background chunks look again."""
        if not background:
            self._last_interactive = time.monotonic()
        self._freed.set()


class Lease:
    """One held synthesis slot; it can be given back while its chunk waits for a slow consumer."""

    def __init__(self, limiter: SynthesisLimiter, background: bool = False) -> None:
        self._limiter = limiter
        self.background = background
        self.held = True
        self._count(1)

    def _count(self, step: int) -> None:
        """Add step to the limiter's running slots (and background ones, if this is)."""
        self._limiter.running += step
        if self.background:
            self._limiter.background_running += step

    def give_back(self) -> None:
        """Release the slot if held; safe to call twice."""
        if self.held:
            self.held = False
            self._count(-1)
            self._limiter._slots.release()
            self._limiter._released(self.background)

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
        self._count(1)
