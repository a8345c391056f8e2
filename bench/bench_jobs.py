"""Benchmark: /speech's time to first byte with and without a long job running.

Prints figures; it is not a test. Run from the repository root:

    .venv/bin/python bench/bench_jobs.py [--requests 100] [--job-characters 300000]

It starts `python -m idlakd serve` (the defaults, authorization off; see bench_speech.py,
whose helpers it uses), measures the time to the first body byte of one-sentence /speech
requests (eSpeak voice alba, one at a time, a short random pause between them) with no job,
then again while a job of --job-characters characters runs (also alba), the two phases
alternating in rounds so a change in machine load hits both alike. The issue's bound: p99
with a job <= 1.5 x p99 without.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import tempfile
from pathlib import Path

import aiohttp

from bench_speech import VOICE_ID, make_standin_voice, run_header, server, speak, text_of
from load import percentile

ROUNDS = 4


async def first_bytes(session: aiohttp.ClientSession, base: str, count: int) -> list[float]:
    """Seconds to the first byte of count one-sentence requests, one after another."""
    found = []
    for _ in range(count):
        ttfb, _total, _size = await speak(session, base, text_of(1))
        found.append(ttfb)
        await asyncio.sleep(random.uniform(0.0, 0.05))
    return found


async def job_running(session: aiohttp.ClientSession, base: str, characters: int) -> str:
    """Queue a job of about characters characters and wait until it runs; its status URL."""
    text = (text_of(20) + " ") * (characters // len(text_of(20)) + 1)
    async with session.post(f"{base}/v1/jobs", json={"voice_id": VOICE_ID,
                                                     "text": text[:characters]}) as response:
        if response.status != 202:
            raise RuntimeError(f"/v1/jobs answered {response.status}: {await response.text()}")
        url = base + (await response.json())["status_url"]
    while True:
        async with session.get(url) as response:
            job = await response.json()
        if job["status"] == "running" and job["progress"]["characters_done"] > 0:
            return url
        if job["status"] not in ("queued", "running"):
            raise RuntimeError(f"the job ended before the measurement: {job}")
        await asyncio.sleep(0.05)


async def measure(base: str, requests: int, characters: int) -> tuple[list[float], list[float]]:
    """(first bytes without a job, first bytes with one), over ROUNDS alternating rounds."""
    idle: list[float] = []
    busy: list[float] = []
    per_round = max(1, requests // ROUNDS)
    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(speak(session, base, text_of(2)) for _ in range(2)))  # warm
        for _ in range(ROUNDS):
            idle += await first_bytes(session, base, per_round)
            url = await job_running(session, base, characters)
            busy += await first_bytes(session, base, per_round)
            async with session.get(url) as response:
                if (await response.json())["status"] != "running":
                    print("warning: the job ended during the round; use more --job-characters")
            async with session.delete(url) as response:
                response.raise_for_status()
    return idle, busy


async def main() -> None:
    """Run the measurement and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--job-characters", type=int, default=300_000)
    args = parser.parse_args()
    print(run_header())
    with tempfile.TemporaryDirectory(prefix="idlakd-bench-voice-") as voice_dir:
        make_standin_voice(Path(voice_dir), 0.1)  # the server's voice list includes it
        async with server(Path(voice_dir)) as (base, _pid):
            idle, busy = await measure(base, args.requests, args.job_characters)
    print(f"\n/speech, 1 sentence, alba (eSpeak NG), wav, {len(idle)} requests each:")
    print("| | p50 first byte | p90 | p99 |")
    print("|---|---|---|---|")
    for name, values in (("no job", idle), ("a job running", busy)):
        print(f"| {name} | {statistics.median(values) * 1000:.1f} ms | "
              f"{percentile(values, 90) * 1000:.1f} ms | {percentile(values, 99) * 1000:.1f} ms |")
    print(f"\np99 with a job / p99 without: {percentile(busy, 99) / percentile(idle, 99):.2f}"
          " (bound: 1.5)")


if __name__ == "__main__":
    asyncio.run(main())
