"""Throttling of failed logins per uid and per client address (sliding window, in memory)."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import math
import time
from typing import AsyncIterator, Callable, Deque, Final

from idlakd.errors import TooManyRequests

THROTTLED: Final = "Too many failed login attempts, try again later"
MAX_TRACKED_KEYS: Final = 100_000


class LoginThrottle:
    """Counts recent failures; refuses a uid or address that failed too often in the window."""

    def __init__(self, max_per_uid: int, max_per_address: int, window_seconds: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_per_uid = max_per_uid
        self.max_per_address = max_per_address
        self.window = window_seconds
        self.clock = clock
        self._failures: dict[str, Deque[float]] = {}
        # Password checks still running, per address key; and one lock per uid being tried.
        self._pending: collections.Counter[str] = collections.Counter()
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    def _recent(self, key: str, now: float) -> Deque[float]:
        """The failure times of key still inside the window (pruned)."""
        times = self._failures.get(key)
        if times is None:
            return collections.deque()
        while times and times[0] <= now - self.window:
            times.popleft()
        if not times:
            del self._failures[key]
        return times

    def check(self, uid: str, address: str) -> None:
        """Raise TooManyRequests (with Retry-After) when uid or address is over its limit."""
        now = self.clock()
        for key, limit in ((f"uid:{uid}", self.max_per_uid),
                           (f"addr:{address}", self.max_per_address)):
            times = self._recent(key, now)
            if len(times) + self._pending[key] >= limit:
                retry = math.ceil(times[0] + self.window - now) if times else 1
                raise TooManyRequests(THROTTLED, retry_after=retry)

    @contextlib.asynccontextmanager
    async def attempt(self, uid: str, address: str) -> AsyncIterator[None]:
        """Check, then hold the attempt while its password is checked.

        Attempts on one uid run one at a time, so parallel guesses cannot all pass check()
        before the first failure is counted; attempts still running count against the address.
        """
        lock, holders = self._locks.get(uid, (None, 0))
        lock = lock or asyncio.Lock()
        self._locks[uid] = (lock, holders + 1)
        try:
            async with lock:
                self.check(uid, address)
                key = f"addr:{address}"
                self._pending[key] += 1
                try:
                    yield
                finally:
                    self._pending[key] -= 1
                    if self._pending[key] <= 0:
                        del self._pending[key]
        finally:
            lock, holders = self._locks[uid]
            if holders <= 1:
                del self._locks[uid]
            else:
                self._locks[uid] = (lock, holders - 1)

    def failed(self, uid: str, address: str) -> None:
        """Record one failed login."""
        now = self.clock()
        if len(self._failures) >= MAX_TRACKED_KEYS:
            # Bound memory under a flood of distinct uids: drop the stalest keys.
            for key in sorted(self._failures, key=lambda k: self._failures[k][-1])[
                    : MAX_TRACKED_KEYS // 10]:
                del self._failures[key]
        for key in (f"uid:{uid}", f"addr:{address}"):
            self._failures.setdefault(key, collections.deque()).append(now)

    def succeeded(self, uid: str) -> None:
        """A correct login clears the uid's failures (the address keeps its count)."""
        self._failures.pop(f"uid:{uid}", None)
