"""Throttling of logins per uid and per client address (sliding windows, in memory)."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import math
import time
from typing import AsyncIterator, Callable, Deque, Final

from idlakd.errors import RateLimited

THROTTLED: Final = "Too many failed login attempts, try again later"
TOO_MANY_ATTEMPTS: Final = "Too many login attempts from this address, try again later"
MAX_TRACKED_KEYS: Final = 100_000


class SlidingWindows:
    """Event times per key within a window, for at most max_keys keys (the stalest are dropped).

    Keys are kept in the order of their latest event, so dropping the stalest is O(1); each
    key keeps at most `per_key` times (nobody needs to count past the limit).
    """

    def __init__(self, window_seconds: float, per_key: int,
                 max_keys: int = MAX_TRACKED_KEYS) -> None:
        self.window = window_seconds
        self.per_key = per_key
        self.max_keys = max_keys
        self._times: collections.OrderedDict[str, Deque[float]] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._times)

    def recent(self, key: str, now: float) -> Deque[float]:
        """The event times of key still inside the window (pruned; empty keys forgotten)."""
        times = self._times.get(key)
        if times is None:
            return collections.deque()
        while times and times[0] <= now - self.window:
            times.popleft()
        if not times:
            del self._times[key]
        return times

    def add(self, key: str, now: float) -> None:
        """Record one event of key."""
        times = self._times.get(key)
        if times is None:
            while len(self._times) >= self.max_keys:
                # Bound memory under a flood of distinct keys: forget the stalest one.
                self._times.popitem(last=False)
            times = self._times[key] = collections.deque(maxlen=self.per_key)
        else:
            self._times.move_to_end(key)
        times.append(now)

    def clear(self, key: str) -> None:
        """Forget every event of key."""
        self._times.pop(key, None)


class LoginThrottle:
    """Refuses a uid or address that failed too often, and an address that tried too often.

    Failures count per uid and per address (as before); every attempt that reaches a password
    check, right or wrong, also counts against its address, so a flood of guesses with random
    uids runs out of budget even though no single uid fails often.
    """

    def __init__(self, max_per_uid: int, max_per_address: int, window_seconds: float,
                 clock: Callable[[], float] = time.monotonic,
                 max_attempts_per_address: int | None = None) -> None:
        self.max_per_uid = max_per_uid
        self.max_per_address = max_per_address
        self.max_attempts_per_address = max_attempts_per_address
        self.window = window_seconds
        self.clock = clock
        self._failures = SlidingWindows(window_seconds, max(max_per_uid, max_per_address))
        self._attempts = SlidingWindows(window_seconds, max_attempts_per_address or 1)
        # Password checks still running, per address key; and one lock per uid being tried.
        self._pending: collections.Counter[str] = collections.Counter()
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    def _retry_after(self, times: Deque[float], now: float) -> int:
        """Seconds until the oldest counted event leaves the window."""
        return math.ceil(times[0] + self.window - now) if times else 1

    def check(self, uid: str, address: str) -> None:
        """Raise RateLimited (with Retry-After) when uid or address is over a limit."""
        now = self.clock()
        for key, limit in ((f"uid:{uid}", self.max_per_uid),
                           (f"addr:{address}", self.max_per_address)):
            times = self._failures.recent(key, now)
            if len(times) + self._pending[key] >= limit:
                raise RateLimited(THROTTLED, retry_after=self._retry_after(times, now))
        if self.max_attempts_per_address is not None:
            times = self._attempts.recent(f"addr:{address}", now)
            if len(times) >= self.max_attempts_per_address:
                raise RateLimited(TOO_MANY_ATTEMPTS,
                                      retry_after=self._retry_after(times, now))

    @contextlib.asynccontextmanager
    async def attempt(self, uid: str, address: str) -> AsyncIterator[None]:
        """Check, count the attempt, then hold it while its password is checked.

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
                self._attempts.add(key, self.clock())
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
        for key in (f"uid:{uid}", f"addr:{address}"):
            self._failures.add(key, now)

    def succeeded(self, uid: str) -> None:
        """A correct login clears the uid's failures (the address keeps its count)."""
        self._failures.clear(f"uid:{uid}")
