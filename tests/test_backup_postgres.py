"""`idlakd backup FILE` on PostgreSQL: a pg_dump that pg_restore brings back into a new database
with the same users, keys, voices and job audio, and whose password never shows."""

from __future__ import annotations

import asyncio
import logging
import os
import stat
import subprocess
import time
from pathlib import Path
from typing import Any, Awaitable, Callable

import pytest
from aiohttp.test_utils import TestClient

from idlakd.cli.main import main
from idlakd.config import Config, DatabaseUrl
from idlakd.store.factory import store_at
from idlakd.store.pg_backup import split_password
from tests.helpers.app import bearer, login, make_config
from tests.helpers.postgres import PostgresServer, server_bin_dir

REMOVED_VOICE = "callum"


@pytest.fixture
async def config(tmp_path: Path, postgres_server: PostgresServer) -> Config:
    """The app on a fresh PostgreSQL database."""
    return make_config(tmp_path, database=await postgres_server.create_database())


async def _done_job_audio(client: TestClient[Any, Any], token: str) -> tuple[str, bytes]:
    """Submit a short job, wait until it is done; its id and audio."""
    resp = await client.post("/v1/jobs", json={"voice_id": "alba", "text": "Kept in the dump."},
                             headers=bearer(token))
    assert resp.status == 202, await resp.text()
    job_id = str((await resp.json())["id"])
    deadline = time.monotonic() + 60
    while (await (await client.get(f"/v1/jobs/{job_id}", headers=bearer(token))).json()
           )["status"] != "done":
        assert time.monotonic() < deadline
        await asyncio.sleep(0.1)
    resp = await client.get(f"/v1/jobs/{job_id}/audio", headers=bearer(token))
    assert resp.status == 200
    audio = await resp.read()
    assert len(audio) > 1000
    return job_id, audio


async def test_backup_restores_into_a_new_database(
        client: TestClient[Any, Any], admin_token: str, config: Config, tmp_path: Path,
        postgres_server: PostgresServer, capsys: pytest.CaptureFixture[str],
        caplog: pytest.LogCaptureFixture,
        started_app_factory: Callable[[Config], Awaitable[TestClient[Any, Any]]]) -> None:
    caplog.set_level(logging.DEBUG)
    resp = await client.post("/users", json={"uid": "bob"}, headers=bearer(admin_token))
    password = (await resp.json())["password"]
    token = await login(client, "bob", password)
    resp = await client.post("/auth/keys", json={"name": "backup"}, headers=bearer(token))
    assert resp.status == 200, await resp.text()
    key = (await resp.json())["key"]
    job_id, audio = await _done_job_audio(client, key)
    assert isinstance(config.database, DatabaseUrl)
    async with store_at(config.database, 2) as store:
        assert await store.delete_voice(REMOVED_VOICE)
        voices = await store.list_voices()

    capsys.readouterr()
    dump = tmp_path / "idlakd.dump"
    assert main(["--set", f"database={config.database.url}", "backup", str(dump)]) == 0
    out, err = capsys.readouterr()
    assert "Backed up" in out and "token secret is in the dump" in out
    assert postgres_server.password not in out + err + caplog.text
    assert stat.S_IMODE(dump.stat().st_mode) == 0o600
    assert dump.read_bytes().startswith(b"PGDMP")

    # Restore as docs/operations.md says: pg_restore into a new, empty database.
    new_url = await postgres_server.create_database()
    bare_url, new_password = split_password(new_url)
    bin_dir = server_bin_dir()
    assert bin_dir is not None
    subprocess.run([str(bin_dir / "pg_restore"), "--no-owner", "--exit-on-error",
                    f"--dbname={bare_url}", str(dump)],
                   env={**os.environ, "PGPASSWORD": new_password or ""}, check=True,
                   capture_output=True, timeout=60)

    restored = await started_app_factory(make_config(tmp_path / "restored", database=new_url))
    assert "<User admin:" not in capsys.readouterr().out  # its users came back: no new admin
    new_token = await login(restored, "bob", password)  # the same password, the same secret
    resp = await restored.get("/auth/keys", headers=bearer(key))
    assert resp.status == 200 and [k["name"] for k in (await resp.json())["keys"]] == ["backup"]
    resp = await restored.get(f"/v1/jobs/{job_id}/audio", headers=bearer(new_token))
    assert resp.status == 200 and await resp.read() == audio
    resp = await restored.get("/auth/keys", headers=bearer(token))  # a token issued before
    assert resp.status == 200
    async with store_at(DatabaseUrl(new_url), 2) as store:
        assert await store.list_voices() == voices
        assert REMOVED_VOICE in await store.removed_voice_ids()


def test_backup_failure_hides_the_password(tmp_path: Path, postgres_server: PostgresServer,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    url = postgres_server.url("no_such_database")
    assert main(["--set", f"database={url}", "backup", str(tmp_path / "x.dump")]) == 1
    out, err = capsys.readouterr()
    assert "pg_dump failed" in err and "no_such_database" in err
    assert postgres_server.password not in out + err
    assert list(tmp_path.iterdir()) == []
