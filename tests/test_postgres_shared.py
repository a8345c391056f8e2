"""Two PostgreSQL stores on one database, as two daemons have: what one writes binds the other."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from idlakd.config import DatabaseUrl, load_config
from idlakd.errors import StoreError
from idlakd.models import Job, SynthesisCharge, Usage
from idlakd.store.factory import open_store
from idlakd.store.postgres import PostgresStore
from idlakd.store.sqlite import Store as SQLiteStore
from tests.helpers.postgres import PostgresServer


@pytest.fixture
async def url(postgres_server: PostgresServer) -> DatabaseUrl:
    """A fresh database on the session's server."""
    return DatabaseUrl(await postgres_server.create_database())


def _charge(n: int) -> SynthesisCharge:
    """A charge of 10 characters for alice, the n-th of the test."""
    return SynthesisCharge(id=f"c{n}", uid="alice", day="2026-12-01", minute=100,
                           characters=10, daemon=f"node{n % 2}", started_at=1000.0 + n)


async def test_two_nodes_migrate_once_and_share_one_secret(
        url: DatabaseUrl, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="idlakd.store.postgres")
    a, b = PostgresStore(url, 2), PostgresStore(url, 2)
    await asyncio.gather(a.open(), b.open())
    try:
        migrated = [r.getMessage() for r in caplog.records if "Migrating" in r.getMessage()]
        assert migrated == [f"Migrating database schema to version {n}" for n in range(1, 7)]
        assert await a.schema_version() == await b.schema_version() == 6
        kept = await asyncio.gather(a.keep_secret(b"A" * 40), b.keep_secret(b"B" * 40))
        assert kept[0] == kept[1] and kept[0] in (b"A" * 40, b"B" * 40)
        assert await b.keep_secret(b"C" * 40) == kept[0]  # created once, never replaced
    finally:
        await asyncio.gather(a.close(), b.close())


async def test_a_revocation_and_a_password_change_on_one_node_bind_the_other(
        url: DatabaseUrl) -> None:
    async with PostgresStore(url, 2) as a, PostgresStore(url, 2) as b:
        assert await a.add_user("alice", b"h1", False)
        assert not await b.add_user("alice", b"h2", False)  # one uid, whichever node
        before = await b.token_state("jti-1", "alice")
        assert not before.revoked and before.user is not None
        await a.revoke_token("jti-1", 4e9)
        assert (await b.token_state("jti-1", "alice")).revoked
        assert await b.set_password_hash("alice", b"h3")
        after = await a.token_state("jti-2", "alice")
        assert after.valid_after > before.valid_after  # tokens issued before are dead on a
        assert await a.delete_user("alice") == "ok"
        assert (await b.token_state("jti-2", "alice")).user is None


async def test_the_concurrent_limit_counts_across_nodes(url: DatabaseUrl) -> None:
    limit = 3

    def decide(usage: Usage) -> str | None:
        """Refuse a fourth synthesis running at once."""
        return "busy" if usage.running >= limit else None

    async with PostgresStore(url, 8) as a, PostgresStore(url, 8) as b:
        refusals = await asyncio.gather(*((a if n % 2 else b).charge(_charge(n), 0.0, decide)
                                          for n in range(16)))
        assert refusals.count(None) == limit and refusals.count("busy") == 16 - limit
        usage = await a.usage("alice", "2026-12-01", 100, 0.0)
        assert usage.running == limit and usage.requests == limit
        assert usage.characters == usage.minute_characters == 10 * limit


async def test_job_claims_from_two_nodes_never_take_the_same_job(url: DatabaseUrl) -> None:
    async with PostgresStore(url, 8) as a, PostgresStore(url, 8) as b:
        for n in range(12):
            job = Job(id=f"j{n:02}", uid="alice", voice_id="alba", audio_format="wav",
                      options={}, characters_total=5, created_at=float(n))
            assert await a.create_job(job, "Text.", 0, 0) == "ok"
        claims = await asyncio.gather(*((a if n % 2 else b).claim_job(f"node{n}", 0.0, 10.0)
                                        for n in range(20)))
        taken = [c.id for c in claims if c is not None]
        assert sorted(taken) == [f"j{n:02}" for n in range(12)]  # each once, none left
        owners = {j.id: j.status for j in await b.list_jobs()}
        assert set(owners.values()) == {"running"}


def test_a_url_selects_postgresql_and_never_shows_its_password(tmp_path: Path) -> None:
    secret_url = "postgresql://idlakd:s3cret-pw@db.example:5432/idlakd"
    config = load_config(env={"IDLAKD_DATABASE": secret_url,
                              "IDLAKD_STATE_DIR": str(tmp_path)})
    assert isinstance(config.database, DatabaseUrl) and config.database.url == secret_url
    assert "s3cret" not in f"{config.database} {config.database!r} {config!r}"
    assert str(config.database) == "postgresql://idlakd:***@db.example:5432/idlakd"
    assert config.secret_file is None  # kept in the database, shared by every node
    store = open_store(config)
    assert isinstance(store, PostgresStore) and store.pool_size == 10
    local = load_config(env={"IDLAKD_STATE_DIR": str(tmp_path)})
    assert isinstance(open_store(local), SQLiteStore)
    assert local.secret_file == tmp_path / "secret.key"


async def test_a_refused_connection_is_a_store_error_without_the_password(
        url: DatabaseUrl, postgres_server: PostgresServer,
        caplog: pytest.LogCaptureFixture) -> None:
    wrong = url.url.replace(postgres_server.password, "Wr0ng-pw")
    for bad in (wrong, "postgresql://idlakd:Wr0ng-pw@127.0.0.1:notaport/x"):
        with pytest.raises(StoreError) as failed:
            await PostgresStore(DatabaseUrl(bad), 1).open()
        assert "Wr0ng-pw" not in str(failed.value) and "***" in str(failed.value)
    assert "Wr0ng-pw" not in caplog.text
