"""The `idlakd` command: serve, and voice/user administration on the same database."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import logging.handlers
import queue
import sys
from pathlib import Path
from typing import Awaitable, Callable, Sequence

from idlakd import __version__
from idlakd.accounts import users as accounts
from idlakd.accounts.passwords import Passwords
from idlakd.config import SETTINGS, Config, ConfigError, load_config
from idlakd.errors import StoreError
from idlakd.store.sqlite import Store
from idlakd.voices.definitions import VoiceDefinitionError, voice_from_entry

log = logging.getLogger(__name__)

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class CommandError(Exception):
    """A CLI command failed in an expected way; its message is printed as one line."""


def setup_logging(config: Config) -> logging.handlers.QueueListener:
    """Log to stderr (journald) or to a rotating file, at the configured level, off the loop.

    Every record (an access line per request, each worker stderr line) is only queued by the
    thread that logs it; a listener thread formats and writes it, so a slow disk or a full
    pipe never stalls the event loop. Stop the returned listener to flush it at exit.
    """
    target: logging.Handler
    if config.log_file is not None:
        config.log_file.parent.mkdir(parents=True, exist_ok=True)
        target = logging.handlers.RotatingFileHandler(
            config.log_file, maxBytes=10 * 1024 * 1024, backupCount=5, encoding="utf-8")
    else:
        target = logging.StreamHandler(sys.stderr)
    target.setFormatter(logging.Formatter(LOG_FORMAT))
    records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    root = logging.getLogger()
    root.handlers[:] = [logging.handlers.QueueHandler(records)]
    root.setLevel(config.log_level)
    # aiohttp's own access logger duplicates ours (and would log query strings).
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    # At DEBUG aiosqlite logs every statement with its parameters: password hashes, token ids.
    logging.getLogger("aiosqlite").setLevel(max(logging.INFO, root.level))
    listener = logging.handlers.QueueListener(records, target)
    listener.start()
    return listener


def serve(config: Config) -> int:
    """Run the daemon until SIGINT/SIGTERM."""
    from idlakd.web.server import run_daemon

    listener = setup_logging(config)
    try:
        log.info("idlakd %s starting on %s:%d (database %s)",
                 __version__, config.host, config.port, config.database)
        asyncio.run(run_daemon(config))
    finally:
        listener.stop()  # writes what is still queued
    return 0


async def _with_store(config: Config, action: Callable[[Store], Awaitable[int]]) -> int:
    """Open the database, run one command against it, close it."""
    async with Store(config.database) as store:
        return await action(store)


async def _with_accounts(config: Config,
                         action: Callable[[Store, Passwords], Awaitable[int]]) -> int:
    """Open the database and one bcrypt thread, run one user command, close both."""
    passwords = Passwords(config.bcrypt_rounds, threads=1)
    try:
        async with Store(config.database) as store:
            return await action(store, passwords)
    finally:
        await passwords.close()


def _voice_add(config: Config, args: argparse.Namespace) -> int:
    """idlakd voice add -g GENDER -n NAME -i ID -d DIR [-e ENGINE] [...]."""
    entry = {"vid": args.id, "name": args.name, "gender": args.gender, "engine": args.engine,
             "dir": args.dir or "", "lang": args.lang, "acc": args.acc}
    if args.options:
        try:
            entry["options"] = json.loads(args.options)
        except ValueError:
            raise CommandError("--options is not valid JSON") from None
    try:
        voice = voice_from_entry(entry, config, base=Path.cwd())
    except VoiceDefinitionError as exc:
        raise CommandError(str(exc)) from None

    async def action(store: Store) -> int:
        await store.upsert_voices([voice])
        print(f"Voice '{voice.id}' ({voice.name}, {voice.language}-{voice.accent}, "
              f"{voice.gender}, {voice.engine}) saved")
        return 0

    return asyncio.run(_with_store(config, action))


def _voice_remove(config: Config, args: argparse.Namespace) -> int:
    """idlakd voice remove -i ID."""
    async def action(store: Store) -> int:
        if not await store.delete_voice(args.id):
            raise CommandError(f"voice '{args.id}' does not exist")
        print(f"Voice '{args.id}' removed")
        return 0

    return asyncio.run(_with_store(config, action))


def _voice_list(config: Config, args: argparse.Namespace) -> int:
    """idlakd voice list."""
    async def action(store: Store) -> int:
        for v in await store.list_voices():
            print(f"{v.id}\t{v.name}\t{v.language}\t{v.accent}\t{v.gender}\t{v.engine}\t"
                  f"{v.directory or '-'}")
        return 0

    return asyncio.run(_with_store(config, action))


def _user_add(config: Config, args: argparse.Namespace) -> int:
    """idlakd user add UID [--admin]: prints the generated password once."""
    async def action(store: Store, passwords: Passwords) -> int:
        try:
            # The same rule as POST /users (stored normalised), checked before any hashing.
            created = await accounts.create_user(store, passwords, args.uid, args.admin)
        except accounts.UserExists as exc:
            raise CommandError(f"user '{exc.uid}' already exists") from None
        except accounts.BadUid as exc:
            raise CommandError(exc.message) from None
        print(f"<User {created.uid}:{created.password}:{created.admin}>")
        return 0

    return asyncio.run(_with_accounts(config, action))


def _user_list(config: Config, args: argparse.Namespace) -> int:
    """idlakd user list."""
    async def action(store: Store) -> int:
        for user in await store.list_users():
            print(f"{user.uid}\t{'admin' if user.admin else 'user'}")
        return 0

    return asyncio.run(_with_store(config, action))


def _user_passwd(config: Config, args: argparse.Namespace) -> int:
    """idlakd user passwd UID: a new generated password (recovery of a lost admin password)."""
    async def action(store: Store, passwords: Passwords) -> int:
        missing = CommandError(f"user '{args.uid}' does not exist")
        user = await store.get_user(args.uid)  # for the admin flag it prints
        if user is None:
            raise missing
        try:
            password = await accounts.reset_password(store, passwords, args.uid)
        except accounts.NoSuchUser:  # deleted meanwhile
            raise missing from None
        print(f"<User {user.uid}:{password}:{user.admin}>")
        return 0

    return asyncio.run(_with_accounts(config, action))


def _user_delete(config: Config, args: argparse.Namespace) -> int:
    """idlakd user delete UID (the last admin stays)."""
    async def action(store: Store) -> int:
        try:
            await accounts.delete_user(store, args.uid)
        except accounts.NoSuchUser:
            raise CommandError(f"user '{args.uid}' does not exist") from None
        except accounts.LastAdmin:
            raise CommandError(
                f"user '{args.uid}' is the only admin; make another admin first") from None
        print(f"User '{args.uid}' has been deleted")
        return 0

    return asyncio.run(_with_store(config, action))


def _backup(config: Config, args: argparse.Namespace) -> int:
    """idlakd backup FILE: a consistent copy of the live database (SQLite online backup)."""
    from idlakd.store.backup import BackupError, backup_database

    try:
        size = backup_database(config.database, args.file)
    except BackupError as exc:
        raise CommandError(str(exc)) from None
    print(f"Backed up {config.database} to {args.file} ({size} bytes); "
          f"keep {config.secret_file} too, or every issued token becomes invalid on restore")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = argparse.ArgumentParser(prog="idlakd", description="Idlak speech synthesis server")
    parser.add_argument("--version", action="version", version=f"idlakd {__version__}")
    parser.add_argument("-c", "--config", type=Path, help="INI config file (see etc/idlakd.conf)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override one setting (repeatable); keys: "
                             + ", ".join(s.name for s in SETTINGS))
    sub = parser.add_subparsers(dest="command")

    p_serve = sub.add_parser("serve", help="run the daemon (the default)")
    p_serve.add_argument("--host")
    p_serve.add_argument("--port")

    p_voice = sub.add_parser("voice", help="add, remove or list voices")
    voice_sub = p_voice.add_subparsers(dest="action", required=True)
    p_add = voice_sub.add_parser("add", help="add or update a voice")
    p_add.add_argument("-i", "--id", required=True, help="voice id")
    p_add.add_argument("-n", "--name", required=True, help="display name")
    p_add.add_argument("-g", "--gender", required=True, choices=["male", "female"])
    p_add.add_argument("-d", "--dir", help="voice directory (its voice.conf gives lng= and acc=)")
    p_add.add_argument("-e", "--engine", default="tangle", choices=["tangle", "espeak", "command"])
    p_add.add_argument("-l", "--lang", help="language (default: lng= of voice.conf)")
    p_add.add_argument("-a", "--acc", help="accent (default: acc= of voice.conf)")
    p_add.add_argument("-o", "--options", help="engine options as a JSON object")
    p_add.set_defaults(run=_voice_add)
    p_remove = voice_sub.add_parser("remove", help="remove a voice")
    p_remove.add_argument("-i", "--id", required=True)
    p_remove.set_defaults(run=_voice_remove)
    voice_sub.add_parser("list", help="list voices").set_defaults(run=_voice_list)

    p_user = sub.add_parser("user", help="manage users from the shell")
    user_sub = p_user.add_subparsers(dest="action", required=True)
    p_uadd = user_sub.add_parser("add", help="create a user; prints its password once")
    p_uadd.add_argument("uid")
    p_uadd.add_argument("--admin", action="store_true")
    p_uadd.set_defaults(run=_user_add)
    user_sub.add_parser("list", help="list users").set_defaults(run=_user_list)
    p_pw = user_sub.add_parser("passwd", help="generate a new password for a user")
    p_pw.add_argument("uid")
    p_pw.set_defaults(run=_user_passwd)
    p_del = user_sub.add_parser("delete", help="delete a user")
    p_del.add_argument("uid")
    p_del.set_defaults(run=_user_delete)

    p_backup = sub.add_parser("backup", help="copy the live database to FILE (safe while serving)")
    p_backup.add_argument("file", type=Path)
    p_backup.set_defaults(run=_backup)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `idlakd` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    overrides: dict[str, str] = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--set expects KEY=VALUE, got {item!r}")
        overrides[key.strip()] = value
    if args.command == "serve":
        if args.host:
            overrides["host"] = args.host
        if args.port:
            overrides["port"] = args.port
    try:
        config = load_config(args.config, overrides=overrides)
        if args.command in (None, "serve"):
            return serve(config)
        logging.basicConfig(level=logging.WARNING, format=LOG_FORMAT)
        result: int = args.run(config, args)
        return result
    except ConfigError as exc:
        print(f"idlakd: configuration error: {exc}", file=sys.stderr)
        return 2
    except (CommandError, StoreError) as exc:
        print(f"idlakd: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"idlakd: {exc}", file=sys.stderr)
        return 1
