"""Reads the store answers from memory (voices, users, token states, login failures, keys) are
never older than the last commit: another connection's or another process's write is seen on
the next read, this store's own write at once (both stores; PostgreSQL reads every time)."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

from idlakd.config import DatabaseUrl
from idlakd.models import Voice
from idlakd.store.factory import store_at
from tests.helpers.app import REPO

ALBA = Voice("alba", "Alba", "en", "gb", "female", options={"voice": "en-gb"})


async def test_another_connections_writes_are_seen_on_the_next_read(
        database: Path | DatabaseUrl) -> None:
    async with store_at(database, 4) as node_a, store_at(database, 4) as node_b:
        await node_b.upsert_voices([ALBA])
        await node_b.add_user("bob", b"hash", False)
        created = (await node_a.token_state("jti-1", "bob")).created_at
        # Read twice on A: the second answer may come from memory.
        for _ in range(2):
            assert (await node_a.get_voice("alba")) is not None
            assert [v.id for v in await node_a.list_voices("en")] == ["alba"]
            assert await node_a.languages() == ["en"]
            assert await node_a.accents("en") == ["gb"]
            assert (await node_a.get_user("bob")) is not None
            assert not (await node_a.token_state("jti-1", "bob")).revoked
            assert (await node_a.login_state("bob", "10.0.0.1")).password_hash == b"hash"
            assert await node_a.login_failures({"uid:bob": 0.0}) == {}
        await node_b.revoke_token("jti-1", time.time() + 600)
        assert (await node_a.token_state("jti-1", "bob")).revoked
        await node_b.set_password_hash("bob", b"other")
        assert (await node_a.login_state("bob", "10.0.0.1")).password_hash == b"other"
        assert (await node_a.token_state("jti-2", "bob")).valid_after >= created
        await node_b.add_login_failure(["uid:bob"], time.time(), 0.0)
        assert (await node_a.login_failures({"uid:bob": 0.0}))["uid:bob"].count == 1
        assert await node_b.delete_voice("alba")
        assert await node_a.get_voice("alba") is None
        assert await node_a.list_voices() == []
        assert await node_a.languages() == []
        assert await node_b.delete_user("bob") == "ok"
        assert await node_a.get_user("bob") is None
        assert (await node_a.token_state("jti-2", "bob")).user is None


async def test_a_stores_own_write_is_seen_by_its_next_read_at_once(
        database: Path | DatabaseUrl) -> None:
    async with store_at(database, 4) as store:
        await store.upsert_voices([ALBA])
        await store.add_user("bob", b"hash", False)
        for _ in range(2):
            assert not (await store.token_state("jti-1", "bob")).revoked
            assert (await store.get_voice("alba")) is not None
        # No await between a write's end and the read that must see it suspends on its own.
        await store.revoke_token("jti-1", time.time() + 600)
        assert (await store.token_state("jti-1", "bob")).revoked
        assert await store.delete_voice("alba")
        assert await store.get_voice("alba") is None
        assert await store.delete_user("bob") == "ok"
        assert (await store.token_state("jti-1", "bob")).user is None


async def test_a_login_failure_count_read_from_memory_follows_the_window(
        database: Path | DatabaseUrl) -> None:
    async with store_at(database, 4) as store:
        await store.add_user("bob", b"hash", False)
        for at in (100.0, 200.0, 300.0):
            await store.add_login_failure(["uid:bob"], at, 0.0)
        for since, count, oldest in ((0.0, 3, 100.0), (150.0, 2, 200.0), (200.0, 1, 300.0)):
            found = (await store.login_failures({"uid:bob": since}))["uid:bob"]
            assert (found.count, found.oldest) == (count, oldest)
        assert await store.login_failures({"uid:bob": 300.0}) == {}


async def test_a_voice_removed_by_another_process_is_gone_on_the_next_read(
        tmp_path: Path) -> None:
    """The CLI, another process on the same SQLite file, removes a voice the daemon's store has
    just answered from memory: the very next read no longer finds it."""
    state = tmp_path / "state"
    env = {k: v for k, v in os.environ.items() if not k.startswith("IDLAKD_")}
    env |= {"IDLAKD_STATE_DIR": str(state), "PYTHONPATH": str(REPO)}
    async with store_at(state / "idlakd.db", 4) as store:
        await store.upsert_voices([ALBA])
        for _ in range(2):
            assert (await store.get_voice("alba")) is not None
        # Awaited, as anything the daemon waits for: the loop turns meanwhile (the counter is
        # read once per turn; a read in the turn that saw the previous one may reuse it).
        cli = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "idlakd", "voice", "remove", "-i", "alba", env=env,
            cwd=tmp_path, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
        _, errors = await asyncio.wait_for(cli.communicate(), 60)
        assert cli.returncode == 0, errors
        assert await store.get_voice("alba") is None


async def test_a_read_in_flight_does_not_hold_an_old_snapshot_for_the_next(tmp_path: Path) -> None:
    """Under load a read is always between its hops of the read connection's thread: another
    process's revocation committed meanwhile is still seen by the next read (it once stayed
    unseen, and cached, for as long as the load lasted: an outside attack's finding)."""
    path = tmp_path / "shared.db"
    voices = [Voice(f"v{n}", f"V{n}", "en", "gb", "female", options={"voice": "en-gb"})
              for n in range(5)]
    async with store_at(path, 4) as node_a, store_at(path, 4) as node_b:
        await node_b.upsert_voices(voices)
        await node_b.add_user("bob", b"hash", False)
        assert not (await node_a.token_state("jti-1", "bob")).revoked
        async with node_a.reader.execute("SELECT id FROM voices ORDER BY id") as rows:
            assert (await rows.fetchone())[0] == "v0"  # the other rows still to come
            await node_b.revoke_token("jti-1", time.time() + 600)
            await node_b.delete_user("bob")
            assert (await node_a.token_state("jti-1", "bob")).revoked
            assert await node_a.get_user("bob") is None
            assert [row[0] for row in await rows.fetchall()] == ["v1", "v2", "v3", "v4"]
        assert (await node_a.token_state("jti-1", "bob")).user is None

