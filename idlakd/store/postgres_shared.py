"""Login failures and change counters in PostgreSQL, and the LISTEN connection that tells a
daemon at once when another node (or the CLI) changed something it caches."""

from __future__ import annotations

import asyncio
import logging
from contextlib import AbstractAsyncContextManager
from typing import Any, Awaitable, Callable, Final, Iterable, Mapping

import asyncpg

from idlakd.config import DatabaseUrl
from idlakd.store.shared import VOICES, FailureCount

log = logging.getLogger(__name__)

#: The channel the database's triggers notify (the payload is the topic).
CHANNEL: Final = "idlakd_changes"
#: The application_name of each node's LISTEN connection.
LISTENER_NAME: Final = "idlakd-listen"
#: A lost LISTEN connection is opened again after this long.
RECONNECT_SECONDS: Final = 1.0

#: Entry 5 of the PostgreSQL store's MIGRATIONS: a statement trigger counts and announces
#: every write to voices, whoever makes it (a node, the CLI, an operator's psql).
POSTGRES_SHARED_MIGRATION: Final = f"""
    CREATE TABLE login_failures (
        key TEXT NOT NULL,
        at DOUBLE PRECISION NOT NULL
    );
    CREATE INDEX login_failures_key ON login_failures (key, at);
    CREATE INDEX login_failures_at ON login_failures (at);
    CREATE TABLE changes (
        topic TEXT PRIMARY KEY,
        version BIGINT NOT NULL DEFAULT 0
    );
    INSERT INTO changes (topic) VALUES ('{VOICES}');
    CREATE FUNCTION idlakd_count_change() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        UPDATE changes SET version = version + 1 WHERE topic = TG_ARGV[0];
        PERFORM pg_notify('{CHANNEL}', TG_ARGV[0]);
        RETURN NULL;
    END $$;
    CREATE TRIGGER voices_counted AFTER INSERT OR UPDATE OR DELETE ON voices
        FOR EACH STATEMENT EXECUTE FUNCTION idlakd_count_change('{VOICES}');
"""


class PostgresSharedTables:
    """Login failures and change counters (a mixin: the store gives _write, _fetch, url)."""

    url: DatabaseUrl

    # Given by the store this mixes into: a write transaction, the rows of one read.
    _write: Callable[[], AbstractAsyncContextManager[asyncpg.Connection]]
    _fetch: Callable[..., Awaitable[list[asyncpg.Record]]]

    async def change_versions(self) -> dict[str, int]:
        """How often each topic has changed (a counter per topic, raised by the database)."""
        return {r[0]: int(r[1]) for r in await self._fetch("SELECT topic, version FROM changes")}

    async def login_failures(self, since: Mapping[str, float]) -> dict[str, FailureCount]:
        """Failures of each key after its instant (window start or last unlock), in one read."""
        rows = await self._fetch(
            "SELECT f.key, COUNT(*), MIN(f.at) FROM login_failures f "
            "JOIN UNNEST($1::text[], $2::float8[]) AS s(key, since) ON f.key = s.key "
            "WHERE f.at > s.since GROUP BY f.key", list(since), list(since.values()))
        return {r[0]: FailureCount(int(r[1]), float(r[2])) for r in rows}

    async def add_login_failure(self, keys: Iterable[str], at: float,
                                forget_before: float) -> None:
        """Count one failed login against each key; failures before forget_before go."""
        async with self._write() as db:
            await db.execute("INSERT INTO login_failures (key, at) SELECT k, $2 FROM "
                             "UNNEST($1::text[]) AS k", list(keys), at)
            await db.execute("DELETE FROM login_failures WHERE at <= $1", forget_before)

    async def clear_login_failures(self, key: str) -> None:
        """Forget every failure of key (a correct login)."""
        async with self._write() as db:
            await db.execute("DELETE FROM login_failures WHERE key = $1", key)

    async def listen_changes(self, wake: Callable[[], None]) -> None:
        """Call wake() on every change notification, forever; a lost connection is opened
        again (wake() is called then too: notifications sent meanwhile are lost)."""
        while True:
            try:
                # Named, so an operator sees it in pg_stat_activity (one per node).
                db = await asyncpg.connect(self.url.url,
                                           server_settings={"application_name": LISTENER_NAME})
            except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError,
                    asyncio.TimeoutError) as exc:
                log.warning("Cannot listen for changes on %s (retrying): %s", self.url, exc)
                await asyncio.sleep(RECONNECT_SECONDS)
                continue
            lost = asyncio.Event()
            try:
                db.add_termination_listener(lambda _db: lost.set())
                await db.add_listener(CHANNEL, lambda *_args: wake())
                wake()
                await lost.wait()
                log.warning("Lost the change notifications of %s; listening again", self.url)
            except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
                log.warning("Listening for changes on %s failed (retrying): %s", self.url, exc)
            finally:
                db.terminate()  # at once, also when cancelled: nothing is pending on it
            await asyncio.sleep(RECONNECT_SECONDS)
