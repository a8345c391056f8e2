"""`idlakd backup FILE` on PostgreSQL: a pg_dump (custom format) whose password never shows."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Final
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

from idlakd.store.backup import BackupError

# What every pg_dump custom-format archive starts with.
ARCHIVE_MAGIC: Final = b"PGDMP"


def pg_dump_binary() -> Path:
    """The newest Debian pg_dump (/usr/lib/postgresql/<v>/bin), else the one on PATH."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_dump"),
                   key=lambda p: _version(Path(p).parent.parent.name))
    if found:
        return Path(found[-1])
    on_path = shutil.which("pg_dump")
    if on_path is None:
        raise BackupError("pg_dump not found; install it (apt-get install postgresql-client)")
    return Path(on_path)


def _version(name: str) -> tuple[int, ...]:
    """'15' or '9.6' as a sortable tuple (a non-numeric directory sorts first)."""
    try:
        return tuple(int(part) for part in name.split("."))
    except ValueError:
        return (0,)


def split_password(url: str) -> tuple[str, str | None]:
    """The URL without its password (user part or ?password=), and that password."""
    parts = urlsplit(url)
    password = unquote(parts.password) if parts.password is not None else None
    netloc = parts.netloc
    if parts.password is not None:
        userinfo, _, hostinfo = netloc.rpartition("@")
        netloc = f"{userinfo.split(':', 1)[0]}@{hostinfo}"
    query = []
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key.lower() == "password":
            password = value
        else:
            query.append((key, value))
    return urlunsplit((parts.scheme, netloc, parts.path, urlencode(query), parts.fragment)), password


def dump_database(url: str, target: Path) -> int:
    """pg_dump url to target atomically (custom format, 0600, no owners); return its size."""
    target = target.expanduser()
    directory = target.parent if str(target.parent) else Path(".")
    if not directory.is_dir():
        raise BackupError(f"directory {directory} does not exist")
    bare_url, password = split_password(url)
    env = dict(os.environ)
    if password is not None:
        # Only the child's environment: never argv (ps shows it) nor a log line.
        env["PGPASSWORD"] = password
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=directory)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        os.chmod(tmp, 0o600)  # it holds password hashes and the token secret
        done = subprocess.run(
            [str(pg_dump_binary()), "--format=custom", "--no-owner", "--no-password",
             f"--file={tmp}", f"--dbname={bare_url}"],
            env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            message = done.stderr.strip() or f"exit status {done.returncode}"
            if password:
                message = message.replace(password, "***")
            raise BackupError(f"pg_dump failed: {message}")
        with tmp.open("rb") as archive:
            if archive.read(len(ARCHIVE_MAGIC)) != ARCHIVE_MAGIC:
                raise BackupError("pg_dump wrote no custom-format archive")
        os.replace(tmp, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return target.stat().st_size
