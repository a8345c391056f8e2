"""What daemons on one SQLite file share besides accounts and voices: login failures, and
the change counters a daemon reads to learn what another process changed."""

from __future__ import annotations

import bisect
import dataclasses
import functools
import sqlite3
from contextlib import AbstractAsyncContextManager
from typing import Callable, Final, Iterable, Mapping

import aiosqlite

from idlakd.store.reads import WholeReads
from idlakd.store.snapshot import ReadCache

#: Failure times of one throttle key kept in memory at most; a key with more is counted by SQL.
CACHED_FAILURES: Final = 256

#: Topics whose changes a daemon acts on (it caches something derived from them).
VOICES: Final = "voices"
TOPICS: Final = (VOICES,)


def _counted(table: str, topic: str) -> str:
    """SQLite triggers that count every row written to table in topic's change counter."""
    return "".join(
        f"CREATE TRIGGER {table}_{event.lower()}_counted AFTER {event} ON {table} BEGIN "
        f"UPDATE changes SET version = version + 1 WHERE topic = '{topic}'; END;\n"
        for event in ("INSERT", "UPDATE", "DELETE"))


#: Entry 5 of the SQLite store's MIGRATIONS.
SHARED_MIGRATION: Final = f"""
    CREATE TABLE login_failures (
        key TEXT NOT NULL,
        at REAL NOT NULL
    );
    CREATE INDEX login_failures_key ON login_failures (key, at);
    CREATE INDEX login_failures_at ON login_failures (at);
    CREATE TABLE changes (
        topic TEXT PRIMARY KEY,
        version INTEGER NOT NULL DEFAULT 0
    );
    INSERT INTO changes (topic) VALUES ('{VOICES}');
    {_counted("voices", VOICES)}
"""


def statements(script: str) -> list[str]:
    """The statements of a migration script (a trigger's body keeps its own semicolons)."""
    found: list[str] = []
    pending = ""
    for piece in script.split(";"):
        pending += piece + ";"
        if sqlite3.complete_statement(pending):
            if pending.strip(" \n;"):
                found.append(pending.strip())
            pending = ""
    return found


@dataclasses.dataclass(frozen=True)
class FailureCount:
    """Failed logins of one throttle key inside its window: how many, and the oldest's time."""

    count: int
    oldest: float


class SharedTables:
    """Login failures and change counters (a mixin: the Store gives _write and reader)."""

    # Given by the Store this mixes into: the read-only connection, a write transaction.
    reader: WholeReads
    _write: Callable[[], AbstractAsyncContextManager[aiosqlite.Connection]]
    _cache: ReadCache

    async def change_versions(self) -> dict[str, int]:
        """How often each topic has changed (a counter per topic, raised by the database)."""
        async with self.reader.execute("SELECT topic, version FROM changes") as cur:
            return {row[0]: int(row[1]) for row in await cur.fetchall()}

    async def login_failures(self, since: Mapping[str, float]) -> dict[str, FailureCount]:
        """Failures of each key after its instant (window start or last unlock), in one read."""
        found: dict[str, FailureCount] = {}
        for key, instant in since.items():
            # A flood of guesses at a locked uid reads these on every attempt: the times of a
            # key, from memory while nothing was written (they are few: counting stops at the
            # limit); a key with very many (a generous per-address limit) is counted by SQL.
            times = await self._cache.read(("failures", key),
                                           functools.partial(self._failure_times, key))
            if times is not None:
                recent = times[bisect.bisect_right(times, instant):]
                if recent:
                    found[key] = FailureCount(len(recent), recent[0])
                continue
            async with self.reader.execute(
                    "SELECT COUNT(*), MIN(at) FROM login_failures WHERE key = ? AND at > ?",
                    (key, instant)) as cur:
                row = await cur.fetchone()
            if row is not None and row[0]:
                found[key] = FailureCount(int(row[0]), float(row[1]))
        return found

    async def _failure_times(self, key: str) -> tuple[float, ...] | None:
        """Every failure time of key, oldest first; None when there are more than CACHED_FAILURES."""
        async with self.reader.execute(
                "SELECT at FROM login_failures WHERE key = ? ORDER BY at LIMIT ?",
                (key, CACHED_FAILURES + 1)) as cur:
            rows = await cur.fetchall()
        if len(rows) > CACHED_FAILURES:
            return None
        return tuple(float(row[0]) for row in rows)

    async def add_login_failure(self, keys: Iterable[str], at: float,
                                forget_before: float) -> None:
        """Count one failed login against each key; failures before forget_before go."""
        async with self._write() as db:
            await db.executemany("INSERT INTO login_failures (key, at) VALUES (?, ?)",
                                 [(key, at) for key in keys])
            await db.execute("DELETE FROM login_failures WHERE at <= ?", (forget_before,))

    async def clear_login_failures(self, key: str) -> None:
        """Forget every failure of key (a correct login)."""
        async with self._write() as db:
            await db.execute("DELETE FROM login_failures WHERE key = ?", (key,))
