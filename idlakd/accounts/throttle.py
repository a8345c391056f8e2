"""Throttling of logins per uid, per client address, and per known (uid, address) pair.

Failed logins are counted in the store, so every daemon on one database counts the same
failures (N failures spread over two nodes lock a uid as N on one node would); an unlock
written to the store (users.unlocked_at, by `idlakd user unlock`, the admin page or a password
reset) forgives the failures before it on every daemon at once. What protects a node itself
stays in its memory: the attempts per address (every password check, right or wrong, costs
this node's bcrypt threads) and the checks still running.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import math
import time
from typing import AsyncIterator, Callable, Deque, Final

from idlakd.errors import RateLimited
from idlakd.store.factory import Store

THROTTLED: Final = "Too many failed login attempts, try again later"
TOO_MANY_ATTEMPTS: Final = "Too many login attempts from this address, try again later"
MAX_TRACKED_KEYS: Final = 100_000
#: How long a refused attempt waits before its 429, holding its uid's turn (see attempt()).
REFUSAL_DELAY_SECONDS: Final = 0.05


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

    def forget_until(self, key: str, instant: float) -> None:
        """Forget the events of key at or before instant (an unlock)."""
        times = self._times.get(key)
        if times is None:
            return
        while times and times[0] <= instant:
            times.popleft()
        if not times:
            del self._times[key]

    def clear(self, key: str) -> None:
        """Forget every event of key."""
        self._times.pop(key, None)


class LoginThrottle:
    """Refuses a uid or address that failed too often, and an address that tried too often.

    Failures count per uid and per address (in the store); every attempt that reaches a
    password check, right or wrong, also counts against its address (in this node's memory),
    so a flood of guesses with random uids runs out of budget even though no single uid fails
    often.

    A client address that has logged in as a uid before (a *known* address, remembered by the
    store) has its own failure window on that uid (the pair's, `max_per_uid` failures) instead
    of the uid's: failures from elsewhere cannot lock the owner out of their own address, and
    guesses from that address stay bounded (OWASP's device-cookie scheme, with the address as
    the device). The address's own limits apply to it as to any other.
    """

    def __init__(self, max_per_uid: int, max_per_address: int, window_seconds: float,
                 clock: Callable[[], float] = time.time,
                 max_attempts_per_address: int | None = None,
                 refusal_delay: float = REFUSAL_DELAY_SECONDS) -> None:
        self.max_per_uid = max_per_uid
        self.max_per_address = max_per_address
        self.max_attempts_per_address = max_attempts_per_address
        self.window = window_seconds
        self.refusal_delay = refusal_delay
        # Wall-clock time (not monotonic): failures are compared with unlock instants and
        # failure times that other processes write to the store.
        self.clock = clock
        self._attempts = SlidingWindows(window_seconds, max_attempts_per_address or 1)
        # Password checks still running here, per limited key; and one lock per uid (or pair)
        # tried: on one node, parallel guesses at one uid are checked one after the other.
        self._pending: collections.Counter[str] = collections.Counter()
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    def _limits(self, uid: str, address: str, known: bool) -> tuple[tuple[str, int, bool], ...]:
        """(key, failure limit, forgiven by an unlock of uid) of one attempt."""
        account = f"pair:{address} {uid}" if known else f"uid:{uid}"
        return ((account, self.max_per_uid, True),
                (f"addr:{address}", self.max_per_address, False))

    async def check(self, store: Store, uid: str, address: str, known: bool = False,
                    unlocked_at: float = 0.0) -> None:
        """Raise RateLimited (with Retry-After) when the attempt is over a limit.

        Failures of uid up to unlocked_at (wall-clock seconds) are forgiven.
        """
        now = self.clock()
        start = now - self.window
        limits = self._limits(uid, address, known)
        counts = await store.login_failures(
            {key: max(start, unlocked_at) if forgiven else start for key, _, forgiven in limits})
        for key, limit, _ in limits:
            found = counts.get(key)
            if (found.count if found else 0) + self._pending[key] >= limit:
                wait = math.ceil(found.oldest + self.window - now) if found else 1
                raise RateLimited(THROTTLED, retry_after=max(1, wait))
        if self.max_attempts_per_address is not None:
            times = self._attempts.recent(f"addr:{address}", now)
            if len(times) >= self.max_attempts_per_address:
                raise RateLimited(TOO_MANY_ATTEMPTS,
                                  retry_after=math.ceil(times[0] + self.window - now))

    @contextlib.asynccontextmanager
    async def attempt(self, store: Store, uid: str, address: str, known: bool = False,
                      unlocked_at: float = 0.0) -> AsyncIterator[None]:
        """Check, count the attempt, then hold it while its password is checked.

        Attempts on one uid (from a known address: on one pair) run one at a time on this
        node, so parallel guesses cannot all pass check() before the first failure is counted;
        attempts still running count against their keys. (Across nodes, each node has at most
        one check of a uid running at a time.) A refused attempt keeps the turn for
        `refusal_delay` before it raises.
        """
        lock_key = f"{address} {uid}" if known else uid
        lock, holders = self._locks.get(lock_key, (None, 0))
        lock = lock or asyncio.Lock()
        self._locks[lock_key] = (lock, holders + 1)
        try:
            async with lock:
                try:
                    await self.check(store, uid, address, known, unlocked_at)
                except RateLimited:
                    # Refused guesses at a uid are answered one per delay, in turn: a flood of
                    # them would otherwise take the loop from everyone else, as many 429s a
                    # second as it can write (bench/RESULTS.md, section 3). Costs no CPU.
                    await asyncio.sleep(self.refusal_delay)
                    raise
                self._attempts.add(f"addr:{address}", self.clock())
                keys = [key for key, _, _ in self._limits(uid, address, known)]
                for key in keys:
                    self._pending[key] += 1
                try:
                    yield
                finally:
                    for key in keys:
                        self._pending[key] -= 1
                        if self._pending[key] <= 0:
                            del self._pending[key]
        finally:
            lock, holders = self._locks[lock_key]
            if holders <= 1:
                del self._locks[lock_key]
            else:
                self._locks[lock_key] = (lock, holders - 1)

    async def failed(self, store: Store, uid: str, address: str, known: bool = False) -> None:
        """Record one failed login (and forget the failures that left the window)."""
        now = self.clock()
        await store.add_login_failure([key for key, _, _ in self._limits(uid, address, known)],
                                      now, now - self.window)

    async def succeeded(self, store: Store, uid: str, address: str, known: bool = False) -> None:
        """A correct login clears the failures of the window it was checked against: the uid's,
        or (from a known address) only the pair's, so the owner's logins never reset an
        attacker's count elsewhere. The address keeps its count."""
        account, _, _ = self._limits(uid, address, known)[0]
        await store.clear_login_failures(account)
