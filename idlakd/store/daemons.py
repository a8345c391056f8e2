"""Which daemons of a SQLite store are alive: each writes its heartbeat, and the running
syntheses of a daemon not heard from for a while (killed, its host gone) stop counting."""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from typing import Callable, Final

import aiosqlite

#: Entry 6 of the SQLite store's MIGRATIONS.
DAEMONS_MIGRATION: Final = """
    CREATE TABLE daemons (
        name TEXT PRIMARY KEY,
        seen_at REAL NOT NULL
    );
    CREATE INDEX daemons_seen_at ON daemons (seen_at);
    CREATE INDEX running_syntheses_daemon ON running_syntheses (daemon);
"""


class DaemonTables:
    """Daemon heartbeats (a mixin: the Store gives _write)."""

    # Given by the Store this mixes into: a write transaction.
    _write: Callable[[], AbstractAsyncContextManager[aiosqlite.Connection]]

    async def daemon_seen(self, daemon: str, at: float, dead_before: float) -> int:
        """Record daemon alive at `at`; forget daemons last seen before dead_before and their
        running syntheses (how many)."""
        async with self._write() as db:
            await db.execute("INSERT INTO daemons (name, seen_at) VALUES (?, ?) "
                             "ON CONFLICT (name) DO UPDATE SET seen_at = excluded.seen_at",
                             (daemon, at))
            cur = await db.execute(
                "DELETE FROM running_syntheses WHERE daemon IN "
                "(SELECT name FROM daemons WHERE seen_at < ?)", (dead_before,))
            await db.execute("DELETE FROM daemons WHERE seen_at < ?", (dead_before,))
            return cur.rowcount
