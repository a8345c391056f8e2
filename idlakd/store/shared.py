"""What daemons on one SQLite file share besides accounts and voices: login failures, and
the change counters a daemon reads to learn what another process changed."""

from __future__ import annotations

import dataclasses
import sqlite3
from contextlib import AbstractAsyncContextManager
from typing import Callable, Final, Iterable, Mapping

import aiosqlite

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
    reader: aiosqlite.Connection
    _write: Callable[[], AbstractAsyncContextManager[aiosqlite.Connection]]

    async def change_versions(self) -> dict[str, int]:
        """How often each topic has changed (a counter per topic, raised by the database)."""
        async with self.reader.execute("SELECT topic, version FROM changes") as cur:
            return {row[0]: int(row[1]) for row in await cur.fetchall()}

    async def login_failures(self, since: Mapping[str, float]) -> dict[str, FailureCount]:
        """Failures of each key after its instant (window start or last unlock), in one read."""
        found: dict[str, FailureCount] = {}
        for key, instant in since.items():
            async with self.reader.execute(
                    "SELECT COUNT(*), MIN(at) FROM login_failures WHERE key = ? AND at > ?",
                    (key, instant)) as cur:
                row = await cur.fetchone()
            if row is not None and row[0]:
                found[key] = FailureCount(int(row[0]), float(row[1]))
        return found

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
