"""Benchmark synthesis throughput of one node and of two nodes behind HAProxy on one PostgreSQL.

Prints figures; it is not a test. Run from the repository root:

    .venv/bin/python bench/bench_scale.py [--clients 8] [--seconds 20]

It starts a throwaway PostgreSQL server and Debian's haproxy through the tests' helpers
(tests/helpers/postgres.py running_postgres, tests/helpers/haproxy.py start_haproxy: the same
servers the scenario tests run, so this script imports tests.helpers), and the idlakd nodes
through bench_speech.py's server() (authorization off, database=the PostgreSQL URL, no
quotas: every client is the one anonymous user). Then,
for one node and for two nodes behind HAProxy (each in its own run, same database):
- N clients each send 5-sentence /speech requests (alba, wav) one after the other for a
  fixed time; audio seconds made per wall second, in total and per node (X-Served-By);
- the eSpeak engine alone in this process, on one core, on the same text: the per-core rate
  that bounds a node's throughput (K nodes of C cores: about K x C x this rate at most).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import AsyncIterator

import aiohttp

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from bench_speech import (SAMPLE_RATE, VOICE_ID, VOICE_OPTIONS, make_standin_voice,  # noqa: E402
                          run_header, server, text_of)
from idlakd.worker.engines import load_engine  # noqa: E402
from tests.helpers.haproxy import start_haproxy  # noqa: E402
from tests.helpers.postgres import running_postgres  # noqa: E402

SENTENCES = 5


def engine_rate(seconds: float) -> tuple[float, int]:
    """The engine alone on one core: (audio seconds per wall second, texts) over about seconds."""
    engine = load_engine("espeak", "", VOICE_OPTIONS, None)
    try:
        text = text_of(SENTENCES)
        b"".join(engine.synthesize("Warm up."))
        audio, texts, start = 0.0, 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            # Sentence by sentence, as a worker says them.
            for sentence in text.split(". "):
                audio += len(b"".join(engine.synthesize(sentence))) / 2 / SAMPLE_RATE
            texts += 1
        return audio / (time.perf_counter() - start), texts
    finally:
        engine.close()


async def one_speech(session: aiohttp.ClientSession, base: str, text: str) -> tuple[str, float]:
    """One /speech request: (the node that answered, audio seconds received)."""
    async with session.post(f"{base}/speech", json={
            "voice_id": VOICE_ID, "text": text, "audio_format": "wav"}) as response:
        if response.status != 200:
            raise RuntimeError(f"/speech answered {response.status}: {await response.text()}")
        size = 0
        while chunk := await response.content.readany():
            size += len(chunk)
        return response.headers.get("X-Served-By", "?"), (size - 44) / 2 / SAMPLE_RATE


async def load(base: str, clients: int, seconds: float) -> tuple[float, dict[str, list[float]]]:
    """clients loops of requests for seconds: (wall seconds, audio seconds of each request by node)."""
    text = text_of(SENTENCES)
    served: dict[str, list[float]] = collections.defaultdict(list)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
        # Warm every worker of every node before the clock starts.
        await asyncio.gather(*(one_speech(session, base, text) for _ in range(2 * clients)))
        start = time.perf_counter()

        async def client() -> None:
            while time.perf_counter() - start < seconds:
                node, audio = await one_speech(session, base, text)
                served[node].append(audio)

        await asyncio.gather(*(client() for _ in range(clients)))
        return time.perf_counter() - start, served


@contextlib.asynccontextmanager
async def nodes(count: int, standin: Path, database: str,
                balancer_dir: Path) -> AsyncIterator[str]:
    """count nodes on database behind one HAProxy; yields the balancer's URL."""
    async with contextlib.AsyncExitStack() as stack:
        ports = []
        for _ in range(count):  # one after the other: the first creates the schema
            base, _pid = await stack.enter_async_context(server(
                standin, database=database, quota_concurrent="0",
                quota_chars_per_minute="0", quota_chars_per_day="0"))
            ports.append(int(base.rsplit(":", 1)[1]))
        balancer = await start_haproxy(balancer_dir, [(f"node{i + 1}", port)
                                                      for i, port in enumerate(ports)])
        try:
            for i in range(count):  # both checked up before the load starts
                await balancer.wait_state(f"node{i + 1}", "UP")
            yield balancer.url
        finally:
            balancer.stop()


async def main() -> None:
    """Run both configurations and print them side by side."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()
    print(run_header())
    per_core, texts = engine_rate(5.0)
    print(f"\neSpeak alone in this process, one core, {SENTENCES}-sentence text sentence by "
          f"sentence: {per_core:.1f} s of audio per s ({texts} texts in 5 s); this machine has "
          f"{os.cpu_count()} cores")
    results: dict[int, tuple[float, dict[str, list[float]]]] = {}
    with running_postgres() as postgres, tempfile.TemporaryDirectory() as top:
        database = await postgres.create_database()
        standin = Path(top) / "standin"
        make_standin_voice(standin, 0.1)  # server() wants one; not used here
        for count in (1, 2):
            async with nodes(count, standin, database, Path(top) / f"haproxy{count}") as url:
                results[count] = await load(url, args.clients, args.seconds)
    print(f"\n{args.clients} clients, {SENTENCES}-sentence /speech requests (alba, wav) for "
          f"{args.seconds:g} s through HAProxy, one PostgreSQL:")
    print(f"  {'':28s}{'1 node':>18s}{'2 nodes':>18s}")
    totals = {c: sum(sum(a) for a in by_node.values()) / wall
              for c, (wall, by_node) in results.items()}
    requests = {c: sum(len(a) for a in by_node.values()) for c, (_w, by_node) in results.items()}
    print(f"  {'audio s per s (total)':28s}{totals[1]:18.1f}{totals[2]:18.1f}")
    print(f"  {'requests':28s}{requests[1]:18d}{requests[2]:18d}")
    for name in ("node1", "node2"):
        cells = []
        for count in (1, 2):
            wall, by_node = results[count]
            audio = by_node.get(name, [])
            cells.append(f"{sum(audio) / wall:6.1f} s/s {len(audio):4d}r" if audio else "-")
        print(f"  {name + ' (audio s per s, requests)':28s}{cells[0]:>18s}{cells[1]:>18s}")
    print(f"  {'2 nodes / 1 node':28s}{'':18s}{totals[2] / totals[1]:18.2f}")
    print(f"  {'total / engine per core':28s}{totals[1] / per_core:18.2f}"
          f"{totals[2] / per_core:18.2f}")


if __name__ == "__main__":
    asyncio.run(main())
