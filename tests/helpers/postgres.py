"""A throwaway PostgreSQL server for the tests: Debian's server binaries, a temporary data
directory, a unix socket there and a loopback TCP port, run as an unprivileged user."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import glob
import itertools
import os
import pwd
import re
import secrets
import shutil
import socket
import sqlite3
import subprocess
import tempfile
import uuid
from pathlib import Path
from typing import Any, Iterator

import asyncpg

from idlakd.config import DatabaseUrl
from idlakd.store.pg_backup import pg_dump_binary, split_password

# initdb and postgres refuse to run as root; as root the server runs as this system user.
SERVER_USER = "nobody"
SUPERUSER = "idlakd_test"


def server_bin_dir() -> Path | None:
    """The newest Debian PostgreSQL server binaries (/usr/lib/postgresql/<v>/bin), or None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: int(Path(p).parent.parent.name))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _free_port() -> int:
    """A loopback TCP port nobody listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclasses.dataclass(frozen=True)
class PostgresServer:
    """A running server: where it listens and the superuser's password."""

    port: int
    password: str

    def url(self, database: str = "postgres") -> str:
        """The TCP URL of one database (password authentication, as a real deployment)."""
        return f"postgresql://{SUPERUSER}:{self.password}@127.0.0.1:{self.port}/{database}"

    async def create_database(self) -> str:
        """A fresh, empty database; its URL."""
        name = f"t_{uuid.uuid4().hex[:16]}"
        conn = await asyncpg.connect(self.url())
        try:
            await conn.execute(f"CREATE DATABASE {name} TEMPLATE template0")
        finally:
            await conn.close()
        return self.url(name)


def _as_server_user(command: list[str]) -> list[str]:
    """command run as SERVER_USER when we are root, else as ourselves."""
    if os.geteuid() != 0:
        return command
    return ["runuser", "-u", SERVER_USER, "--", *command]


@contextlib.contextmanager
def running_postgres() -> Iterator[PostgresServer]:
    """Start a server in a temporary directory; stop it and delete everything after."""
    bin_dir = server_bin_dir()
    if bin_dir is None:
        raise RuntimeError("PostgreSQL server binaries not found (apt-get install postgresql)")
    # Not under pytest's tmp_path: that is 0700 root's, and the server user must reach it.
    top = Path(tempfile.mkdtemp(prefix="idlakd-pg-"))
    data, run = top / "data", top / "run"
    run.mkdir()
    password = secrets.token_urlsafe(16)
    pwfile = top / "pw"
    pwfile.write_text(password + "\n")
    if os.geteuid() == 0:
        user = pwd.getpwnam(SERVER_USER)
        for path in (top, run, pwfile):
            os.chown(path, user.pw_uid, user.pw_gid)
    port = _free_port()
    try:
        subprocess.run(_as_server_user([
            str(bin_dir / "initdb"), "-D", str(data), "-U", SUPERUSER, f"--pwfile={pwfile}",
            "--auth-local=trust", "--auth-host=scram-sha-256", "--no-sync", "-E", "UTF8",
            "--locale=C.UTF-8"]), check=True, capture_output=True, timeout=60)
        options = (f"-k {run} -p {port} -h 127.0.0.1 -c fsync=off -c full_page_writes=off "
                   "-c synchronous_commit=off -c max_connections=200")
        subprocess.run(_as_server_user([
            str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(top / "log"), "-o", options,
            "-w", "-t", "30", "start"]), check=True, capture_output=True, timeout=60)
        try:
            yield PostgresServer(port, password)
        finally:
            subprocess.run(_as_server_user([
                str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"]),
                capture_output=True, timeout=60)
    finally:
        shutil.rmtree(top, ignore_errors=True)


# The suite's store (pytest --store=postgresql): the server, and the database of each state
# directory, so that configs made again on one directory (a restart) find the same database.
_suite_server: PostgresServer | None = None
_suite_databases: dict[Path, str] = {}


def use_for_suite(server: PostgresServer | None) -> None:
    """Give every config the tests make a PostgreSQL database on server (None: SQLite again)."""
    global _suite_server
    _suite_server = server
    _suite_databases.clear()


def suite_database(state_dir: Path) -> str | None:
    """The URL of state_dir's database when the suite runs on PostgreSQL, else None."""
    if _suite_server is None:
        return None
    key = state_dir.resolve()
    if key not in _suite_databases:
        # Called from sync helpers, often inside a running loop: create it on another thread.
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            _suite_databases[key] = pool.submit(
                asyncio.run, _suite_server.create_database()).result()
    return _suite_databases[key]


def state_env(state_dir: Path) -> dict[str, str]:
    """The environment that points a CLI or daemon at state_dir (and at its suite database)."""
    env = {"IDLAKD_STATE_DIR": str(state_dir)}
    url = suite_database(state_dir)
    if url is not None:
        env["IDLAKD_DATABASE"] = url
    return env


def run_sql(database: Path | DatabaseUrl, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    """One statement (`?` placeholders) on a store's database, as an operator would run it
    (sqlite3 on the file, or a PostgreSQL connection); its rows."""
    if isinstance(database, DatabaseUrl):
        numbers = itertools.count(1)
        statement = re.sub(r"\?", lambda _: f"${next(numbers)}", sql)

        async def run(url: str) -> list[tuple[Any, ...]]:
            conn = await asyncpg.connect(url)
            try:
                return [tuple(row) for row in await conn.fetch(statement, *params)]
            finally:
                await conn.close()

        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            return pool.submit(asyncio.run, run(database.url)).result()
    with contextlib.closing(sqlite3.connect(database, isolation_level=None)) as db:
        return db.execute(sql, params).fetchall()


def dump_text(database: Path | DatabaseUrl) -> str:
    """Everything a store's database holds, as SQL text (sqlite3's iterdump, or pg_dump)."""
    if isinstance(database, DatabaseUrl):
        bare, password = split_password(database.url)
        return subprocess.run(
            [str(pg_dump_binary()), "--data-only", "--no-password", f"--dbname={bare}"],
            env=os.environ | {"PGPASSWORD": password or ""}, capture_output=True, text=True,
            check=True, timeout=60).stdout
    with contextlib.closing(sqlite3.connect(database)) as db:
        return "\n".join(db.iterdump())
