"""The store under concurrent writers of one process: they queue, none fails (both stores)."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

from idlakd.config import DatabaseUrl
from idlakd.store.factory import store_at
from idlakd.store.sqlite import Store


async def test_concurrent_writes_queue_instead_of_failing(database: Path | DatabaseUrl) -> None:
    async with store_at(database, 10) as store:
        await asyncio.gather(*(store.revoke_token(f"jti-{n}", 4e9) for n in range(20)))
        revoked = await asyncio.gather(*(store.token_state(f"jti-{n}", "nobody")
                                         for n in range(20)))
        assert all(state.revoked for state in revoked)
        # u0 exists first: on PostgreSQL's pool a delete may run before an add sent with it.
        assert await store.add_user("u0", b"h", False)
        results = await asyncio.gather(*(store.add_user(f"u{n}", b"h", False)
                                         for n in range(1, 11)),
                                       *(store.delete_user("u0") for _ in range(3)))
        assert results[:10] == [True] * 10
        assert sorted(results[10:]) == ["missing", "missing", "ok"]


async def test_a_cancelled_write_leaves_no_transaction_open(
        database: Path | DatabaseUrl) -> None:
    async with store_at(database, 2) as store:
        for _ in range(5):
            task = asyncio.ensure_future(store.revoke_token("j", 4e9))
            await asyncio.sleep(0)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        assert await store.add_user("after", b"h", True)
        assert (await store.get_user("after")) is not None


async def test_a_failed_commit_is_rolled_back_and_the_next_write_works(tmp_path: Path) -> None:
    """COMMIT itself fails (a deferred foreign key, checked only then): nothing stays open.

    SQLite keeps the transaction open after such a COMMIT; were it not rolled back, the
    shared write connection would hold the write lock and every later BEGIN would fail.
    """
    path = tmp_path / "x.db"
    async with Store(path):
        pass  # create the schema
    with sqlite3.connect(path) as db:
        # Every new user writes a row naming a parent that does not exist: legal until COMMIT.
        db.executescript("""
            CREATE TABLE parent (id INTEGER PRIMARY KEY);
            CREATE TABLE child (parent_id INTEGER REFERENCES parent (id)
                                DEFERRABLE INITIALLY DEFERRED);
            CREATE TRIGGER orphan AFTER INSERT ON users BEGIN
                INSERT INTO child (parent_id) VALUES (42);
            END;
        """)
    async with Store(path) as store:
        # The failed COMMIT is an IntegrityError, which add_user reports as "uid taken".
        assert not await store.add_user("eve", b"h", False)
        # Another writer is not locked out, and the store's own next write works.
        with sqlite3.connect(path, timeout=1) as db:
            db.execute("DROP TRIGGER orphan")
        assert await store.add_user("eve", b"h", False)
        assert await store.get_user("eve") is not None
