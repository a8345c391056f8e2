"""`idlakd user limits|usage`: a user's quota overrides and usage, through accounts.quotas."""

from __future__ import annotations

import argparse
import asyncio
from typing import Final

from idlakd.accounts.quotas import LIMIT_FIELDS, Quotas
from idlakd.accounts.users import NoSuchUser
from idlakd.cli.database import with_store
from idlakd.cli.errors import CommandError
from idlakd.config import Config
from idlakd.errors import InvalidRequest
from idlakd.models import Limits
from idlakd.store.factory import Store

#: What a limit flag takes besides a number: back to the configured default.
DEFAULT_WORD: Final = "default"


def _limit_value(text: str) -> int | None:
    """A limit flag's value: a whole number >= 0, or 'default' (None)."""
    if text == DEFAULT_WORD:
        return None
    if not (text.isascii() and text.isdigit()):
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0 or '{DEFAULT_WORD}'")
    return int(text)


def _print_limits(limits: Limits, overrides: Limits, defaults: Limits) -> None:
    """One line per limit: name, value in force (0: none), and where it comes from."""
    for name in LIMIT_FIELDS:
        value, override = getattr(limits, name), getattr(overrides, name)
        source = "default" if override is None else f"set (default {getattr(defaults, name)})"
        print(f"{name}\t{value}\t{source}")


async def _missing_user(store: Store, uid: str) -> None:
    """Raise the CLI's error when uid names nobody."""
    if await store.get_user(uid) is None:
        raise CommandError(f"user '{uid}' does not exist")


def user_limits(config: Config, args: argparse.Namespace) -> int:
    """idlakd user limits UID [--chars-per-minute N] [--chars-per-day N] [--concurrent N]."""
    changes = {name: getattr(args, name) for name in LIMIT_FIELDS
               if getattr(args, name) is not _UNSET}

    async def action(store: Store) -> int:
        quotas = Quotas.from_config(store, config)
        try:
            if changes:
                limits, overrides = await quotas.set_limits(args.uid, changes)
            else:
                await _missing_user(store, args.uid)
                limits, overrides = await quotas.limits(args.uid)
        except NoSuchUser:
            raise CommandError(f"user '{args.uid}' does not exist") from None
        except InvalidRequest as exc:
            raise CommandError(exc.message) from None
        _print_limits(limits, overrides, quotas.defaults)
        return 0

    return asyncio.run(with_store(config, action))


def user_usage(config: Config, args: argparse.Namespace) -> int:
    """idlakd user usage UID: today's (UTC) usage, this minute's characters, the limits."""
    async def action(store: Store) -> int:
        await _missing_user(store, args.uid)
        quotas = Quotas.from_config(store, config)
        report = await quotas.report(args.uid)
        usage = report.usage
        for name, value in (("day", usage.day), ("requests", usage.requests),
                            ("characters", usage.characters),
                            ("audio_seconds", f"{usage.audio_seconds:.3f}"),
                            ("minute_characters", usage.minute_characters),
                            ("running", usage.running)):
            print(f"{name}\t{value}")
        _print_limits(report.limits, report.overrides, quotas.defaults)
        return 0

    return asyncio.run(with_store(config, action))


# Tells a limit flag that was not given from one given as 'default' (None).
_UNSET: Final = object()


def add_quota_parsers(user_sub: argparse._SubParsersAction[argparse.ArgumentParser],
                      parents: list[argparse.ArgumentParser]) -> None:
    """`idlakd user limits` and `idlakd user usage`."""
    p_limits = user_sub.add_parser(
        "limits", parents=parents,
        help="show a user's quota limits, or set them (N >= 0, 0: no limit; 'default': reset)")
    p_limits.add_argument("uid")
    for name in LIMIT_FIELDS:
        p_limits.add_argument(f"--{name.replace('_', '-')}", dest=name, type=_limit_value,
                              default=_UNSET, metavar="N")
    p_limits.set_defaults(run=user_limits)
    p_usage = user_sub.add_parser("usage", parents=parents,
                                  help="show a user's usage today (UTC) and limits")
    p_usage.add_argument("uid")
    p_usage.set_defaults(run=user_usage, read_only=True)
