"""Pre-warm: one worker per voice started ahead of its first request, a few at a time."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Final, Sequence

from idlakd.synth.pool import VoicePool
from idlakd.synth.tasks import cancel_and_wait
from idlakd.synth.workers import SynthesisError

log = logging.getLogger(__name__)

# Workers starting at once: a start is ~100 ms of CPU (an interpreter and an engine),
# so fifty voices on two cores start two by two, never fifty at once.
MAX_AT_ONCE: Final = 2


def spawns_at_once() -> int:
    """How many workers pre-warm starts together: MAX_AT_ONCE, or fewer on fewer cores."""
    return max(1, min(MAX_AT_ONCE, os.cpu_count() or 1))


class Prewarmer:
    """Starts one worker in each pool handed to it, at most at_once starting together."""

    def __init__(self, at_once: int) -> None:
        self._slots = asyncio.Semaphore(at_once)
        self._tasks: set[asyncio.Task[None]] = set()

    def warm(self, pools: Sequence[VoicePool]) -> asyncio.Task[None]:
        """Warm pools in the background; the task ends once each has a worker or failed (logged)."""
        task = asyncio.create_task(self._warm_all(pools), name="synth-prewarm")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _warm_all(self, pools: Sequence[VoicePool]) -> None:
        """Warm every pool, at_once at a time."""
        await asyncio.gather(*(self._warm_one(pool) for pool in pools))

    async def _warm_one(self, pool: VoicePool) -> None:
        """Start one worker of pool; a failure is logged (its first request tries again)."""
        async with self._slots:
            started = time.monotonic()
            try:
                if await pool.warm():
                    log.info("Pre-warmed a worker of voice %s in %.0f ms", pool.voice.id,
                             (time.monotonic() - started) * 1000)
            except SynthesisError as exc:
                log.warning("Pre-warm of voice %s failed (its first request starts a worker): %s",
                            pool.voice.id, exc)

    async def close(self) -> None:
        """Stop pre-warming: a worker mid-start is stopped, none starts afterwards."""
        for task in list(self._tasks):
            await cancel_and_wait(task)
