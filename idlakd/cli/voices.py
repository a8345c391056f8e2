"""`idlakd voice add|remove|list`: voices in the database a running daemon serves."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Final

from idlakd.cli.database import with_store
from idlakd.cli.errors import CommandError
from idlakd.config import Config
from idlakd.store.factory import Store
from idlakd.voices.definitions import VoiceDefinitionError, voice_from_entry

HEADER: Final = "ID\tNAME\tLANGUAGE\tACCENT\tGENDER\tENGINE\tDIRECTORY"


def voice_add(config: Config, args: argparse.Namespace) -> int:
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
        await store.upsert_voices([voice])  # an explicit add: a removed voice comes back
        print(f"Voice '{voice.id}' ({voice.name}, {voice.language}-{voice.accent}, "
              f"{voice.gender}, {voice.engine}) saved")
        return 0

    return asyncio.run(with_store(config, action))


def voice_remove(config: Config, args: argparse.Namespace) -> int:
    """idlakd voice remove -i ID: gone for good, voiceconfig.json included."""
    async def action(store: Store) -> int:
        if not await store.delete_voice(args.id):
            raise CommandError(f"voice '{args.id}' does not exist")
        print(f"Voice '{args.id}' removed; voiceconfig.json will not bring it back; "
              "`idlakd voice add` does")
        return 0

    return asyncio.run(with_store(config, action))


def voice_list(config: Config, args: argparse.Namespace) -> int:
    """idlakd voice list: a header line, then one voice a line; removed ones named on stderr."""
    async def action(store: Store) -> int:
        print(HEADER)
        for v in await store.list_voices():
            print(f"{v.id}\t{v.name}\t{v.language}\t{v.accent}\t{v.gender}\t{v.engine}\t"
                  f"{v.directory or '-'}")
        removed = await store.removed_voice_ids()
        if removed:
            print(f"idlakd: removed, not loaded from voiceconfig.json: {', '.join(removed)}",
                  file=sys.stderr)
        return 0

    return asyncio.run(with_store(config, action))


def add_voice_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser],
                     parents: list[argparse.ArgumentParser]) -> None:
    """`idlakd voice ...`."""
    p_voice = sub.add_parser("voice", help="add, remove or list voices")
    voice_sub = p_voice.add_subparsers(dest="action", required=True)
    p_add = voice_sub.add_parser("add", parents=parents, help="add or update a voice")
    p_add.add_argument("-i", "--id", required=True, help="voice id")
    p_add.add_argument("-n", "--name", required=True, help="display name")
    p_add.add_argument("-g", "--gender", required=True, choices=["male", "female"])
    p_add.add_argument("-d", "--dir", help="voice directory (its voice.conf gives lng= and acc=)")
    p_add.add_argument("-e", "--engine", default="tangle",
                       choices=["tangle", "espeak", "command", "piper"])
    p_add.add_argument("-l", "--lang", help="language (default: lng= of voice.conf)")
    p_add.add_argument("-a", "--acc", help="accent (default: acc= of voice.conf)")
    p_add.add_argument("-o", "--options", help="engine options as a JSON object")
    p_add.set_defaults(run=voice_add)
    p_remove = voice_sub.add_parser(
        "remove", parents=parents,
        help="remove a voice (voiceconfig.json does not bring it back; voice add does)")
    p_remove.add_argument("-i", "--id", required=True)
    p_remove.set_defaults(run=voice_remove)
    voice_sub.add_parser("list", parents=parents, help="list voices").set_defaults(
        run=voice_list, read_only=True)
