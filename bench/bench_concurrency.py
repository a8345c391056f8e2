"""Benchmark audio made per second of wall time: 16 clients on /speech against the engine alone on all cores.

Prints figures; it is not a test. Run from the repository root:

    .venv/bin/python bench/bench_concurrency.py [--clients 16] [--seconds 30] [--rounds 1]
        [--before /tmp/before15]

The server (`python -m idlakd serve` with the default settings, authorization and the
per-user quotas off (all clients are one anonymous user); from
this tree, and from --before's tree when given) gets `--clients` keep-alive connections
from wrk, each sending a 5-sentence `/speech` request (alba, eSpeak NG, wav) in a loop for
`--seconds`; audio seconds are counted from the bodies of the 200 answers, every other
status is counted apart (503 is the limiter's deliberate answer; anything else, and any
socket error, is an error). wrk is C, so the load costs the machine little next to a
Python client. "Engine alone" is one process per core, each with eSpeak NG loaded in it,
saying the same 5-sentence text sentence by sentence for the same time. Runs alternate
(engine, before, after, engine, after, before, ...) so the machine's load hits all alike.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from bench_speech import (SAMPLE_RATE, VOICE_ID, VOICE_OPTIONS, make_standin_voice,  # noqa: E402
                          run_header, server, text_of)
from load import children, cpu_seconds  # noqa: E402

# Authorization is off, so every client is the one anonymous user: its per-user quotas (8 at
# once, 100,000 characters a minute) would answer 429 to half the clients. Everything else
# keeps its default (2 workers per voice, 4 chunks at once, 64 waiting).
NO_QUOTAS = {"quota_concurrent": "0", "quota_chars_per_minute": "0"}

# wrk's Lua: POST the text, count statuses and 200 body bytes per thread; done() sums them.
WRK_SCRIPT = """
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args)
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
  wrk.body = args[1]
  ok, other, busy, bytes = 0, 0, 0, 0
end
function response(status, headers, body)
  if status == 200 then ok = ok + 1; bytes = bytes + #body - 44
  elseif status == 503 then busy = busy + 1
  else other = other + 1 end
end
function done(summary, latency, requests)
  local t = {ok = 0, other = 0, busy = 0, bytes = 0}
  for _, thread in ipairs(threads) do
    for k, _ in pairs(t) do t[k] = t[k] + thread:get(k) end
  end
  local e = summary.errors
  io.write(string.format('RESULT {"ok": %d, "busy": %d, "other": %d, "bytes": %d, '
    .. '"socket_errors": %d, "p50_ms": %.1f, "p99_ms": %.1f}\\n', t.ok, t.busy, t.other,
    t.bytes, e.connect + e.read + e.write + e.timeout, latency:percentile(50) / 1000,
    latency:percentile(99) / 1000))
end
"""


def engine_worker(seconds: float, text: str, queue: Any) -> None:
    """One process: eSpeak NG says the text sentence by sentence until seconds pass; puts audio seconds."""
    from idlakd.synth.document import parse
    from idlakd.worker.engines import load_engine

    engine = load_engine("espeak", "", VOICE_OPTIONS, None)
    chunks = [c.text for c in parse(text).chunks]
    for chunk in chunks:  # warm up
        b"".join(engine.synthesize(chunk))
    queue.put("ready")
    size = 0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        for chunk in chunks:
            size += sum(len(pcm) for pcm in engine.synthesize(chunk))
    queue.put(size / 2 / SAMPLE_RATE)
    engine.close()


def engine_alone(processes: int, seconds: float, text: str) -> float:
    """Audio seconds per wall second of `processes` engine processes running at once."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    workers = [context.Process(target=engine_worker, args=(seconds, text, queue))
               for _ in range(processes)]
    for worker in workers:
        worker.start()
    results: list[float] = []
    ready = 0
    start = 0.0
    while len(results) < processes:
        item = queue.get()
        if item == "ready":
            ready += 1
            if ready == processes:
                start = time.perf_counter()
        else:
            results.append(float(item))
    wall = max(time.perf_counter() - start, seconds)
    for worker in workers:
        worker.join()
    return sum(results) / wall


def _children_cpu() -> float:
    """CPU seconds of this process's reaped children (wrk, once it has exited)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


async def load(base: str, pid: int, clients: int, seconds: float, text: str,
               script: Path) -> dict[str, Any]:
    """wrk against /speech: audio seconds per wall second, the counts of answers, and where the
    CPU went (cores used by the daemon, by its workers and by wrk)."""
    body = json.dumps({"voice_id": VOICE_ID, "text": text, "audio_format": "wav"})
    daemon_before = cpu_seconds(pid)
    workers_before = {child: cpu_seconds(child) for child in children(pid)}
    wrk_before = _children_cpu()
    proc = await asyncio.create_subprocess_exec(
        "wrk", "-t", "2", "-c", str(clients), "-d", f"{seconds:g}s", "--latency", "-s",
        str(script), f"{base}/speech", "--", body,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await proc.communicate()
    workers = sum(cpu_seconds(child) - workers_before.get(child, 0.0) for child in children(pid))
    cores = {"daemon": (cpu_seconds(pid) - daemon_before) / seconds,
             "workers": workers / seconds, "wrk": (_children_cpu() - wrk_before) / seconds}
    lines = [line for line in out.decode().splitlines() if line.startswith("RESULT ")]
    if not lines:
        raise RuntimeError(f"wrk printed no result:\n{out.decode()}")
    result: dict[str, Any] = json.loads(lines[-1][len("RESULT "):])
    result["rate"] = result["bytes"] / 2 / SAMPLE_RATE / seconds
    result["cores"] = cores
    return result


async def main() -> None:
    """Alternate engine-alone and server runs; print each and the medians."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--before", type=Path, default=None,
                        help="a source tree to run as 'before' (e.g. a git archive of main)")
    args = parser.parse_args()
    print(run_header(), flush=True)
    text = text_of(5)
    cores = os.cpu_count() or 1
    trees = [("after", REPO)] + ([("before", args.before.resolve())] if args.before else [])
    figures: dict[str, list[float]] = {"engine": [], **{name: [] for name, _ in trees}}
    with tempfile.TemporaryDirectory(prefix="idlakd-bench-") as scratch:
        script = Path(scratch, "speech.lua")
        script.write_text(WRK_SCRIPT, encoding="utf-8")
        standin_dir = Path(scratch, "slow")
        make_standin_voice(standin_dir, 0.1)
        for round_ in range(args.rounds):
            order = trees if round_ % 2 else trees[::-1]
            rate = await asyncio.to_thread(engine_alone, cores, args.seconds, text)
            figures["engine"].append(rate)
            print(f"engine alone, {cores} processes: {rate:7.1f} s of audio per s", flush=True)
            for name, tree in order:
                async with server(standin_dir, tree, **NO_QUOTAS) as (base, pid):
                    result = await load(base, pid, args.clients, args.seconds, text, script)
                figures[name].append(result["rate"])
                print(f"{name:6s} server, {args.clients} clients: {result['rate']:7.1f} s of audio "
                      f"per s ({result['rate'] / rate:4.2f} x engine), {result['ok']} x 200, "
                      f"{result['busy']} x 503, {result['other']} other, "
                      f"{result['socket_errors']} socket errors, p50 {result['p50_ms']} ms, "
                      f"p99 {result['p99_ms']} ms; cores used: daemon "
                      f"{result['cores']['daemon']:.2f}, workers {result['cores']['workers']:.2f}, "
                      f"wrk {result['cores']['wrk']:.2f}", flush=True)
        rate = await asyncio.to_thread(engine_alone, cores, args.seconds, text)
        figures["engine"].append(rate)
        print(f"engine alone, {cores} processes: {rate:7.1f} s of audio per s", flush=True)
    engine = statistics.median(figures["engine"])
    print(f"\nmedians: engine alone {engine:.1f} s/s "
          f"[{min(figures['engine']):.1f}-{max(figures['engine']):.1f}]")
    for name, _tree in trees:
        values = figures[name]
        print(f"  {name:6s} {statistics.median(values):7.1f} s/s "
              f"[{min(values):.1f}-{max(values):.1f}] = {statistics.median(values) / engine:4.2f} x "
              "engine alone (target >= 0.8)")


if __name__ == "__main__":
    asyncio.run(main())
