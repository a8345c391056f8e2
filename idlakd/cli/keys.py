"""`idlakd key add|list|revoke`: API keys from the shell, through accounts.keys."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

from idlakd.accounts import keys as api_keys
from idlakd.cli.database import with_store
from idlakd.cli.errors import CommandError
from idlakd.config import Config
from idlakd.errors import InvalidRequest, NotFound
from idlakd.store.factory import Store

LIST_HEADER = "ID\tUSER\tNAME\tPREFIX\tCREATED\tLAST USED\tEXPIRES"


def key_add(config: Config, args: argparse.Namespace) -> int:
    """idlakd key add UID NAME [--expires-in-days N]: prints the key once."""
    async def action(store: Store) -> int:
        try:
            created = await api_keys.create_key(store, args.uid, args.name, args.expires_in_days,
                                                config.max_api_keys_per_user, time.time())
        except InvalidRequest as exc:  # no such user, a rule broken, too many keys
            raise CommandError(exc.message) from None
        record = created.record
        expires = api_keys.utc_text(record.expires_at) or "never"
        # The explanation on stderr, the key alone on stdout: `KEY=$(idlakd key add ...)`.
        print(f"API key {record.id} '{record.name}' of '{record.uid}' (expires {expires}); "
              "shown only this once:", file=sys.stderr)
        print(created.key)
        return 0

    return asyncio.run(with_store(config, action))


def key_list(config: Config, args: argparse.Namespace) -> int:
    """idlakd key list [UID]: one user's keys, or everyone's; never the keys themselves."""
    async def action(store: Store) -> int:
        try:
            found = await api_keys.list_keys(store, args.uid)
        except InvalidRequest as exc:
            raise CommandError(exc.message) from None
        now = time.time()
        print(LIST_HEADER)
        for key in found:
            expires = api_keys.utc_text(key.expires_at) or "never"
            if key.expires_at is not None and key.expires_at <= now:
                expires = f"expired {expires}"
            print(f"{key.id}\t{key.uid}\t{key.name}\t{key.prefix}\t"
                  f"{api_keys.utc_text(key.created_at)}\t"
                  f"{api_keys.utc_text(key.last_used_at) or 'never'}\t{expires}")
        return 0

    return asyncio.run(with_store(config, action))


def key_revoke(config: Config, args: argparse.Namespace) -> int:
    """idlakd key revoke ID: the key stops working at once, in every daemon on the database."""
    async def action(store: Store) -> int:
        try:
            revoked = await api_keys.revoke_key(store, args.id, None)
        except NotFound as exc:
            raise CommandError(f"{exc.message}: '{args.id}'") from None
        print(f"API key {revoked.id} '{revoked.name}' of '{revoked.uid}' has been revoked")
        return 0

    return asyncio.run(with_store(config, action))


def add_key_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser],
                   parents: list[argparse.ArgumentParser]) -> None:
    """`idlakd key ...`."""
    p_key = sub.add_parser("key", help="manage API keys from the shell")
    key_sub = p_key.add_subparsers(dest="action", required=True)
    p_add = key_sub.add_parser("add", parents=parents,
                               help="make an API key for a user; prints the key once")
    p_add.add_argument("uid")
    p_add.add_argument("name", help=f"what the key is for (1 to {api_keys.MAX_NAME_LENGTH} "
                                    "printable characters)")
    p_add.add_argument("--expires-in-days", type=int, metavar="N",
                       help=f"the key stops working after N days (1 to {api_keys.MAX_DAYS}; "
                            "default: never)")
    p_add.set_defaults(run=key_add)
    p_list = key_sub.add_parser("list", parents=parents,
                                help="list API keys (of one user, or of everyone)")
    p_list.add_argument("uid", nargs="?")
    p_list.set_defaults(run=key_list, read_only=True)
    p_revoke = key_sub.add_parser("revoke", parents=parents, help="revoke an API key by its id")
    p_revoke.add_argument("id")
    p_revoke.set_defaults(run=key_revoke)
