"""Benchmark /speech in every audio format through a real idlakd server, side by side with wav.

Prints figures; it is not a test. Run from the repository root:

    .venv/bin/python bench/bench_formats.py [--repeat 7] [--voice alba|slow] [--before TREE --rounds 3]

It starts `python -m idlakd serve` (the defaults, authorization off; see
bench_speech.py, whose helpers it uses) and, for the eSpeak voice `alba` (or the
stand-in Idlak voice `slow`, 0.1 s of work per sentence), measures the time to the first body byte and the total time of a 1-sentence and
a 20-sentence text in each format, streamed: --repeat requests of each format in a
row (the texts alternating), as a site that uses a format does (a spare ffmpeg,
ffmpeg_spares, then waits for the next one); the figures are medians, and
"first / wav" is each format's median first byte over wav's.

--before TREE: a copy of an earlier tree (e.g. a `git archive` of main) is served too,
its daemon and this tree's alternating for --rounds rounds (so a change in machine load
hits both alike), and the two are printed side by side.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import statistics
import tempfile
from pathlib import Path
from types import ModuleType
from typing import Any, AsyncContextManager, Callable

import aiohttp

from bench_speech import (STANDIN_ID, VOICE_ID, make_standin_voice, run_header, server, speak,
                          text_of)

FORMATS = ("wav", "pcm", "mulaw", "alaw", "opus", "webm", "flac", "aac", "ogg", "mp3")
TEXTS = {"1 sentence": text_of(1), "20 sentences": text_of(20)}
Runs = dict[tuple[str, str], list[tuple[float, float]]]


def bench_speech_of(tree: Path) -> ModuleType:
    """The bench_speech module of another tree (its server() runs that tree's daemon)."""
    spec = importlib.util.spec_from_file_location("bench_speech_before",
                                                  tree / "bench" / "bench_speech.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def measure(base: str, voice_id: str, repeat: int, runs: Runs) -> None:
    """Add (first byte, total) seconds per (format, text) for one voice to runs."""
    async with aiohttp.ClientSession() as session:
        # Warm both workers, and each format's path once (ffmpeg's first start reads its binary).
        await asyncio.gather(*(speak(session, base, text_of(2), voice_id=voice_id)
                               for _ in range(2)))
        for audio_format in FORMATS:
            await speak(session, base, text_of(1), audio_format, voice_id)
        for audio_format in FORMATS:
            for _ in range(repeat):
                for name, text in TEXTS.items():
                    first, total, _size = await speak(session, base, text, audio_format,
                                                      voice_id)
                    runs[audio_format, name].append((first, total))


def medians(runs: Runs) -> dict[tuple[str, str], tuple[float, float]]:
    """Median (first byte, total) per (format, text)."""
    return {key: (statistics.median(r[0] for r in values), statistics.median(r[1] for r in values))
            for key, values in runs.items()}


async def main() -> None:
    """Run the measurement and print one row per format."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--voice", choices=(VOICE_ID, STANDIN_ID), default=VOICE_ID)
    parser.add_argument("--before", type=Path, help="an earlier tree to serve side by side")
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    print(run_header())
    servers: dict[str, Callable[[Path], AsyncContextManager[tuple[str, int]]]] = {
        "this tree": server}
    if args.before is not None:
        servers = {"before": bench_speech_of(args.before).server, "after": server}
    runs: dict[str, Runs] = {name: {(f, t): [] for f in FORMATS for t in TEXTS}
                             for name in servers}
    with tempfile.TemporaryDirectory(prefix="idlakd-bench-voice-") as voice_dir:
        make_standin_voice(Path(voice_dir), 0.1)  # the server's voice list includes it
        for index in range(args.rounds):
            order = list(servers.items())
            if index % 2:
                order.reverse()
            for name, start in order:
                async with start(Path(voice_dir)) as (base, _pid):
                    await measure(base, args.voice, args.repeat, runs[name])
    voice = ("alba (eSpeak NG, 22050 Hz)" if args.voice == VOICE_ID
             else "slow (stand-in Idlak, 16 kHz, 0.1 s per sentence)")
    if args.before is not None:
        side_by_side(voice, args, {name: medians(r) for name, r in runs.items()})
        return
    figures = medians(runs["this tree"])
    print(f"\n{voice}, streamed, defaults; median of {args.repeat}:")
    print(f"| format | {' | '.join(f'{t}: first byte | total | first / wav' for t in TEXTS)} |")
    print("|---" * (1 + 3 * len(TEXTS)) + "|")
    for audio_format in FORMATS:
        cells = []
        for name in TEXTS:
            first, total = figures[audio_format, name]
            ratio = first / figures["wav", name][0]
            cells.append(f"{first * 1000:.1f} ms | {total * 1000:.1f} ms | {ratio:.2f}")
        print(f"| {audio_format} | {' | '.join(cells)} |")


def side_by_side(voice: str, args: Any,
                 figures: dict[str, dict[tuple[str, str], tuple[float, float]]]) -> None:
    """One row per format: first byte and first / wav, before and after."""
    print(f"\n{voice}, streamed, defaults; median of {args.repeat} x {args.rounds} rounds, "
          f"before = {args.before}:")
    heads = " | ".join(f"{t}: first byte before | after | first / wav before | after"
                       for t in TEXTS)
    print(f"| format | {heads} |")
    print("|---" * (1 + 4 * len(TEXTS)) + "|")
    for audio_format in FORMATS:
        cells = []
        for name in TEXTS:
            before, after = (figures[side][audio_format, name][0] for side in ("before", "after"))
            cells.append(f"{before * 1000:.1f} ms | {after * 1000:.1f} ms | "
                         f"{before / figures['before']['wav', name][0]:.2f} | "
                         f"{after / figures['after']['wav', name][0]:.2f}")
        print(f"| {audio_format} | {' | '.join(cells)} |")


if __name__ == "__main__":
    asyncio.run(main())
