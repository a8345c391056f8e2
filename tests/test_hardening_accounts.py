"""Issue 9, findings 4, 8 and 9 from outside: login floods, look-alike uids, an unwritable database."""

from __future__ import annotations

import asyncio
import os
import re
import resource
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from tests.helpers.daemon import start_daemon, wait_listening
from tests.helpers.daemon import login as daemon_login
from idlakd.accounts.passwords import LOGINS_BUSY
from idlakd.store.sqlite import Store
from idlakd.accounts.throttle import TOO_MANY_ATTEMPTS, SlidingWindows
from tests.helpers.app import REPO, assert_error, bearer, login, make_config
from tests.helpers.postgres import state_env

FLOOD_ADDRESSES = [f"127.0.0.{n}" for n in range(2, 12)]


def first_admin_password(capsys: pytest.CaptureFixture[str]) -> str:
    """The password the app printed for 'admin' on first start."""
    match = re.search(r"<User admin:([^:]+):True>", capsys.readouterr().out)
    assert match
    return match.group(1)


def session_from(address: str) -> aiohttp.ClientSession:
    """A client whose connections leave from this loopback address (a distinct peer to the app)."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(local_addr=(address, 0), limit=0))


# Finding 4: logins under a flood of bad ones

async def test_a_flood_of_bad_logins_does_not_starve_a_real_one(
        tmp_path: Path, started_app_factory: Any, capsys: pytest.CaptureFixture[str]) -> None:
    """150 wrong logins with random uids from 10 addresses at once; admin logs in from an 11th.

    bcrypt at 10 rounds costs ~80 ms here: checked in arrival order, the real login waited
    behind the whole flood (7.4 s measured before this change); now it waits behind at most
    one check per flooding address, and what does not fit the queue gets 503 at once.
    """
    client: TestClient[Any, Any] = await started_app_factory(
        make_config(tmp_path, bcrypt_rounds="10"))
    password = first_admin_password(capsys)
    url = str(client.make_url("/auth"))
    sessions = [session_from(address) for address in FLOOD_ADDRESSES]
    queue_full = asyncio.Event()
    finished = 0

    async def bad(n: int) -> tuple[int, str | None]:
        nonlocal finished
        async with sessions[n % len(sessions)].post(
                url, json={"uid": uuid.uuid4().hex, "password": "wrong"}) as resp:
            await resp.read()
            if resp.status == 503:
                queue_full.set()
            finished += 1
            return resp.status, resp.headers.get("Retry-After")

    try:
        flood = [asyncio.create_task(bad(n)) for n in range(150)]
        await asyncio.wait_for(queue_full.wait(), 20)  # from here on, the queue is full
        start = time.perf_counter()
        async with aiohttp.ClientSession() as own:
            async with own.post(url, json={"uid": "admin", "password": password}) as resp:
                assert resp.status == 200, await resp.text()
                assert (await resp.json())["access_token"]
        waited = time.perf_counter() - start
        finished_before_me = finished
        results = await asyncio.gather(*flood)
    finally:
        for session in sessions:
            await session.close()
    assert waited < 2.0, waited
    assert finished_before_me < len(flood), "the flood was over before the real login ran"
    statuses = [status for status, _ in results]
    assert set(statuses) == {401, 503}, statuses
    assert all(retry is not None and int(retry) >= 1 for status, retry in results if status == 503)


async def test_checks_beyond_the_pending_bound_get_503_at_once(
        tmp_path: Path, started_app_factory: Any) -> None:
    """With room for 4 waiting checks, 30 at once from one address: the rest are refused fast."""
    client: TestClient[Any, Any] = await started_app_factory(
        make_config(tmp_path, bcrypt_rounds="10", login_max_pending="4"))

    async def attempt() -> tuple[int, float, dict[str, str], str]:
        start = time.perf_counter()
        resp = await client.post("/auth", json={"uid": uuid.uuid4().hex, "password": "wrong"})
        body = await resp.text()
        return resp.status, time.perf_counter() - start, dict(resp.headers), body

    results = await asyncio.gather(*(attempt() for _ in range(30)))
    busy = [r for r in results if r[0] == 503]
    checked = [r for r in results if r[0] == 401]
    assert len(busy) + len(checked) == 30, [r[0] for r in results]
    # At most 2 bcrypt threads + 4 waiting (+ a few that finish while the rest arrive) are checked.
    assert len(busy) >= 15, len(busy)
    for _, elapsed, headers, body in busy:
        assert int(headers["Retry-After"]) >= 1
        assert headers["Content-Type"] == "application/json"
        assert body == '{"message":"%s"}' % LOGINS_BUSY
        assert elapsed < max(r[1] for r in checked), "a refused check waited for the queue"
    # A refused check is not a failure: the address is not throttled by the flood it sent.
    await assert_error(await client.post("/auth", json={"uid": "x", "password": "y"}), 401)


async def test_the_attempt_budget_per_address_counts_right_passwords_too(
        tmp_path: Path, started_app_factory: Any, capsys: pytest.CaptureFixture[str]) -> None:
    """3 attempts per address per window: the 4th login is 429 even with the right password."""
    client: TestClient[Any, Any] = await started_app_factory(
        make_config(tmp_path, login_max_attempts_per_address="3"))
    password = first_admin_password(capsys)
    url = str(client.make_url("/auth"))
    body = {"uid": "admin", "password": password}
    async with session_from("127.0.0.3") as one, session_from("127.0.0.4") as other:
        for _ in range(3):
            async with one.post(url, json=body) as resp:
                assert resp.status == 200, await resp.text()
                assert (await resp.json())["access_token"]
        async with one.post(url, json=body) as resp:
            await assert_error(resp, 429, TOO_MANY_ATTEMPTS)
            assert 1 <= int(resp.headers["Retry-After"]) <= 300
        async with other.post(url, json=body) as resp:  # another address has its own budget
            assert resp.status == 200
            assert (await resp.json())["access_token"]


def test_the_stalest_key_is_forgotten_first() -> None:
    """Failures are kept in order of their latest event: a full table drops the stalest key."""
    windows = SlidingWindows(window_seconds=60, per_key=5, max_keys=3)
    for key in ("a", "b", "c"):
        windows.add(key, 1.0)
    windows.add("a", 2.0)  # 'a' is now the freshest
    windows.add("d", 3.0)  # the table is full: 'b' goes
    assert len(windows) == 3
    assert list(windows.recent("b", 3.0)) == []
    assert list(windows.recent("a", 3.0)) == [1.0, 2.0]
    for n in range(10):  # a key keeps at most per_key times
        windows.add("c", 4.0 + n)
    assert len(windows.recent("c", 14.0)) == 5
    assert list(windows.recent("a", 62.5)) == []  # out of the window


# Finding 8: look-alike uids

async def test_look_alike_uids_are_refused_or_folded(client: TestClient[Any, Any],
                                                     admin_token: str) -> None:
    h = bearer(admin_token)

    async def create(uid: str) -> Any:
        return await client.post("/users", json={"uid": uid}, headers=h)

    # Cyrillic 'а' among Latin letters: NFKC keeps it, the one-script rule refuses it.
    for uid in ("\u0430dmin", "p\u0430ypal", "Ωmega", ".", "..", "a b", "a/b", "x\u200by",
                "admin\u0338", "\u02bcadmin", "\u0661\u0662", "a" * 65, "ünï©ødé", ""):
        await assert_error(await create(uid), 422, contains="uid: Must be 1 to 64 characters")
    # Full-width letters fold to ASCII: the same uid as the existing 'admin'.
    await assert_error(await create("\uff41\uff44\uff4d\uff49\uff4e"), 422, "User id already exists")
    resp = await create("\uff42\uff4f\uff42")  # 'ｂｏｂ' is stored as 'bob'
    assert resp.status == 200 and (await resp.json())["uid"] == "bob"
    password = (await resp.json())["password"]
    await login(client, "bob", password)
    # Login takes the uid as stored: no folding there.
    await assert_error(await client.post("/auth", json={"uid": "\uff42\uff4f\uff42",
                                                        "password": password}), 401)
    # A combining accent composes with its letter ('ǹ'), so both spellings are one uid.
    resp = await create("admin\u0300")
    assert resp.status == 200 and (await resp.json())["uid"] == "admi\u01f9"
    await assert_error(await create("admi\u01f9"), 422, "User id already exists")
    # What is allowed: one script (Latin with Han and kana is one writing system), '._@-'.
    for uid in ("José", "ωμέγα", "田中たろう", "tanaka田中", "first.last@example-1_x", "a" * 64):
        resp = await create(uid)
        assert resp.status == 200, uid
        assert (await resp.json())["uid"] == uid


def test_cli_user_add_follows_the_uid_rule(tmp_path: Path) -> None:
    """The command line creates users with the API's rule and stores the folded uid."""
    env = os.environ | {**state_env(tmp_path / "state"), "IDLAKD_BCRYPT_ROUNDS": "4",
                        "IDLAKD_VOICE_CONFIG": str(REPO / "voiceconfig.json"),
                        "PYTHONPATH": str(REPO)}  # this checkout's idlakd

    def idlakd(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "idlakd", *args], capture_output=True,
                              text=True, env=env, timeout=60, cwd=tmp_path)

    refused = idlakd("user", "add", "\u0430dmin", "--new-database")
    assert refused.returncode == 1 and "uid: Must be 1 to 64 characters" in refused.stderr
    added = idlakd("user", "add", "\uff43\uff41\uff52\uff4f\uff4c")  # full-width 'carol'
    assert added.returncode == 0 and added.stdout.startswith("<User carol:"), added.stderr
    again = idlakd("user", "add", "carol")
    assert again.returncode == 1 and "already exists" in again.stderr
    assert idlakd("user", "list").stdout.split("\n")[0] == "carol\tuser"


# Finding 9: a database that takes no writes

@pytest.mark.sqlite_only("a write limit on the daemon's files fails SQLite's writes, not a server's")
async def test_an_unwritable_database_answers_503_and_is_not_ready(tmp_path: Path) -> None:
    """A real daemon whose file writes fail in the kernel: writes 503, /readyz 503, reads fine.

    Tests run as root, where chmod stops nothing; RLIMIT_FSIZE 0 on the daemon process makes
    every write to a regular file fail with EFBIG, which SQLite reports as a disk I/O error,
    as it would on a full or failing disk. Lifting the limit makes the daemon ready again.
    """
    daemon = start_daemon(tmp_path)
    try:
        await wait_listening(daemon)
        async with aiohttp.ClientSession(base_url=daemon.url) as http:
            token = await daemon_login(http, daemon.url, "admin", daemon.admin_password())
            deadline = time.monotonic() + 30
            while (await http.get("/readyz")).status != 200:  # the worker probe takes a moment
                assert time.monotonic() < deadline, daemon.log()
                await asyncio.sleep(0.2)
            limits = resource.prlimit(daemon.process.pid, resource.RLIMIT_FSIZE)
            resource.prlimit(daemon.process.pid, resource.RLIMIT_FSIZE, (0, limits[1]))
            try:
                resp = await http.post("/users", json={"uid": "dora"}, headers=bearer(token))
                await assert_error(resp, 503, "The database cannot be written right now, "
                                              "try again later")
                assert int(resp.headers["Retry-After"]) >= 1
                await assert_error(await http.post("/auth/expire", headers=bearer(token)), 503)
                resp = await http.get("/readyz")
                await assert_error(resp, 503, "Not ready: database not writable")
                assert resp.headers["Retry-After"] == "5"
                # Reads still work: listing users and logging in need no write.
                resp = await http.get("/users", headers=bearer(token))
                assert resp.status == 200
                assert [u["id"] for u in (await resp.json())["users"]] == ["admin"]
                await daemon_login(http, daemon.url, "admin", daemon.admin_password())
            finally:
                resource.prlimit(daemon.process.pid, resource.RLIMIT_FSIZE, limits)
            deadline = time.monotonic() + 5  # a failed probe is trusted for one second
            while (resp := await http.get("/readyz")).status != 200:
                assert time.monotonic() < deadline, await resp.text()
                await asyncio.sleep(0.2)
            resp = await http.post("/users", json={"uid": "dora"}, headers=bearer(token))
            assert resp.status == 200, await resp.text()
            assert (await resp.json())["password"]
        assert "Traceback" not in daemon.log()
    finally:
        daemon.kill()


async def test_the_write_probe_runs_at_most_once_a_second(tmp_path: Path) -> None:
    """Readiness may be polled often: the probe's real write happens at most once per second."""
    path = tmp_path / "probe.db"
    async with Store(path) as store:
        await store.check_writable()
        with sqlite3.connect(path) as db:
            first = db.execute("SELECT at FROM write_probe").fetchone()[0]
        await asyncio.gather(*(store.check_writable() for _ in range(20)))
        with sqlite3.connect(path) as db:
            assert db.execute("SELECT at FROM write_probe").fetchone()[0] == first
        await asyncio.sleep(1.05)
        await store.check_writable()
        with sqlite3.connect(path) as db:
            assert db.execute("SELECT at FROM write_probe").fetchone()[0] > first
