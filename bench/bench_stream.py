"""GET /v1/speech/stream: sentence latency under an LLM-like producer, and how fast clear stops the audio.

    .venv/bin/python bench/bench_stream.py [--repeat 5] [--standin-delay 0.1]

Printed figures, not a test. It starts the real daemon (as bench_speech.py does) and talks
to it over a WebSocket. A producer sends the text in deltas of 3-6 characters every 20 ms
(an LLM's pace). For each sentence: the time from the delta that completes it (the one that
brings the space after its full stop; for the last sentence, the end message) to the first
byte of its audio, against the engine's own time for that sentence (the same engine loaded
in this process, synthesising the sentence directly). Then: the time from clear to the last
frame of the old audio, and to cleared.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import aiohttp

from bench_speech import (SAMPLE_RATE, SENTENCES, STANDIN_ID, STANDIN_RATE, STANDIN_ROOT,
                          VOICE_ID, VOICE_OPTIONS, load_engine, make_standin_voice, server)

DELTA_EVERY = 0.020
TEXT = " ".join(SENTENCES)


def deltas(text: str, rng: random.Random) -> list[str]:
    """The text cut into pieces of 3-6 characters."""
    pieces = []
    i = 0
    while i < len(text):
        size = rng.randint(3, 6)
        pieces.append(text[i:i + size])
        i += size
    return pieces


def completing_deltas(pieces: list[str], text: str) -> list[int]:
    """For each sentence but the last, the index of the delta that brings the space after it."""
    ends = []
    position = 0
    for sentence in SENTENCES[:-1]:
        position = text.index(sentence, position) + len(sentence)
        ends.append(position + 1)  # the space after the full stop completes it
    found = []
    sent = 0
    for index, piece in enumerate(pieces):
        sent += len(piece)
        while len(found) < len(ends) and sent >= ends[len(found)]:
            found.append(index)
    return found


async def one_run(base: str, voice_id: str, seed: int) -> list[float]:
    """One streamed text: per sentence, seconds from its completing delta to its first audio byte."""
    pieces = deltas(TEXT, random.Random(seed))
    completing = completing_deltas(pieces, TEXT)
    sent_at: list[float] = []
    arrivals: list[tuple[float, int]] = []  # (time, bytes so far) after each binary frame
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(f"{base}/v1/speech/stream") as ws:
            await ws.send_json({"type": "start", "voice_id": voice_id})

            async def produce() -> None:
                for piece in pieces:
                    await ws.send_json({"type": "text", "text": piece})
                    sent_at.append(time.perf_counter())
                    await asyncio.sleep(DELTA_EVERY)
                await ws.send_json({"type": "end"})
                sent_at.append(time.perf_counter())

            producer = asyncio.create_task(produce())
            total = 0
            async for msg in ws:
                if msg.type is aiohttp.WSMsgType.BINARY:
                    total += len(msg.data)
                    arrivals.append((time.perf_counter(), total))
                elif msg.type is aiohttp.WSMsgType.TEXT:
                    event = json.loads(msg.data)
                    if event["type"] == "error":
                        raise RuntimeError(event["message"])
            await producer
    completed = [sent_at[i] for i in completing] + [sent_at[-1]]
    latencies = []
    for when in completed:
        # The producer is slower than synthesis: the sentence before has been sent whole by
        # now, so the first frame after this moment is this sentence's first byte.
        first = next(t for t, _size in arrivals if t > when)
        latencies.append(first - when)
    return latencies


async def clear_run(base: str, voice_id: str) -> tuple[float, float]:
    """Seconds from clear to the last frame of the old audio, and to cleared."""
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(f"{base}/v1/speech/stream") as ws:
            await ws.send_json({"type": "start", "voice_id": voice_id})
            await ws.send_json({"type": "text", "text": TEXT * 4 + " "})
            while (await ws.receive()).type is not aiohttp.WSMsgType.BINARY:
                pass
            cleared_at = time.perf_counter()
            await ws.send_json({"type": "clear"})
            last = cleared_at
            async for msg in ws:
                if msg.type is aiohttp.WSMsgType.BINARY:
                    last = time.perf_counter()
                elif json.loads(msg.data)["type"] == "cleared":
                    break
            answered = time.perf_counter()
            await ws.send_json({"type": "end"})
            async for _msg in ws:
                pass
    return last - cleared_at, answered - cleared_at


def direct_times(synthesize: Callable[[str], Any], repeat: int) -> list[float]:
    """Median seconds of the engine's own synthesis of each sentence."""
    medians = []
    for sentence in SENTENCES:
        runs = []
        for _ in range(repeat):
            start = time.perf_counter()
            synthesize(sentence)
            runs.append(time.perf_counter() - start)
        medians.append(statistics.median(runs))
    return medians


async def main() -> None:
    """Run both voices, print the table and the clear figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--standin-delay", type=float, default=0.1)
    args = parser.parse_args()
    print(f"bench_stream: {platform.machine()}, {platform.python_version()}, "
          f"aiohttp {aiohttp.__version__}; deltas of 3-6 characters every "
          f"{DELTA_EVERY * 1000:.0f} ms; {len(SENTENCES)} sentences; repeat {args.repeat}")
    with tempfile.TemporaryDirectory(prefix="idlakd-bench-voice-") as voice_dir:
        standin_dir = Path(voice_dir)
        make_standin_voice(standin_dir, args.standin_delay)
        engines = {
            VOICE_ID: (load_engine("espeak", "", VOICE_OPTIONS, None), SAMPLE_RATE, "eSpeak NG"),
            STANDIN_ID: (load_engine("tangle", str(standin_dir), {}, STANDIN_ROOT), STANDIN_RATE,
                         f"Idlak stand-in ({args.standin_delay * 1000:.0f} ms/sentence)"),
        }
        async with server(standin_dir) as (base, _pid):
            for voice_id, (engine, _rate, label) in engines.items():
                await one_run(base, voice_id, 0)  # warm the voice's workers
                latencies: list[list[float]] = []
                for run in range(args.repeat):
                    latencies.append(await one_run(base, voice_id, run + 1))
                direct = direct_times(lambda text: b"".join(engine.synthesize(text)),
                                      args.repeat)
                print(f"\n{label} ({voice_id}): completing delta -> first audio byte, "
                      "median of runs, against the engine's own time")
                print("| sentence | first byte | engine | ratio |")
                print("|---|---|---|---|")
                ratios = []
                for index, own in enumerate(direct):
                    first = statistics.median(run[index] for run in latencies)
                    ratios.append(first / own)
                    print(f"| {index + 1} | {first * 1000:.1f} ms | {own * 1000:.1f} ms | "
                          f"{first / own:.2f} |")
                print(f"median ratio {statistics.median(ratios):.2f}, worst {max(ratios):.2f}")
                clears = [await clear_run(base, voice_id) for _ in range(args.repeat)]
                last = [c[0] * 1000 for c in clears]
                answered = [c[1] * 1000 for c in clears]
                print(f"clear -> last old audio frame: median {statistics.median(last):.1f} ms, "
                      f"max {max(last):.1f} ms; clear -> cleared: median "
                      f"{statistics.median(answered):.1f} ms, max {max(answered):.1f} ms")


if __name__ == "__main__":
    asyncio.run(main())
