"""Passwords: generated ones, bcrypt hashing and checks on a few niced threads behind a fair queue."""

from __future__ import annotations

import asyncio
import base64
import collections
import concurrent.futures
import contextlib
import dataclasses
import hashlib
import math
import os
import secrets
import threading
import time
from typing import Any, Callable, Deque, Final

import bcrypt

from idlakd.errors import Busy

BCRYPT_ROUNDS: Final = 12
BCRYPT_NICE: Final = 10
# More bcrypt threads than this buys nothing for a login page and takes CPU from synthesis.
MAX_BCRYPT_THREADS: Final = 4

LOGINS_BUSY: Final = "Too many logins are being checked, try again later"


def generate_password() -> str:
    """A fresh random password: 128 bits, URL-safe text."""
    return secrets.token_urlsafe(16)


def _prehash(password: str) -> bytes:
    """SHA-256 then base64, so any length works (bcrypt reads at most 72 bytes, none NUL)."""
    return base64.b64encode(hashlib.sha256(password.encode("utf-8", "surrogatepass")).digest())


def hash_password_sync(password: str, rounds: int = BCRYPT_ROUNDS) -> bytes:
    """bcrypt hash of a password (blocking: call through hash_password on the loop)."""
    return bcrypt.hashpw(_prehash(password), bcrypt.gensalt(rounds))


def check_password_sync(password: str, password_hash: bytes) -> bool:
    """True when the password matches the hash (blocking)."""
    try:
        return bcrypt.checkpw(_prehash(password), password_hash)
    except ValueError:  # a corrupt stored hash is a failed login, not a crash
        return False


def _yield_cpu_to_the_loop() -> None:
    """bcrypt thread initializer: a lower priority (Linux: per thread), so the loop keeps its CPU."""
    with contextlib.suppress(OSError, AttributeError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), BCRYPT_NICE)


def bcrypt_threads() -> int:
    """Threads for bcrypt: the cores this process may run on, at most MAX_BCRYPT_THREADS."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, MAX_BCRYPT_THREADS))


@dataclasses.dataclass(eq=False)
class _Job:
    """One bcrypt call waiting for a thread: what to run, for whom, and who waits for it."""

    key: str
    func: Callable[..., Any]
    args: tuple[Any, ...]
    future: asyncio.Future[Any]


class Passwords:
    """bcrypt on a few niced threads behind a bounded, fair queue; a dummy hash for unknown uids.

    A login flood must neither starve the event loop nor the other clients: at most `threads`
    hashes run at once on niced threads (requests that need no bcrypt stay fast); at most
    `max_pending` checks wait, and beyond that a check fails at once with 503. Waiting checks
    are served round-robin by client address, and a full queue makes room for an address with
    fewer waiting checks by refusing the newest check of the address with the most, so a
    flood from a few addresses delays a login from another by a few checks, not by the flood.
    """

    def __init__(self, rounds: int = BCRYPT_ROUNDS, max_pending: int = 32,
                 threads: int | None = None) -> None:
        self.rounds = rounds
        self.max_pending = max_pending
        self.threads = threads or bcrypt_threads()
        self._dummy: bytes | None = None
        # Threads start lazily, on the first hash: creating the app does no I/O.
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=self.threads, thread_name_prefix="bcrypt",
            initializer=_yield_cpu_to_the_loop)
        self._running = 0
        # Waiting jobs per key, keys in round-robin order (the next to serve first).
        self._queues: collections.OrderedDict[str, Deque[_Job]] = collections.OrderedDict()
        self._queued = 0
        self._seconds_per_call = 0.0  # moving average, for Retry-After

    def _busy(self) -> Busy:
        """The 503 for a check that cannot wait: Retry-After is the time to drain the queue."""
        seconds = (self._queued + self._running) * self._seconds_per_call / self.threads
        return Busy(LOGINS_BUSY, retry_after=max(1, math.ceil(seconds)))

    def _make_room(self, key: str) -> None:
        """With the queue full, refuse the newest job of the key with the most waiting, or raise."""
        mine = len(self._queues.get(key, ()))
        victim_key = max(self._queues, key=lambda k: len(self._queues[k]))
        if len(self._queues[victim_key]) <= mine:
            raise self._busy()
        victim_queue = self._queues[victim_key]
        victim = victim_queue.pop()
        if not victim_queue:
            del self._queues[victim_key]
        self._queued -= 1
        if not victim.future.done():
            victim.future.set_exception(self._busy())

    async def _run(self, key: str, func: Callable[..., Any], *args: Any,
                   bounded: bool = True) -> Any:
        """Run a blocking bcrypt call on the bcrypt threads, queued fairly behind key."""
        job = _Job(key, func, args, asyncio.get_running_loop().create_future())
        if self._running < self.threads and not self._queued:
            self._start(job)
        else:
            if bounded and self._queued >= self.max_pending:
                self._make_room(key)
            self._queues.setdefault(key, collections.deque()).append(job)
            self._queued += 1
        try:
            return await job.future
        except asyncio.CancelledError:
            self._forget(job)  # a caller that gave up frees its place at once
            raise

    def _forget(self, job: _Job) -> None:
        """Take a job out of the queue if it is still waiting there."""
        queue = self._queues.get(job.key)
        if queue is not None and job in queue:
            queue.remove(job)
            self._queued -= 1
            if not queue:
                del self._queues[job.key]

    def _start(self, job: _Job) -> None:
        """Hand a job to a bcrypt thread; its end starts the next one."""
        self._running += 1
        started = time.perf_counter()
        done = asyncio.get_running_loop().run_in_executor(self._executor, job.func, *job.args)

        def finished(result: asyncio.Future[Any]) -> None:
            self._running -= 1
            elapsed = time.perf_counter() - started
            self._seconds_per_call = (elapsed if not self._seconds_per_call
                                      else 0.8 * self._seconds_per_call + 0.2 * elapsed)
            if not job.future.done():  # the caller may have been cancelled meanwhile
                if result.cancelled():
                    job.future.cancel()
                elif (exc := result.exception()) is not None:
                    job.future.set_exception(exc)
                else:
                    job.future.set_result(result.result())
            self._next()

        done.add_done_callback(finished)

    def _next(self) -> None:
        """Start waiting jobs while threads are free, one key after another."""
        while self._running < self.threads and self._queues:
            key, queue = next(iter(self._queues.items()))
            job = queue.popleft()
            self._queued -= 1
            if queue:
                self._queues.move_to_end(key)  # the next key's turn
            else:
                del self._queues[key]
            if not job.future.done():  # skip callers that gave up while waiting
                self._start(job)

    async def hash(self, password: str) -> bytes:
        """Hash a password off the event loop (not refused when busy: only signed-in users hash)."""
        result: bytes = await self._run("", hash_password_sync, password, self.rounds,
                                        bounded=False)
        return result

    async def close(self) -> None:
        """Let running hashes finish, then stop the bcrypt threads."""
        await asyncio.to_thread(self._executor.shutdown, True)

    async def check(self, password: str, password_hash: bytes | None, key: str = "") -> bool:
        """Check a password off the loop; an unknown user costs the same as a wrong password.

        key (the client address) decides the check's place in the queue; raises
        Busy when too many checks wait already.
        """
        if password_hash is None:
            if self._dummy is None:
                self._dummy = await self.hash(secrets.token_urlsafe(16))
            await self._run(key, check_password_sync, password, self._dummy)
            return False
        return bool(await self._run(key, check_password_sync, password, password_hash))
