"""Benchmark /speech in every audio format through a real idlakd server, side by side with wav.

Prints figures; it is not a test. Run from the repository root:

    .venv/bin/python bench/bench_formats.py [--repeat 7] [--voice alba|slow]

It starts `python -m idlakd serve` (the defaults, authorization off; see
bench_speech.py, whose helpers it uses) and, for the eSpeak voice `alba` (or the
stand-in Idlak voice `slow`, 0.1 s of work per sentence), measures the time to the first body byte and the total time of a 1-sentence and
a 20-sentence text in each format, streamed. Formats are interleaved within each
round, so a change in machine load hits all of them alike; the figures are
medians, and "first / wav" is each format's median first byte over wav's.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
from pathlib import Path

import aiohttp

from bench_speech import (STANDIN_ID, VOICE_ID, make_standin_voice, run_header, server, speak,
                          text_of)

FORMATS = ("wav", "pcm", "mulaw", "alaw", "opus", "webm", "flac", "aac", "ogg", "mp3")
TEXTS = {"1 sentence": text_of(1), "20 sentences": text_of(20)}


async def measure(base: str, voice_id: str,
                  repeat: int) -> dict[tuple[str, str], tuple[float, float]]:
    """Median (first byte, total) seconds per (format, text) for one voice."""
    runs: dict[tuple[str, str], list[tuple[float, float]]] = {
        (f, t): [] for f in FORMATS for t in TEXTS}
    async with aiohttp.ClientSession() as session:
        # Warm both workers, and each format's path once (ffmpeg's first start reads its binary).
        await asyncio.gather(*(speak(session, base, text_of(2), voice_id=voice_id)
                               for _ in range(2)))
        for audio_format in FORMATS:
            await speak(session, base, text_of(1), audio_format, voice_id)
        for _ in range(repeat):
            for name, text in TEXTS.items():
                for audio_format in FORMATS:
                    first, total, _size = await speak(session, base, text, audio_format,
                                                      voice_id)
                    runs[audio_format, name].append((first, total))
    return {key: (statistics.median(r[0] for r in values), statistics.median(r[1] for r in values))
            for key, values in runs.items()}


async def main() -> None:
    """Run the measurement and print one row per format."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--voice", choices=(VOICE_ID, STANDIN_ID), default=VOICE_ID)
    args = parser.parse_args()
    print(run_header())
    with tempfile.TemporaryDirectory(prefix="idlakd-bench-voice-") as voice_dir:
        make_standin_voice(Path(voice_dir), 0.1)  # the server's voice list includes it
        async with server(Path(voice_dir)) as (base, _pid):
            figures = await measure(base, args.voice, args.repeat)
    voice = ("alba (eSpeak NG, 22050 Hz)" if args.voice == VOICE_ID
             else "slow (stand-in Idlak, 16 kHz, 0.1 s per sentence)")
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


if __name__ == "__main__":
    asyncio.run(main())
