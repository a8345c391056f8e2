"""The login throttle's failures live in the store: two throttles (two nodes) on one database
count the same failures, on SQLite and on PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest

from idlakd.accounts.throttle import THROTTLED, LoginThrottle
from idlakd.config import DatabaseUrl
from idlakd.errors import RateLimited
from idlakd.store.factory import store_at


class Clock:
    """A wall clock the test moves."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


async def test_two_nodes_count_the_same_failures(database: Path | DatabaseUrl) -> None:
    clock = Clock()
    async with store_at(database, 2) as one, store_at(database, 2) as other:
        a = LoginThrottle(3, 100, 60, clock=clock)
        b = LoginThrottle(3, 100, 60, clock=clock)
        for node, store in ((a, one), (b, other), (a, one)):
            async with node.attempt(store, "bob", "10.0.0.1"):
                await node.failed(store, "bob", "10.0.0.1")
            clock.now += 10
        for node, store in ((a, one), (b, other)):
            with pytest.raises(RateLimited) as refused:
                await node.check(store, "bob", "10.0.0.2")
            # The oldest failure (30 s ago) leaves the 60 s window in 30 s.
            assert (refused.value.message, refused.value.retry_after) == (THROTTLED, 30)
        # An unlock instant forgives the failures before it, on every node.
        await b.check(other, "bob", "10.0.0.2", unlocked_at=clock.now - 1)
        # The window passes the last failure: all forgotten (the next failure prunes them).
        clock.now += 51
        await a.check(one, "bob", "10.0.0.2")
        async with a.attempt(one, "carol", "10.0.0.9"):
            await a.failed(one, "carol", "10.0.0.9")
        assert await other.login_failures({"uid:bob": 0.0}) == {}
        assert (await one.login_failures({"uid:carol": 0.0}))["uid:carol"].count == 1


async def test_a_correct_login_clears_only_its_own_window(database: Path | DatabaseUrl) -> None:
    clock = Clock()
    async with store_at(database, 2) as store:
        node = LoginThrottle(2, 100, 60, clock=clock)
        await node.failed(store, "bob", "10.0.0.1")  # an attacker, unknown address
        await node.failed(store, "bob", "10.0.0.2", known=True)  # the owner's typo
        await node.succeeded(store, "bob", "10.0.0.2", known=True)
        counts = await store.login_failures({"uid:bob": 0.0, "pair:10.0.0.2 bob": 0.0,
                                             "addr:10.0.0.2": 0.0})
        assert {key: found.count for key, found in counts.items()} == {
            "uid:bob": 1, "addr:10.0.0.2": 1}
