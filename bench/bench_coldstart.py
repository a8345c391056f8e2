"""Benchmark cold start: the first /speech after the daemon reports ready, against a warm one.

Prints figures; it is not a test. Run from the repository root:

    .venv/bin/python bench/bench_coldstart.py [--rounds 4] [--warm 5]

Each round starts `python -m idlakd serve` twice, once with prewarm_workers=true and once
with false (the order alternates between rounds, so a change in machine load hits both
alike), waits until /readyz answers 200 ("the daemon reports ready"), then at once sends
the first 1-sentence WAV request to each of three voices in turn: `alba` (eSpeak, the
voice the readiness check speaks a word with when nothing is pre-warmed), `callum`
(another eSpeak voice) and `slow` (the stand-in Idlak voice, 0.1 s of work per sentence;
bench_speech.py). Then `--warm` more requests per voice give the warm figure. Figures are
medians over the rounds; "first / warm" is the target's ratio (goal: at most 1.5).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import aiohttp

from bench_speech import STANDIN_ID, make_standin_voice, run_header, server, speak, text_of

VOICES = ("alba", "callum", STANDIN_ID)
MODES = {"pre-warm on": "true", "pre-warm off": "false"}


async def until_ready(base: str) -> None:
    """Poll /readyz until it answers 200."""
    async with aiohttp.ClientSession() as session:
        for _ in range(1200):
            async with session.get(f"{base}/readyz") as response:
                if response.status == 200:
                    return
            await asyncio.sleep(0.025)
    raise RuntimeError("the server never became ready")


async def one_round(standin: Path, prewarm: str, warm: int
                    ) -> tuple[float, dict[str, float], dict[str, float]]:
    """(seconds from listening to ready, first request per voice, median warm per voice)."""
    text = text_of(1)
    async with server(standin, prewarm_workers=prewarm) as (base, _pid):
        listening = time.perf_counter()
        await until_ready(base)
        ready = time.perf_counter() - listening
        first: dict[str, float] = {}
        later: dict[str, float] = {}
        async with aiohttp.ClientSession() as session:
            for voice in VOICES:
                first[voice] = (await speak(session, base, text, voice_id=voice))[1]
            for voice in VOICES:
                later[voice] = statistics.median(
                    [(await speak(session, base, text, voice_id=voice))[1] for _ in range(warm)])
    return ready, first, later


async def main() -> None:
    """Alternate the two modes for --rounds rounds and print one row per (voice, mode)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--warm", type=int, default=5)
    args = parser.parse_args()
    print(run_header())
    results: dict[str, list[tuple[float, dict[str, float], dict[str, float]]]] = {
        mode: [] for mode in MODES}
    with tempfile.TemporaryDirectory(prefix="idlakd-bench-voice-") as voice_dir:
        standin = Path(voice_dir)
        make_standin_voice(standin, 0.1)
        for index in range(args.rounds):
            order = list(MODES.items())
            if index % 2:
                order.reverse()
            for mode, prewarm in order:
                results[mode].append(await one_round(standin, prewarm, args.warm))
    print(f"\nTotal time of a 1-sentence WAV /speech, medians of {args.rounds} rounds "
          f"(first = the voice's first request after /readyz said 200; warm = median of "
          f"{args.warm} after it)\n")
    print("| voice | mode | listening -> ready | first | warm | first / warm |")
    print("|---|---|---|---|---|---|")
    for voice in VOICES:
        for mode in MODES:
            rounds = results[mode]
            ready = statistics.median(r[0] for r in rounds)
            first = statistics.median(r[1][voice] for r in rounds)
            warm = statistics.median(r[2][voice] for r in rounds)
            ratios = sorted(r[1][voice] / r[2][voice] for r in rounds)
            print(f"| {voice} | {mode} | {ready * 1000:.0f} ms | {first * 1000:.1f} ms | "
                  f"{warm * 1000:.1f} ms | {first / warm:.2f} "
                  f"[{ratios[0]:.2f}–{ratios[-1]:.2f}] |")


if __name__ == "__main__":
    asyncio.run(main())
