"""Two real daemons on one PostgreSQL database, as behind a balancer: whatever one node (or the
CLI) changes, the other acts on at once; failed logins count across nodes; a node killed
mid-job leaves the job to the other."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable

import aiohttp
import asyncpg
import pytest

from tests.helpers.daemon import REPO, Daemon, login, start_daemon, wait_listening
from tests.helpers.postgres import PostgresServer

pytestmark = pytest.mark.scenario

MAX_FAILURES = 4
CLAIM_TIMEOUT = 2.0


@dataclasses.dataclass
class Nodes:
    """Two daemons on one database, the first admin's password, and the database's URL."""

    a: Daemon
    b: Daemon
    password: str
    url: str
    http: aiohttp.ClientSession


def start_node(tmp_path: Path, name: str, url: str) -> Daemon:
    """One daemon on the shared database (its own state directory)."""
    return start_daemon(tmp_path / name, database=url, login_max_failures=str(MAX_FAILURES),
                        job_claim_timeout_seconds=str(CLAIM_TIMEOUT))


@pytest.fixture
async def nodes(tmp_path: Path, postgres_server: PostgresServer) -> AsyncIterator[Nodes]:
    """Node A (which creates the first admin), then node B, on a fresh database."""
    url = await postgres_server.create_database()
    a = start_node(tmp_path, "a", url)
    b: Daemon | None = None
    try:
        await wait_listening(a)
        b = start_node(tmp_path, "b", url)
        await wait_listening(b)
        async with aiohttp.ClientSession() as http:
            yield Nodes(a, b, a.admin_password(), url, http)
    finally:
        a.kill()
        if b is not None:
            b.kill()


def bearer(token: str) -> dict[str, str]:
    """The Authorization header of a token."""
    return {"Authorization": f"Bearer {token}"}


async def call(http: aiohttp.ClientSession, method: str, url: str,
               token: str | None = None, **kwargs: Any) -> tuple[int, Any]:
    """One request; its status and JSON body (None when not JSON)."""
    headers = bearer(token) if token else None
    async with http.request(method, url, headers=headers, **kwargs) as resp:
        body = await resp.json() if resp.content_type == "application/json" else None
        return resp.status, body


async def new_user(nodes: Nodes, admin: str, uid: str) -> str:
    """Create uid through node A; its password."""
    status, body = await call(nodes.http, "POST", nodes.a.url + "/users", admin,
                              json={"uid": uid})
    assert status == 200, body
    password: str = body["password"]
    return password


def cli(url: str, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The real `idlakd` command on the shared database."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("IDLAKD_")}
    env |= {"IDLAKD_DATABASE": url, "IDLAKD_STATE_DIR": str(tmp_path / "cli"),
            "IDLAKD_BCRYPT_ROUNDS": "4"}
    proc = subprocess.run([sys.executable, "-m", "idlakd", *args], capture_output=True,
                          text=True, env=env, timeout=60, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    return proc


async def seconds_until(condition: Callable[[], Awaitable[bool]], limit: float) -> float:
    """Seconds until condition() holds (polled every 20 ms); fails after limit seconds."""
    start = time.monotonic()
    while not await condition():
        assert time.monotonic() - start < limit, f"not within {limit} s"
        await asyncio.sleep(0.02)
    return time.monotonic() - start


async def test_a_token_of_one_node_is_good_on_the_other_until_revoked_or_reset(
        nodes: Nodes) -> None:
    admin = await login(nodes.http, nodes.a.url, "admin", nodes.password)
    assert (await call(nodes.http, "GET", nodes.b.url + "/users", admin))[0] == 200
    password = await new_user(nodes, admin, "bob")
    # Revoked on B: refused on A at once.
    token = await login(nodes.http, nodes.a.url, "bob", password)
    assert (await call(nodes.http, "GET", nodes.a.url + "/auth/usage", token))[0] == 200
    assert (await call(nodes.http, "POST", nodes.b.url + "/auth/expire", token))[0] == 200
    status, body = await call(nodes.http, "GET", nodes.a.url + "/auth/usage", token)
    assert (status, body["message"]) == (401, "Access token has expired")
    # An API key made on A and revoked on B: refused on A at once.
    token = await login(nodes.http, nodes.b.url, "bob", password)
    status, key = await call(nodes.http, "POST", nodes.a.url + "/auth/keys", token,
                             json={"name": "laptop"})
    assert status in (200, 201), key
    assert (await call(nodes.http, "GET", nodes.b.url + "/auth/usage", key["key"]))[0] == 200
    assert (await call(nodes.http, "DELETE", nodes.b.url + f"/auth/keys/{key['id']}",
                       token))[0] == 200
    assert (await call(nodes.http, "GET", nodes.a.url + "/auth/usage", key["key"]))[0] == 401
    # A password reset on A ends bob's session on B.
    assert (await call(nodes.http, "GET", nodes.b.url + "/auth/usage", token))[0] == 200
    status, body = await call(nodes.http, "POST", nodes.a.url + "/users/bob/password", admin)
    assert status == 200, body
    assert (await call(nodes.http, "GET", nodes.b.url + "/auth/usage", token))[0] == 401
    assert await login(nodes.http, nodes.b.url, "bob", body["password"])
    # A user deleted on B cannot log in or use a token on A.
    token = await login(nodes.http, nodes.a.url, "bob", body["password"])
    assert (await call(nodes.http, "DELETE", nodes.b.url + "/users/bob", admin))[0] == 200
    assert (await call(nodes.http, "GET", nodes.a.url + "/auth/usage", token))[0] == 401


async def test_failed_logins_split_over_two_nodes_lock_the_uid_as_on_one(
        nodes: Nodes, tmp_path: Path) -> None:
    admin = await login(nodes.http, nodes.a.url, "admin", nodes.password)
    password = await new_user(nodes, admin, "carol")
    wrong = {"uid": "carol", "password": "not-it"}
    # MAX_FAILURES failures, alternately on A and B (each node sees half of them).
    for n in range(MAX_FAILURES):
        node = (nodes.a, nodes.b)[n % 2]
        status, _ = await call(nodes.http, "POST", node.url + "/auth", json=wrong)
        assert status == 401, n
    # MAX_FAILURES in total: the right password is refused on both nodes.
    for node in (nodes.a, nodes.b):
        status, body = await call(nodes.http, "POST", node.url + "/auth",
                                  json={"uid": "carol", "password": password})
        assert (status, body["message"]) == (
            429, "Too many failed login attempts, try again later"), node.url
    # An unlock from the shell (against the database) lets carol in on both.
    cli(nodes.url, tmp_path, "user", "unlock", "carol")
    assert await login(nodes.http, nodes.b.url, "carol", password)
    assert await login(nodes.http, nodes.a.url, "carol", password)


async def test_a_voice_removed_with_the_cli_leaves_both_nodes_within_a_second(
        nodes: Nodes, tmp_path: Path) -> None:
    admin = await login(nodes.http, nodes.a.url, "admin", nodes.password)
    for node in (nodes.a, nodes.b):
        async with nodes.http.post(node.url + "/speech", headers=bearer(admin),
                                   json={"voice_id": "alba", "text": "Hello."}) as resp:
            assert resp.status == 200 and len(await resp.read()) > 1000
        assert len(node.children()) == 1  # alba's worker (workers_per_voice = 1)
    cli(nodes.url, tmp_path, "voice", "remove", "-i", "alba")

    async def gone_from_voices() -> bool:
        for node in (nodes.a, nodes.b):
            status, body = await call(nodes.http, "GET", node.url + "/voices")
            if any(v["voice_id"] == "alba" for v in body["voices"]):
                return False
        return True

    async def workers_stopped() -> bool:
        return not nodes.a.children() and not nodes.b.children()

    assert await seconds_until(gone_from_voices, 1.0) < 1.0
    assert await seconds_until(workers_stopped, 1.0) < 1.0
    # Added back from the shell: served by both nodes.
    cli(nodes.url, tmp_path, "voice", "add", "-e", "espeak", "-g", "female", "-n", "Alba",
        "-i", "alba", "-l", "en", "-a", "gb", "-o", '{"voice": "en-gb"}')
    for node in (nodes.a, nodes.b):
        assert (await call(nodes.http, "GET", node.url + "/voices/alba"))[0] == 200


async def test_changes_still_arrive_after_the_listen_connection_drops(
        nodes: Nodes, tmp_path: Path) -> None:
    """The notifications' connection killed by the server: each node listens again."""
    admin = await login(nodes.http, nodes.a.url, "admin", nodes.password)
    for node in (nodes.a, nodes.b):
        async with nodes.http.post(node.url + "/speech", headers=bearer(admin),
                                   json={"voice_id": "alba", "text": "Hello."}) as resp:
            assert resp.status == 200
    db = await asyncpg.connect(nodes.url)
    try:
        killed = await db.fetchval(
            "SELECT COUNT(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE application_name = 'idlakd-listen' AND datname = current_database()")
    finally:
        await db.close()
    assert killed == 2
    await asyncio.sleep(1.5)  # both nodes listen again (RECONNECT_SECONDS)
    cli(nodes.url, tmp_path, "voice", "remove", "-i", "alba")

    async def workers_stopped() -> bool:
        return not nodes.a.children() and not nodes.b.children()

    assert await seconds_until(workers_stopped, 1.0) < 1.0


async def job_status(nodes: Nodes, node: Daemon, token: str, job_id: str) -> dict[str, Any]:
    """GET /v1/jobs/{id} on a node."""
    status, body = await call(nodes.http, "GET", node.url + f"/v1/jobs/{job_id}", token)
    assert status == 200, body
    return dict(body)


async def test_a_job_of_a_killed_node_is_finished_by_the_other(nodes: Nodes) -> None:
    admin = await login(nodes.http, nodes.a.url, "admin", nodes.password)
    text = " ".join(f"Sentence number {n} of the job." for n in range(6))
    status, created = await call(nodes.http, "POST", nodes.a.url + "/v1/jobs", admin,
                                 json={"voice_id": "slow", "text": text})
    assert status == 202, created
    job_id = created["id"]

    async def running_on_a() -> bool:
        job = await job_status(nodes, nodes.a, admin, job_id)
        return job["status"] == "running" and bool(nodes.a.children())

    await seconds_until(running_on_a, 10.0)
    assert not nodes.b.children()  # A claimed it (woken at once), not B (which polls)
    nodes.a.signal(signal.SIGKILL)
    await nodes.a.wait(10)

    async def done_on_b() -> bool:
        job = await job_status(nodes, nodes.b, admin, job_id)
        assert job["status"] in ("running", "done"), job
        return job["status"] == "done"

    # Stale after CLAIM_TIMEOUT, found within B's 5 s poll, then ~6 slow sentences.
    await seconds_until(done_on_b, 30.0)
    assert nodes.b.children()  # B's own worker made it
    async with nodes.http.get(nodes.b.url + f"/v1/jobs/{job_id}/audio",
                              headers=bearer(admin)) as resp:
        assert resp.status == 200
        audio = await resp.read()
    assert audio[:4] == b"RIFF" and audio[8:12] == b"WAVE"
    assert len(audio) > 44 + 6 * 9600  # every sentence's PCM (see SLOW_CHUNK_BYTES)


async def test_on_sqlite_a_voice_removed_with_the_cli_stops_its_workers_within_a_second(
        tmp_path: Path) -> None:
    """One host, a daemon and the CLI on one SQLite file: the daemon reads the counters."""
    daemon = start_daemon(tmp_path)
    try:
        await wait_listening(daemon)
        async with aiohttp.ClientSession() as http:
            admin = await login(http, daemon.url, "admin", daemon.admin_password())
            async with http.post(daemon.url + "/speech", headers=bearer(admin),
                                 json={"voice_id": "alba", "text": "Hello."}) as resp:
                assert resp.status == 200 and len(await resp.read()) > 1000
            assert len(daemon.children()) == 1
            env = {k: v for k, v in os.environ.items() if not k.startswith("IDLAKD_")}
            env["IDLAKD_STATE_DIR"] = str(tmp_path / "state")
            subprocess.run([sys.executable, "-m", "idlakd", "voice", "remove", "-i", "alba"],
                           check=True, capture_output=True, env=env, timeout=60, cwd=REPO)

            async def workers_stopped() -> bool:
                return not daemon.children()

            assert await seconds_until(workers_stopped, 1.0) < 1.0
    finally:
        daemon.kill()
