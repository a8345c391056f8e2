"""`idlakd user add|list|passwd|delete|unlock` and `idlakd admin grant|revoke`, through accounts.users."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from typing import Iterator

from idlakd.accounts import users as accounts
from idlakd.accounts.passwords import Passwords
from idlakd.cli.database import with_accounts, with_store
from idlakd.cli.errors import CommandError
from idlakd.cli.quotas import add_quota_parsers
from idlakd.config import Config
from idlakd.store.factory import Store


def _missing(uid: str) -> CommandError:
    """The error of a uid that names nobody."""
    return CommandError(f"user '{uid}' does not exist")


def _only_admin(uid: str) -> CommandError:
    """The error of a change that would leave no admin."""
    return CommandError(f"user '{uid}' is the only admin; make another admin first")


@contextlib.contextmanager
def _about_user(uid: str) -> Iterator[None]:
    """Turn the account errors of a change to one user into the command's one-line errors."""
    try:
        yield
    except accounts.NoSuchUser:
        raise _missing(uid) from None
    except accounts.LastAdmin:
        raise _only_admin(uid) from None


def user_add(config: Config, args: argparse.Namespace) -> int:
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

    return asyncio.run(with_accounts(config, action))


def user_list(config: Config, args: argparse.Namespace) -> int:
    """idlakd user list."""
    async def action(store: Store) -> int:
        for user in await store.list_users():
            print(f"{user.uid}\t{'admin' if user.admin else 'user'}")
        return 0

    return asyncio.run(with_store(config, action))


def user_passwd(config: Config, args: argparse.Namespace) -> int:
    """idlakd user passwd UID: a new generated password (recovery of a lost admin password)."""
    async def action(store: Store, passwords: Passwords) -> int:
        user = await store.get_user(args.uid)  # for the admin flag it prints
        if user is None:
            raise _missing(args.uid)
        with _about_user(args.uid):  # deleted meanwhile
            password = await accounts.reset_password(store, passwords, args.uid)
        print(f"<User {user.uid}:{password}:{user.admin}>")
        return 0

    return asyncio.run(with_accounts(config, action))


def user_delete(config: Config, args: argparse.Namespace) -> int:
    """idlakd user delete UID (the last admin stays)."""
    async def action(store: Store) -> int:
        with _about_user(args.uid):
            await accounts.delete_user(store, args.uid)
        print(f"User '{args.uid}' has been deleted")
        return 0

    return asyncio.run(with_store(config, action))


def user_unlock(config: Config, args: argparse.Namespace) -> int:
    """idlakd user unlock UID: forget a user's failed logins, in running daemons too."""
    async def action(store: Store) -> int:
        try:
            await accounts.unlock_user(store, args.uid)
        except accounts.NoSuchUser:
            raise _missing(args.uid) from None
        # Daemons keep failures in memory but read the unlock instant on every login check.
        print(f"User '{args.uid}' is unlocked: failed logins until now are forgotten "
              "(running daemons apply it on the next login)")
        return 0

    return asyncio.run(with_store(config, action))


def admin_set(config: Config, args: argparse.Namespace) -> int:
    """idlakd admin grant|revoke UID (the last admin stays)."""
    grant = args.action == "grant"

    async def action(store: Store) -> int:
        with _about_user(args.uid):
            await accounts.set_admin(store, args.uid, grant)
        print(f"User '{args.uid}' is {'now' if grant else 'no longer'} an admin")
        return 0

    return asyncio.run(with_store(config, action))


def add_user_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser],
                     parents: list[argparse.ArgumentParser]) -> None:
    """`idlakd user ...` and `idlakd admin ...`."""
    p_user = sub.add_parser("user", help="manage users from the shell")
    user_sub = p_user.add_subparsers(dest="action", required=True)
    p_uadd = user_sub.add_parser("add", parents=parents,
                                 help="create a user; prints its password once")
    p_uadd.add_argument("uid")
    p_uadd.add_argument("--admin", action="store_true")
    p_uadd.set_defaults(run=user_add)
    user_sub.add_parser("list", parents=parents, help="list users").set_defaults(
        run=user_list, read_only=True)
    p_pw = user_sub.add_parser("passwd", parents=parents,
                               help="generate a new password for a user")
    p_pw.add_argument("uid")
    p_pw.set_defaults(run=user_passwd)
    p_del = user_sub.add_parser("delete", parents=parents, help="delete a user")
    p_del.add_argument("uid")
    p_del.set_defaults(run=user_delete)
    p_unlock = user_sub.add_parser("unlock", parents=parents,
                                   help="forget a user's failed logins (running daemons too)")
    p_unlock.add_argument("uid")
    p_unlock.set_defaults(run=user_unlock)
    add_quota_parsers(user_sub, parents)

    p_admin = sub.add_parser("admin", help="give or take a user's admin rights")
    admin_sub = p_admin.add_subparsers(dest="action", required=True)
    for action, what in (("grant", "make a user an admin"),
                         ("revoke", "make an admin a plain user (never the last admin)")):
        p_set = admin_sub.add_parser(action, parents=parents, help=what)
        p_set.add_argument("uid")
        p_set.set_defaults(run=admin_set)
