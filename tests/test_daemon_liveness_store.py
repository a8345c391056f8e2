"""Daemon heartbeats in the store: a daemon silent too long loses its running syntheses (they
stop counting against the user's syntheses at once), on SQLite and on PostgreSQL."""

from __future__ import annotations

from pathlib import Path

from idlakd.config import DatabaseUrl
from idlakd.models import SynthesisCharge, Usage
from idlakd.store.factory import store_at

DAY, MINUTE = "2026-12-01", 100


def _charge(n: int, daemon: str) -> SynthesisCharge:
    """A running synthesis of alice on daemon."""
    return SynthesisCharge(id=f"c{n}", uid="alice", day=DAY, minute=MINUTE, characters=10,
                           daemon=daemon, started_at=1000.0)


def _admit(_usage: Usage) -> None:
    """Admit every charge (the limits are not what is tested)."""
    return None


async def test_a_silent_daemons_syntheses_stop_counting(database: Path | DatabaseUrl) -> None:
    async with store_at(database, 2) as a, store_at(database, 2) as b:
        assert await a.daemon_seen("a", 1000.0, 994.0) == 0
        assert await b.daemon_seen("b", 1000.0, 994.0) == 0
        for n, (store, daemon) in enumerate(((a, "a"), (a, "a"), (b, "b"), (b, "legacy"))):
            assert await store.charge(_charge(n, daemon), 0.0, _admit) is None

        async def running() -> int:
            return (await b.usage("alice", DAY, MINUTE, 0.0)).running

        assert await running() == 4
        # a last seen at 1000: still alive for a beat seen at 1005 (dead before 999).
        assert await b.daemon_seen("b", 1005.0, 999.0) == 0
        assert await running() == 4
        # Seen at 1007 (dead before 1001): a is dead, its two syntheses go; b's and the row of
        # a daemon that never wrote a heartbeat (an older idlakd) stay.
        assert await b.daemon_seen("b", 1007.0, 1001.0) == 2
        assert await running() == 2
        assert await b.daemon_seen("b", 1009.0, 1003.0) == 0
        # a comes back (a stalled daemon): it is alive again, b untouched.
        assert await a.daemon_seen("a", 1010.0, 1004.0) == 0
        assert await a.charge(_charge(9, "a"), 0.0, _admit) is None
        assert await running() == 3
        await a.finish_charge(_charge(2, "b"), 1.0, refund=False)
        assert await running() == 2
