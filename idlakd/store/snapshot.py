"""Reads answered from memory while the SQLite file has not changed since they were made.

SQLite's `PRAGMA data_version` is a per-connection counter that moves whenever another
connection (this daemon's writer, another daemon, the CLI) has committed to the file. Asked on a
private connection that never writes, it costs a few microseconds on the loop (shared memory of
the WAL index; ~0.1 ms when it must re-read the header page after a commit). It is read once per
turn of the event loop, by the first cached read of that turn: everything a turn handles arrived
before the turn began, so whatever was committed before a request arrived (a revocation answered
by another node, a voice removed by the CLI) has moved the counter by then. A change anywhere
empties the cache: nothing committed before a request arrived is ever answered from an older
copy — the coherence of an uncached read, without a thread hop.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any, Awaitable, Callable, Final, Hashable, TypeVar

T = TypeVar("T")

#: Entries kept at most (voices, lists, token states); past it the cache starts again empty.
MAX_ENTRIES: Final = 8192


class DataVersion:
    """The file's data_version read on a private, read-only connection of the loop's thread."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db: sqlite3.Connection | None = None

    async def open(self) -> None:
        """Open the connection (off the loop: opening reads the file)."""
        self._db = await asyncio.to_thread(self._connect)

    def _connect(self) -> sqlite3.Connection:
        """A connection that never waits for a lock and never writes."""
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA busy_timeout = 0")
        db.execute("PRAGMA query_only = ON")
        return db

    def current(self) -> int | None:
        """The counter now; None when it cannot be read at once (busy, closed): read the store."""
        if self._db is None:
            return None
        try:
            row = self._db.execute("PRAGMA data_version").fetchone()
        except sqlite3.Error:
            return None
        return int(row[0]) if row else None

    def close(self) -> None:
        """Close the connection (idempotent)."""
        db, self._db = self._db, None
        if db is not None:
            db.close()


class ReadCache:
    """Values of reads, kept while the data version they were read at is still current."""

    def __init__(self, version: DataVersion, max_entries: int = MAX_ENTRIES) -> None:
        self._version = version
        self._max_entries = max_entries
        self._seen: int | None = None
        self._entries: dict[Hashable, Any] = {}
        # The loop whose current turn has read data_version (None: not read in this turn). A
        # loop, not a flag: a Store used under a new loop (asyncio.run again) must not keep
        # the answer of a turn whose end-of-turn callback died with the old loop.
        self._checked_in: asyncio.AbstractEventLoop | None = None

    def _current(self) -> int | None:
        """The data version as of this turn of the loop (read by its first caller)."""
        loop = asyncio.get_running_loop()
        if self._checked_in is not loop:
            version = self._version.current()
            if version != self._seen or version is None:
                self._entries.clear()
                self._seen = version
            self._checked_in = loop
            # Callbacks scheduled now run in the next turn, before the callbacks of whatever
            # that turn's poll brought in.
            loop.call_soon(self._next_turn)
        return self._seen

    def forget(self) -> None:
        """Drop every value and read the counter again (this process has just written)."""
        self._entries.clear()
        self._seen = None
        self._checked_in = None

    def _next_turn(self) -> None:
        """The next turn reads the counter again."""
        self._checked_in = None

    async def read(self, key: Hashable, read: Callable[[], Awaitable[T]]) -> T:
        """The cached value of key while nothing was committed since it was read, else read()."""
        version = self._current()
        if version is not None and key in self._entries:
            value: T = self._entries[key]
            return value
        value = await read()
        # Kept only if no commit was seen meanwhile (a later check empties the cache anyway,
        # but a value read before that commit must not be filed under the newer version).
        if version is not None and version == self._seen:
            if len(self._entries) >= self._max_entries:
                self._entries.clear()
            self._entries[key] = value
        return value
