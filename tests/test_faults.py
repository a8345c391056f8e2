"""Faults against the whole daemon: processes killed from outside, stalls, garbage, disconnects,
slow readers, a locked database, and SIGKILL during writes. After each: the next request works
and no child process is left behind.

tests/test_pool.py, tests/test_worker.py and tests/test_service.py cover the same faults one
layer down (a pool, a worker, a bare SynthService app) and mostly as faults the worker causes
itself; here the real `idlakd serve` (auth, store, routes, signals) is hit from the outside.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, AsyncIterator

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from daemon_helpers import Daemon, SLOW_WAV, start_daemon, wait_listening
from idlakd import store as store_module
from tests.conftest import REPO, assert_error, bearer, login, make_config

STANDIN_ROOT = REPO / "tests" / "pyidlak_standin"


# The database locked by another writer (in-process app: the store is what is tested)

def _hold_write_lock(database: Path) -> sqlite3.Connection:
    """What the CLI does while it writes: an open BEGIN IMMEDIATE transaction."""
    db = sqlite3.connect(database, isolation_level=None, timeout=10)
    db.execute("BEGIN IMMEDIATE")
    db.execute("INSERT INTO revoked_tokens (jti, exp) VALUES ('cli-holds-lock', 0)")
    return db


async def _timed(coro: Any) -> tuple[int, float, Any]:
    """Status, seconds taken and JSON body (or None) of one request."""
    start = time.monotonic()
    resp = await coro
    body = await resp.json() if resp.status not in (204,) else None
    return resp.status, time.monotonic() - start, body


async def test_database_locked_by_another_writer(client: TestClient[Any, Any], admin_token: str,
                                                 config: Any) -> None:
    """A write waits for the lock and then succeeds; reads meanwhile are not held up by it."""
    lock = _hold_write_lock(config.database)
    try:
        write = asyncio.create_task(_timed(client.post("/users", json={"uid": "bob"},
                                                       headers=bearer(admin_token))))
        await asyncio.sleep(0.3)  # the write is now waiting inside SQLite's busy handler
        # Reads (and token checks, which read) keep answering while the writer waits.
        for path in ("/voices", "/languages", "/users"):
            status, took, _ = await _timed(client.get(path, headers=bearer(admin_token)))
            assert status == 200 and took < 1.0, (path, status, took)
        await asyncio.sleep(1.5)
        assert not write.done()
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    status, took, body = await write
    assert status == 200 and body["uid"] == "bob", body
    assert 1.5 < took < 10
    resp = await client.get("/users", headers=bearer(admin_token))
    assert {"id": "bob", "admin": False} in (await resp.json())["users"]


async def test_database_locked_past_busy_timeout_is_503(
        tmp_path: Path, started_app_factory: Any, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Held longer than busy_timeout: a JSON 503 with Retry-After (not a 500); then all is well."""
    monkeypatch.setattr(store_module, "BUSY_TIMEOUT_MS", 500)
    config = make_config(tmp_path)
    client: TestClient[Any, Any] = await started_app_factory(config)
    password = capsys.readouterr().out.split("<User admin:")[1].split(":True>")[0]
    token = await login(client, "admin", password)
    lock = _hold_write_lock(config.database)
    try:
        resp = await client.post("/users", json={"uid": "bob"}, headers=bearer(token))
        await assert_error(resp, 503, "Server is busy, try again later")
        assert int(resp.headers["Retry-After"]) >= 1
        resp = await client.post("/auth/expire", headers=bearer(token))
        await assert_error(resp, 503)
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    # The refused revocation did not happen; now it does, and bob can be created.
    assert (await client.post("/users", json={"uid": "bob"}, headers=bearer(token))).status == 200
    assert (await client.post("/auth/expire", headers=bearer(token))).status == 200
    await assert_error(await client.get("/users", headers=bearer(token)), 401,
                       "Access token has expired")
