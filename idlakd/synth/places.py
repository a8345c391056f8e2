"""A voice pool's places: chunks running at once, waiters served in order, or offered a queue place."""

from __future__ import annotations

import asyncio
import collections
from typing import Callable, Generic, TypeVar

#: What a waiter may be offered instead of a place of its own (the pool's queue place).
T = TypeVar("T")
#: What a waiter that takes offers says about itself (the pool: its chunk).
W = TypeVar("W")


class Places(Generic[T, W]):
    """A semaphore of `size` places whose waiters, first come first served, either get a place
    or (those that take offers) an offer: room behind a busy worker's chunk, made by the pool
    from what the waiter wants, at once and in order.
    """

    def __init__(self, size: int, undo: Callable[[T], None]) -> None:
        self._free = size
        # Pending waiters only: an entry leaves when served or cancelled.
        self._waiters: collections.deque[tuple[asyncio.Future[T | None], W | None]] = (
            collections.deque())
        # Takes back an offer whose waiter was cancelled before it could use it.
        self._undo = undo

    def locked(self) -> bool:
        """Whether acquire() would wait (no free place, or others wait already)."""
        return self._free <= 0 or bool(self._waiters)

    def offer_wanted(self) -> bool:
        """Whether a waiter would take an offer."""
        return any(want is not None for _future, want in self._waiters)

    async def acquire(self, want: W | None = None) -> T | None:
        """A place (None), or, given what it wants, an offer if one came first."""
        if not self.locked():
            self._free -= 1
            return None
        future: asyncio.Future[T | None] = asyncio.get_running_loop().create_future()
        entry = (future, want)
        self._waiters.append(entry)
        try:
            return await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                # Served, then cancelled before it could run: give back what it got.
                served = future.result()
                if served is None:
                    self.release()
                else:
                    self._undo(served)
            else:
                self._waiters.remove(entry)
            raise

    def release(self) -> None:
        """Give a place back: to the first waiter, else to the free ones."""
        if self._waiters:
            future, _want = self._waiters.popleft()
            future.set_result(None)
        else:
            self._free += 1

    def offer(self, make: Callable[[W], T]) -> bool:
        """Hand make(what it wants) to the first waiter that takes offers; False if none waits."""
        for entry in self._waiters:
            future, want = entry
            if want is not None:
                self._waiters.remove(entry)
                future.set_result(make(want))
                return True
        return False
