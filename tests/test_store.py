"""The store under concurrent writers of one process: they queue, none fails."""

from __future__ import annotations

import asyncio
from pathlib import Path

from idlakd.store.sqlite import Store


async def test_concurrent_writes_queue_instead_of_failing(tmp_path: Path) -> None:
    async with Store(tmp_path / "x.db") as store:
        await asyncio.gather(*(store.revoke_token(f"jti-{n}", 4e9) for n in range(20)))
        revoked = await asyncio.gather(*(store.token_state(f"jti-{n}", "nobody")
                                         for n in range(20)))
        assert all(is_revoked for is_revoked, _ in revoked)
        results = await asyncio.gather(*(store.add_user(f"u{n}", b"h", False) for n in range(10)),
                                       *(store.delete_user("u0") for _ in range(3)))
        assert results[:10] == [True] * 10
        assert sorted(results[10:]) == ["missing", "missing", "ok"]


async def test_a_cancelled_write_leaves_no_transaction_open(tmp_path: Path) -> None:
    async with Store(tmp_path / "x.db") as store:
        for _ in range(5):
            task = asyncio.ensure_future(store.revoke_token("j", 4e9))
            await asyncio.sleep(0)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        assert await store.add_user("after", b"h", True)
        assert (await store.get_user("after")) is not None
