"""Changes made by other processes (another node, the CLI), told to whoever caches what they change.

The database counts the writes of each topic (triggers, see store/shared.py); a watcher reads
the counters and calls a topic's subscribers when its counter moved. On PostgreSQL a
LISTEN connection wakes it at once and the counters are read every `fallback_seconds` as well
(a notification lost with a dropped connection is still seen); on SQLite, with no one to tell
it, it reads them every SQLITE_CHECK_SECONDS (a one-row read of a local file).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from typing import Awaitable, Callable, Final

from idlakd.errors import StoreError
from idlakd.store.factory import Store
from idlakd.store.postgres import PostgresStore

log = logging.getLogger(__name__)

#: How often a daemon on SQLite reads the change counters.
SQLITE_CHECK_SECONDS: Final = 0.5

Subscriber = Callable[[], Awaitable[None]]


class ChangeWatcher:
    """Calls each topic's subscribers (one at a time) after that topic changed in the store."""

    def __init__(self, store: Store, fallback_seconds: float) -> None:
        self._store = store
        postgres = isinstance(store, PostgresStore)
        self.interval = fallback_seconds if postgres else SQLITE_CHECK_SECONDS
        self._subscribers: dict[str, list[Subscriber]] = {}
        self._versions: dict[str, int] = {}
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def subscribe(self, topic: str, subscriber: Subscriber) -> None:
        """Await subscriber() after every change of topic (not before start())."""
        self._subscribers.setdefault(topic, []).append(subscriber)

    async def start(self) -> None:
        """Read the counters as they are now, then watch them."""
        self._versions = await self._store.change_versions()
        self._tasks.append(asyncio.create_task(self._watch()))
        if isinstance(self._store, PostgresStore):
            self._tasks.append(asyncio.create_task(self._store.listen_changes(self._wake.set)))

    async def close(self) -> None:
        """Stop watching (idempotent)."""
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _watch(self) -> None:
        """Check when woken, or every interval."""
        while True:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.interval)
            self._wake.clear()
            try:
                await self.check()
            except (StoreError, sqlite3.Error) as exc:  # busy or gone for now: next round
                log.warning("Could not read the store's change counters: %s", exc)

    async def check(self) -> None:
        """Read the counters; call the subscribers of every topic that moved."""
        versions = await self._store.change_versions()
        for topic, version in versions.items():
            if version == self._versions.get(topic):
                continue
            for subscriber in self._subscribers.get(topic, []):
                await subscriber()
            # Only once every subscriber saw it: a failed one is called again next round.
            self._versions[topic] = version
