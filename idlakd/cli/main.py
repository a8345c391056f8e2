"""The `idlakd` command: parse, load the config, check the database, dispatch to a command."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Sequence

from idlakd import __version__
from idlakd.cli.database import announce, backup, refuse_root, require_database
from idlakd.cli.errors import CommandError, Refused
from idlakd.cli.keys import add_key_parser
from idlakd.cli.serving import LOG_FORMAT, add_serve_parser, serve, setup_logging
from idlakd.cli.users import add_user_parsers
from idlakd.cli.voices import add_voice_parser
from idlakd.config import SETTINGS, ConfigError, load_config
from idlakd.errors import StoreError

__all__ = ["LOG_FORMAT", "build_parser", "main", "setup_logging"]

# Commands that open no Store of their own: serve creates its database, backup checks its own.
NO_STORE_COMMANDS = (None, "serve", "backup")


def _set_option() -> argparse.ArgumentParser:
    """--set, accepted after a command too (`idlakd serve --set port=8081`)."""
    options = argparse.ArgumentParser(add_help=False)
    # Its own dest: a subcommand's default would otherwise replace the --set values given
    # before the command.
    options.add_argument("--set", dest="set_after", action="append", default=argparse.SUPPRESS,
                         metavar="KEY=VALUE", help="override one setting (repeatable)")
    return options


def _store_options() -> argparse.ArgumentParser:
    """Options of every command that works on the database."""
    options = argparse.ArgumentParser(add_help=False)
    options.add_argument("--new-database", action="store_true",
                         help="create the database if there is none (first install); "
                              "otherwise a missing database is an error")
    return options


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = argparse.ArgumentParser(prog="idlakd", description="Idlak speech synthesis server")
    parser.add_argument("--version", action="version", version=f"idlakd {__version__}")
    parser.add_argument("-c", "--config", type=Path, help="INI config file (see etc/idlakd.conf)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override one setting (repeatable); keys: "
                             + ", ".join(s.name for s in SETTINGS))
    sub = parser.add_subparsers(dest="command")
    set_option = _set_option()
    store_commands = [set_option, _store_options()]

    add_serve_parser(sub, [set_option])
    add_voice_parser(sub, store_commands)
    add_user_parsers(sub, store_commands)
    add_key_parser(sub, store_commands)

    p_backup = sub.add_parser("backup", parents=[set_option],
                              help="copy the live database to FILE (safe while serving)")
    p_backup.add_argument("file", type=Path)
    p_backup.set_defaults(run=backup)
    return parser


def _overrides(parser: argparse.ArgumentParser, args: argparse.Namespace) -> dict[str, str]:
    """The settings given by --set (before or after the command) and serve's --host/--port."""
    overrides: dict[str, str] = {}
    for item in [*args.set, *getattr(args, "set_after", [])]:
        key, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--set expects KEY=VALUE, got {item!r}")
        overrides[key.strip()] = value
    if args.command == "serve":
        if args.host:
            overrides["host"] = args.host
        if args.port:
            overrides["port"] = args.port
    return overrides


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `idlakd` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    overrides = _overrides(parser, args)
    try:
        config = load_config(args.config, overrides=overrides)
        announce(config)
        if args.command in (None, "serve"):
            return serve(config)
        logging.basicConfig(level=logging.WARNING, format=LOG_FORMAT)
        # A PostgreSQL database has no file here to protect or to find.
        if args.command not in NO_STORE_COMMANDS and isinstance(config.database, Path):
            if not getattr(args, "read_only", False):
                refuse_root(config.database)
            if not getattr(args, "new_database", False):
                require_database(config.database)
        result: int = args.run(config, args)
        return result
    except ConfigError as exc:
        print(f"idlakd: configuration error: {exc}", file=sys.stderr)
        return 2
    except Refused as exc:
        print(f"idlakd: {exc}", file=sys.stderr)
        return 2
    except (CommandError, StoreError) as exc:
        print(f"idlakd: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"idlakd: {exc}", file=sys.stderr)
        return 1
