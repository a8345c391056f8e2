"""Which database a command works on, the checks before it is opened, and `idlakd backup`."""

from __future__ import annotations

import argparse
import os
import pwd
import sys
from pathlib import Path
from typing import Awaitable, Callable, Final

from idlakd.accounts.passwords import Passwords
from idlakd.config import Config, DatabaseUrl
from idlakd.store.factory import Store, open_store
from idlakd.cli.errors import CommandError, Refused

# What the documented install uses (docs/operations.md, idlakd.service).
SERVICE_USER: Final = "idlakd"
SERVICE_CONFIG: Final = "/etc/idlakd/idlakd.conf"


def announce(config: Config) -> None:
    """Say which database this command uses (stderr: stdout stays the command's output)."""
    print(f"idlakd: database {config.database}", file=sys.stderr, flush=True)


def run_as_hint(user: str = SERVICE_USER) -> str:
    """How to run a command as the user who owns the state."""
    return f"run as the service user: sudo -u {user} idlakd --config {SERVICE_CONFIG} ..."


def _user_name(uid: int) -> str:
    """The login name of a uid, or the number when it has none."""
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def refuse_root(database: Path) -> None:
    """As root, refuse to change another user's state: root-owned files would lock the service out.

    SQLite creates -wal/-shm files (and the CLI may create the database) owned by whoever
    runs it; the daemon's user could then no longer open them.
    """
    if os.geteuid() != 0:
        return
    for path in (database.parent, database):
        try:
            owner = path.stat().st_uid
        except FileNotFoundError:
            continue
        if owner != 0:
            name = _user_name(owner)
            raise Refused(f"refusing to run as root: {path} belongs to {name} (uid {owner}) and "
                          f"files root leaves there would lock the service out; "
                          f"{run_as_hint(name)}")


def require_database(database: Path) -> None:
    """Refuse to create a database by accident (a wrong --config or state directory)."""
    if not database.exists():
        raise Refused(f"no database at {database}; is this the right --config? "
                      f"{run_as_hint()} (`idlakd serve` creates the database on its first "
                      "start; --new-database creates it here on purpose)")


async def with_store(config: Config, action: Callable[[Store], Awaitable[int]]) -> int:
    """Open the database, run one command against it, close it."""
    async with open_store(config) as store:
        return await action(store)


async def with_accounts(config: Config,
                        action: Callable[[Store, Passwords], Awaitable[int]]) -> int:
    """Open the database and one bcrypt thread, run one user command, close both."""
    passwords = Passwords(config.bcrypt_rounds, threads=1)
    try:
        async with open_store(config) as store:
            return await action(store, passwords)
    finally:
        await passwords.close()


def backup(config: Config, args: argparse.Namespace) -> int:
    """idlakd backup FILE: a consistent copy of the live database (SQLite backup or pg_dump)."""
    from idlakd.store.backup import BackupError, backup_database
    from idlakd.store.pg_backup import dump_database

    try:
        if isinstance(config.database, DatabaseUrl):
            size = dump_database(config.database.url, args.file)
        else:
            size = backup_database(config.database, args.file)
    except BackupError as exc:
        raise CommandError(str(exc)) from None
    # str(config.database) hides a URL's password.
    keep = ("the token secret is in the dump" if config.secret_file is None
            else f"keep {config.secret_file} too, or every issued token becomes invalid on restore")
    print(f"Backed up {config.database} to {args.file} ({size} bytes); {keep}")
    return 0
