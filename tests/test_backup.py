"""`idlakd backup FILE`: a consistent, private copy of the live database, also while it is written."""

from __future__ import annotations

import asyncio
import sqlite3
import stat
from pathlib import Path

import pytest

from idlakd.store.backup import BackupError, backup_database
from idlakd.cli.main import main
from idlakd.store.sqlite import Store


def _users(path: Path) -> list[str]:
    """The uids stored in a database file."""
    with sqlite3.connect(path) as db:
        return [row[0] for row in db.execute("SELECT uid FROM users ORDER BY uid")]


async def test_backup_while_the_database_is_open_and_written(tmp_path: Path) -> None:
    source, target = tmp_path / "state" / "idlakd.db", tmp_path / "backup.db"
    async with Store(source) as store:
        await store.add_user("alice", b"hash-a", admin=True)
        await store.revoke_token("some-jti", 4_000_000_000.0)
        # The daemon keeps its connection (WAL mode) open while the copy is made.
        size = await asyncio.to_thread(backup_database, source, target)
        await store.add_user("bob", b"hash-b", admin=False)
        assert size == target.stat().st_size > 0
        assert _users(target) == ["alice"]
        await asyncio.to_thread(backup_database, source, target)  # overwrites atomically
    assert _users(target) == ["alice", "bob"]
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    with sqlite3.connect(target) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
        assert db.execute("SELECT jti FROM revoked_tokens").fetchall() == [("some-jti",)]
        assert db.execute("PRAGMA user_version").fetchone()[0] >= 1
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []
    # A restored copy opens as a normal database.
    async with Store(target) as restored:
        assert [u.uid for u in await restored.list_users()] == ["alice", "bob"]


def test_backup_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state = tmp_path / "state"
    assert main(["--set", f"state_dir={state}", "--set", "bcrypt_rounds=4",
                 "user", "add", "carol", "--new-database"]) == 0
    target = tmp_path / "copy.db"
    assert main(["--set", f"state_dir={state}", "backup", str(target)]) == 0
    out = capsys.readouterr().out
    assert "Backed up" in out and "secret.key" in out
    assert _users(target) == ["carol"]


def test_backup_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(BackupError, match="does not exist"):
        backup_database(tmp_path / "missing.db", tmp_path / "b.db")
    source = tmp_path / "db.sqlite"
    sqlite3.connect(source).close()
    with pytest.raises(BackupError, match="must not be the database itself"):
        backup_database(source, source)
    with pytest.raises(BackupError, match="does not exist"):
        backup_database(source, tmp_path / "no" / "dir" / "b.db")
    assert main(["--set", f"state_dir={tmp_path / 'empty'}", "backup", str(tmp_path / "b.db")]) == 1
    assert "does not exist" in capsys.readouterr().err
