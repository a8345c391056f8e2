"""`idlakd backup FILE`: a consistent copy of the live database through SQLite's online backup API."""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import tempfile
from pathlib import Path
from typing import Final

log = logging.getLogger(__name__)

# Copy in steps so a long copy of a big file lets the daemon's writes through between steps.
PAGES_PER_STEP: Final = 1024
BUSY_TIMEOUT_SECONDS: Final = 30.0


class BackupError(Exception):
    """The backup could not be made; the message says why."""


def backup_database(source: Path, target: Path) -> int:
    """Copy source (possibly in use by the daemon) to target atomically, 0600; return its size."""
    if not source.is_file():
        raise BackupError(f"database {source} does not exist")
    owner = source.stat().st_uid
    if os.geteuid() == 0 and owner != 0:
        # root would leave root-owned -wal/-shm files the daemon's user cannot open.
        raise BackupError(f"run this as the database's owner (uid {owner}), e.g. "
                          "sudo -u idlakd idlakd --config /etc/idlakd/idlakd.conf backup FILE")
    target = target.expanduser()
    if target.resolve() == source.resolve():
        raise BackupError("the backup file must not be the database itself")
    directory = target.parent if str(target.parent) else Path(".")
    if not directory.is_dir():
        raise BackupError(f"directory {directory} does not exist")
    # Write next to the target and rename, so a crash never leaves a half backup under its name.
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=directory)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        os.chmod(tmp, 0o600)  # it holds password hashes
        # Read-only: the backup never changes the live file (as_uri escapes odd characters).
        with contextlib.closing(sqlite3.connect(
                source.resolve().as_uri() + "?mode=ro", uri=True,
                timeout=BUSY_TIMEOUT_SECONDS)) as src, \
                contextlib.closing(sqlite3.connect(tmp)) as dst:
            src.backup(dst, pages=PAGES_PER_STEP)
            # The copy is a plain rollback-journal file: one self-contained file to carry around.
            dst.execute("PRAGMA journal_mode = DELETE")
            row = dst.execute("PRAGMA integrity_check").fetchone()
            if row is None or row[0] != "ok":
                raise BackupError(f"the copy failed its integrity check: {row}")
        os.replace(tmp, target)
    except sqlite3.Error as exc:
        raise BackupError(f"backup of {source} failed: {exc}") from exc
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return target.stat().st_size
