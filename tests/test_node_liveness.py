"""A node killed with SIGKILL mid-stream does not hold its user's syntheses at once: the other
node serves that user again within seconds (heartbeats in the shared PostgreSQL store)."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import aiohttp
import pytest

from idlakd.accounts.quotas import DEAD_AFTER_HEARTBEATS, HEARTBEAT_SECONDS
from tests.helpers.app import bearer
from tests.helpers.cluster import Cluster, shared_store_settings
from tests.helpers.daemon import login
from tests.helpers.postgres import PostgresServer

pytestmark = pytest.mark.scenario

# The slow voice takes about 0.9 s a sentence: this stream is still running when A is killed.
LONG_TEXT = " ".join(f"Sentence number {n}." for n in range(20))
# Dead after DEAD_AFTER_HEARTBEATS silent beats, forgotten at B's next beat; then some slack.
FREED_WITHIN = (DEAD_AFTER_HEARTBEATS + 1) * HEARTBEAT_SECONDS + 3.0


async def speech_status(session: aiohttp.ClientSession, url: str, token: str) -> int:
    """A short /speech request of alba on url: its status (the body read whole)."""
    async with session.post(url + "/speech", headers=bearer(token),
                            json={"voice_id": "alba", "text": "Hello."}) as resp:
        await resp.read()
        return resp.status


async def test_a_killed_nodes_stream_frees_the_users_quota_on_the_other_node(
        tmp_path: Path, postgres_server: PostgresServer) -> None:
    cluster = Cluster(tmp_path, shared_store_settings(
        tmp_path, database=await postgres_server.create_database(), quota_concurrent="1"))
    try:
        await cluster.start_all(["a", "b"])
        a, b = cluster.nodes["a"], cluster.nodes["b"]
        async with aiohttp.ClientSession() as session:
            admin = await login(session, a.url, "admin", cluster.admin_password())
            async with session.post(a.url + "/users", json={"uid": "alice"},
                                    headers=bearer(admin)) as resp:
                assert resp.status == 200, await resp.text()
                password = (await resp.json())["password"]
            token = await login(session, a.url, "alice", password)
            async with session.post(a.url + "/speech", headers=bearer(token),
                                    json={"voice_id": "slow", "text": LONG_TEXT}) as stream:
                assert stream.status == 200
                assert (await stream.content.readany())[:4] == b"RIFF"
                # Mid-stream: alice's one synthesis at once is taken, on every node.
                assert await speech_status(session, b.url, token) == 429
                a.signal(signal.SIGKILL)
                assert await a.wait(10) == -9
                killed = time.monotonic()
            statuses = []
            while (status := await speech_status(session, b.url, token)) != 200:
                statuses.append(status)
                assert time.monotonic() - killed < FREED_WITHIN, (statuses, cluster.logs())
                await asyncio.sleep(0.25)
            assert set(statuses) <= {429}, statuses
            assert "Forgot 1 running syntheses of daemons silent" in b.log()
    finally:
        cluster.kill_all()
