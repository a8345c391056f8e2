"""Which daemons of a PostgreSQL store are alive: each writes its heartbeat, and the running
syntheses of a node not heard from for a while (killed, its host gone) stop counting."""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from typing import Callable, Final

import asyncpg

from idlakd.store.postgres_jobs import affected

#: Entry 6 of the PostgreSQL store's MIGRATIONS.
POSTGRES_DAEMONS_MIGRATION: Final = """
    CREATE TABLE daemons (
        name TEXT PRIMARY KEY,
        seen_at DOUBLE PRECISION NOT NULL
    );
    CREATE INDEX daemons_seen_at ON daemons (seen_at);
    CREATE INDEX running_syntheses_daemon ON running_syntheses (daemon);
"""


class PostgresDaemonTables:
    """Daemon heartbeats (a mixin: the store gives _write)."""

    # Given by the store this mixes into: a write transaction.
    _write: Callable[[], AbstractAsyncContextManager[asyncpg.Connection]]

    async def daemon_seen(self, daemon: str, at: float, dead_before: float) -> int:
        """Record daemon alive at `at`; forget daemons last seen before dead_before and their
        running syntheses (how many)."""
        async with self._write() as db:
            await db.execute("INSERT INTO daemons (name, seen_at) VALUES ($1, $2) "
                             "ON CONFLICT (name) DO UPDATE SET seen_at = excluded.seen_at",
                             daemon, at)
            # One statement: the dead daemons' rows go with their syntheses, whoever sees it first.
            return affected(await db.execute(
                "WITH dead AS (DELETE FROM daemons WHERE seen_at < $1 RETURNING name) "
                "DELETE FROM running_syntheses WHERE daemon IN (SELECT name FROM dead)",
                dead_before))
