"""Benchmark /speech through a real idlakd server against the eSpeak engine called directly.

Prints figures; it is not a test. Run from the repository root:

    .venv/bin/python bench/bench_speech.py [--repeat 5] [--concurrency 8] [--long-minutes 10]
    .venv/bin/python bench/bench_speech.py --before /tmp/before15 [--rounds 5] [--repeat 7]

With --before it prints only the eSpeak NG overhead with one worker per voice (issue 15,
target 4): the daemon of that tree and of this one run side by side, requests alternate
between them, and each is compared with its own tree's engine called directly.

It starts `python -m idlakd serve` as a subprocess (state in a temp directory,
authorization off), once with workers_per_voice=1 (pure serving overhead: one
worker, no pipelining) and once with the default settings (2 workers per voice,
pipelined sentences). Two voices: `alba` (eSpeak NG, a few ms per sentence) and
`slow` (the tests' stand-in pyIdlak through the tangle engine, 16 kHz, with
--standin-delay seconds of simulated work per sentence, standing in for a real
Idlak voice). It measures:
- time to first byte (TTFB) and total time for a 1-sentence and a 20-sentence
  text, against the same engine loaded in this process;
- throughput of N concurrent 5-sentence requests;
- the server process's RSS while streaming about ten minutes of audio.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, AsyncIterator, Callable

import aiohttp

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from idlakd.worker.engines import load_engine  # noqa: E402
from idlakd.synth.document import parse  # noqa: E402

VOICE_ID = "alba"
VOICE_OPTIONS = {"voice": "en-gb", "variant": "f3"}  # alba in voiceconfig.json
SAMPLE_RATE = 22050
STANDIN_ID = "slow"
STANDIN_ROOT = REPO / "tests" / "pyidlak_standin"
STANDIN_RATE = 16000

SENTENCES = [
    "The quick brown fox jumps over the lazy dog near the riverbank.",
    "Speech synthesis turns written text into audible words.",
    "Every sentence here is about the same length as the others.",
    "A streaming server should send the first sentence as soon as it is ready.",
    "Later sentences can be synthesised while the first ones are being played.",
]


def text_of(sentences: int) -> str:
    """A text of n sentences drawn from the list above."""
    return " ".join(SENTENCES[i % len(SENTENCES)] for i in range(sentences))


def long_text(minutes: float) -> str:
    """Roughly `minutes` of eSpeak speech (it says about 195 words a minute), numbered sentences."""
    words_needed = int(minutes * 195)
    parts: list[str] = []
    words = 0
    n = 0
    while words < words_needed:
        sentence = f"This is sentence number {n} of a long text. {SENTENCES[n % len(SENTENCES)]}"
        parts.append(sentence)
        words += len(sentence.split())
        n += 1
    return " ".join(parts)


def free_port() -> int:
    """An unused local TCP port."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rss_kib(pid: int) -> int:
    """Resident set size of a process in KiB (from /proc)."""
    with open(f"/proc/{pid}/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def run_header() -> str:
    """The machine, its load and the command: the first lines of every benchmark's output."""
    with open("/proc/loadavg", encoding="ascii") as fh:
        load = " ".join(fh.read().split()[:3])
    return (f"machine: {platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}, "
            f"Python {platform.python_version()}, load average at start {load}\n"
            f"command: {' '.join([Path(sys.executable).name, *sys.argv])}")


def make_standin_voice(directory: Path, delay: float) -> None:
    """A stand-in Idlak voice directory with simulated work per sentence."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "voice.conf").write_text(
        f"lng=en\nacc=ga\nspk=slow\nsrate={STANDIN_RATE}\ndelay_per_sentence={delay}\n",
        encoding="utf-8")


@contextlib.asynccontextmanager
async def server(standin_dir: Path, tree: Path = REPO, **settings: str
                 ) -> AsyncIterator[tuple[str, int]]:
    """Run `python -m idlakd serve` of the source tree with the given settings; yields (base URL, pid)."""
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="idlakd-bench-") as state:
        voices = json.loads((REPO / "voiceconfig.json").read_text(encoding="utf-8"))
        voices.append({"vid": STANDIN_ID, "name": "Slow", "gender": "female",
                       "engine": "tangle", "dir": str(standin_dir)})
        voice_config = Path(state) / "voiceconfig.json"
        voice_config.write_text(json.dumps(voices), encoding="utf-8")
        args = [sys.executable, "-m", "idlakd", "--set", f"state_dir={state}",
                "--set", "authorization=false", "--set", "log_level=WARNING",
                "--set", f"voice_config={voice_config}",
                "--set", f"idlak_root={STANDIN_ROOT}"]
        for key, value in settings.items():
            args += ["--set", f"{key}={value}"]
        args += ["serve", "--host", "127.0.0.1", "--port", str(port)]
        env = dict(os.environ, PYTHONPATH=str(tree))
        proc = await asyncio.create_subprocess_exec(
            *args, cwd=str(tree), env=env, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL)
        base = f"http://127.0.0.1:{port}"
        try:
            async with aiohttp.ClientSession() as session:
                for _ in range(200):
                    if proc.returncode is not None:
                        raise RuntimeError(f"server exited ({proc.returncode}); port {port} taken?")
                    # The stand-in voice is this run's own: a server of someone else's that
                    # took the port between free_port() and the bind would not have it.
                    with contextlib.suppress(aiohttp.ClientError):
                        async with session.get(f"{base}/voices/{STANDIN_ID}") as response:
                            if response.status == 200:
                                break
                    await asyncio.sleep(0.05)
                else:
                    raise RuntimeError("server did not come up")
            yield base, proc.pid
        finally:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 30)
            except TimeoutError:
                proc.kill()
                await proc.wait()


async def speak(session: aiohttp.ClientSession, base: str, text: str,
                audio_format: str = "wav", voice_id: str = VOICE_ID) -> tuple[float, float, int]:
    """One /speech request: (seconds to first body byte, total seconds, body bytes)."""
    start = time.perf_counter()
    async with session.post(f"{base}/speech", json={
            "voice_id": voice_id, "text": text, "audio_format": audio_format}) as response:
        if response.status != 200:
            raise RuntimeError(f"/speech answered {response.status}: {await response.text()}")
        first = await response.content.readany()
        ttfb = time.perf_counter() - start
        size = len(first)
        while chunk := await response.content.readany():
            size += len(chunk)
    return ttfb, time.perf_counter() - start, size


async def latency(base: str, voice_id: str, rate: int, text: str, repeat: int,
                  synthesize: Callable[[str], bytes]) -> dict[str, float]:
    """Medians of TTFB and total through the server, and of the engine run directly, interleaved."""
    chunks = [c.text for c in parse(text).chunks]
    ttfbs: list[float] = []
    totals: list[float] = []
    directs: list[float] = []
    firsts: list[float] = []
    async with aiohttp.ClientSession() as session:
        # Warm every worker of the voice (two at once), then measure.
        await asyncio.gather(*(speak(session, base, text_of(2), voice_id=voice_id) for _ in range(2)))
        for _ in range(repeat):
            # Alternate server and direct runs so a change in machine load hits both alike.
            ttfb, total, size = await speak(session, base, text, voice_id=voice_id)
            ttfbs.append(ttfb)
            totals.append(total)
            start = time.perf_counter()
            synthesize(chunks[0])
            firsts.append(time.perf_counter() - start)
            for chunk in chunks[1:]:
                synthesize(chunk)
            directs.append(time.perf_counter() - start)
    return {"ttfb": statistics.median(ttfbs), "total": statistics.median(totals),
            "direct": statistics.median(directs), "first": statistics.median(firsts),
            "audio": (size - 44) / 2 / rate}


# The engine called directly, in a process of its own running a given tree's code (eSpeak
# NG is one global library per process, so "before" and "after" engines cannot share one):
# reads a JSON list of sentences per line, answers the seconds for the first and for all.
DIRECT_ENGINE = """
import json, sys, time
from idlakd.worker.engines import load_engine
engine = load_engine("espeak", "", json.loads(sys.argv[1]), None)
for line in sys.stdin:
    texts = json.loads(line)
    start = time.perf_counter()
    size = 0
    first = 0.0
    for text in texts:
        size += sum(len(pcm) for pcm in engine.synthesize(text))
        first = first or time.perf_counter() - start
    print(json.dumps([first, time.perf_counter() - start, size]), flush=True)
engine.close()
"""


class DirectEngine:
    """eSpeak NG (alba) of one source tree, called directly in a helper process."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @classmethod
    async def start(cls, tree: Path) -> "DirectEngine":
        """Start the helper with the tree's code importable."""
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", DIRECT_ENGINE, json.dumps(VOICE_OPTIONS), cwd=str(tree),
            env=dict(os.environ, PYTHONPATH=str(tree)), stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE)
        return cls(proc)

    async def run(self, sentences: list[str]) -> tuple[float, float]:
        """Synthesise the sentences one by one: (seconds for the first, seconds for all)."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(sentences).encode() + b"\n")
        first, total, _size = json.loads(await self.proc.stdout.readline())
        return first, total

    async def close(self) -> None:
        """End the helper."""
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        await self.proc.wait()


def spread(values: list[float], scale: float = 1.0, digits: int = 1) -> str:
    """'median [min-max]' of values times scale."""
    return (f"{statistics.median(values) * scale:.{digits}f} "
            f"[{min(values) * scale:.{digits}f}-{max(values) * scale:.{digits}f}]")


async def overhead(before: Path, rounds: int, repeat: int, standin_dir: Path,
                   say: Callable[[str], None]) -> None:
    """Target 4: one worker per voice, before's server and this tree's, each against its own
    engine called directly; requests alternate between the trees within every round."""
    trees = {"before": before, "after": REPO}
    texts = {"1 sentence": text_of(1), "20 sentences": text_of(20)}
    # run medians per (tree, text, figure)
    runs: dict[tuple[str, str, str], list[float]] = {}
    async with contextlib.AsyncExitStack() as stack:
        bases: dict[str, str] = {}
        directs: dict[str, DirectEngine] = {}
        for name, tree in trees.items():
            base, _pid = await stack.enter_async_context(
                server(standin_dir, tree, workers_per_voice="1"))
            bases[name] = base
            directs[name] = await DirectEngine.start(tree)
            stack.push_async_callback(directs[name].close)
        session = await stack.enter_async_context(aiohttp.ClientSession())
        for name, base in bases.items():  # warm each server's worker and each engine
            for _ in range(3):
                await speak(session, base, text_of(2))
                await directs[name].run([c.text for c in parse(text_of(2)).chunks])
        for round_ in range(rounds):
            samples: dict[tuple[str, str, str], list[float]] = {}
            for i in range(repeat):
                for label, text in texts.items():
                    chunks = [c.text for c in parse(text).chunks]
                    order = ["before", "after"] if (i + round_) % 2 == 0 else ["after", "before"]
                    for name in order:
                        ttfb, total, _size = await speak(session, bases[name], text)
                        first, direct = await directs[name].run(chunks)
                        for figure, value in (("ttfb", ttfb), ("total", total),
                                              ("direct", direct), ("first", first)):
                            samples.setdefault((name, label, figure), []).append(value)
            for key, values in samples.items():
                runs.setdefault(key, []).append(statistics.median(values))
            for name in trees:
                for label in texts:
                    total = statistics.median(samples[(name, label, "total")])
                    direct = statistics.median(samples[(name, label, "direct")])
                    runs.setdefault((name, label, "ratio"), []).append(total / direct)
                    if label == "20 sentences":
                        ttfb = statistics.median(samples[(name, label, "ttfb")])
                        first = statistics.median(samples[(name, label, "first")])
                        runs.setdefault((name, label, "ttfb/first"), []).append(ttfb / first)
            say(f"  round {round_ + 1}: " + ", ".join(
                f"{name} {label} {runs[(name, label, 'ratio')][-1]:.2f}"
                for label in texts for name in trees))
    say(f"\neSpeak NG (alba), workers_per_voice=1, wav; {rounds} rounds of {repeat} alternating "
        "requests per tree and text; median of the round medians [range]; 'direct' is the same "
        "tree's engine in a process of its own, sentence by sentence, right after each request:")
    say("  text          tree    TTFB ms            total ms              direct ms             "
        "total/direct        TTFB/first sentence")
    for label in texts:
        for name in trees:
            key = (name, label)
            ttfb_first = (spread(runs[(*key, "ttfb/first")], digits=2)
                          if label == "20 sentences" else "")
            say(f"  {label:13s} {name:7s} {spread(runs[(*key, 'ttfb')], 1000):18s} "
                f"{spread(runs[(*key, 'total')], 1000):21s} {spread(runs[(*key, 'direct')], 1000):21s} "
                f"{spread(runs[(*key, 'ratio')], digits=2):19s} {ttfb_first}")


async def throughput(base: str, concurrency: int) -> tuple[float, float]:
    """N concurrent 5-sentence requests: (wall seconds, audio seconds per wall second)."""
    text = text_of(5)
    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(speak(session, base, text) for _ in range(2)))  # warm both workers
        start = time.perf_counter()
        runs = await asyncio.gather(*(speak(session, base, text) for _ in range(concurrency)))
        wall = time.perf_counter() - start
    audio = sum((size - 44) / 2 / SAMPLE_RATE for _t, _total, size in runs)
    return wall, audio / wall


async def memory(base: str, pid: int, minutes: float, audio_format: str) -> dict[str, float]:
    """Stream about `minutes` of audio; the server's RSS before, at peak and after (MiB)."""
    text = long_text(minutes)
    async with aiohttp.ClientSession() as session:
        await speak(session, base, text_of(3), audio_format)  # warm up this path
        before = rss_kib(pid)
        peak = before
        done = asyncio.Event()

        async def sample() -> None:
            nonlocal peak
            while not done.is_set():
                peak = max(peak, rss_kib(pid))
                await asyncio.sleep(0.02)

        sampler = asyncio.create_task(sample())
        start = time.perf_counter()
        _ttfb, total, size = await speak(session, base, text, audio_format)
        done.set()
        await sampler
        after = rss_kib(pid)
    return {"chars": len(text), "bytes": size, "seconds": total,
            "before": before / 1024, "peak": peak / 1024, "after": after / 1024,
            "growth": (peak - before) / 1024}


async def main() -> None:
    """Run every measurement and print a report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--long-minutes", type=float, default=10.0)
    parser.add_argument("--standin-delay", type=float, default=0.1)
    parser.add_argument("--before", type=Path, default=None,
                        help="a source tree (e.g. a git archive of main) to compare with this "
                             "one: prints only the one-worker overhead, before and after")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of --repeat (with --before)")
    args = parser.parse_args()

    # The stand-in engine prints to fd 1 (as Idlak does); keep the report clean.
    report = os.fdopen(os.dup(1), "w", buffering=1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)

    def say(line: str = "") -> None:
        print(line, file=report)

    say(run_header())
    with tempfile.TemporaryDirectory(prefix="idlakd-bench-voice-") as voice_dir:
        standin_dir = Path(voice_dir)
        make_standin_voice(standin_dir, args.standin_delay)
        if args.before is not None:
            await overhead(args.before.resolve(), args.rounds, args.repeat, standin_dir, say)
            return
        engines = {
            VOICE_ID: (load_engine("espeak", "", VOICE_OPTIONS, None), SAMPLE_RATE,
                       "eSpeak NG (alba)"),
            STANDIN_ID: (load_engine("tangle", str(standin_dir), {}, STANDIN_ROOT), STANDIN_RATE,
                         f"stand-in Idlak, {args.standin_delay:g} s/sentence (slow)"),
        }
        one, twenty = text_of(1), text_of(20)
        for label, settings in (("workers_per_voice=1 (serving overhead)", {"workers_per_voice": "1"}),
                                ("defaults (2 workers per voice, pipelined)", {})):
            async with server(standin_dir, **settings) as (base, pid):
                say(f"\nServer, {label}, wav, median of {args.repeat} after warm-up; 'direct' is "
                    "the same engine in the bench process, sentence by sentence, interleaved:")
                for voice_id, (engine, rate, voice_label) in engines.items():
                    def synthesize(text: str, engine: Any = engine) -> bytes:
                        return b"".join(engine.synthesize(text))

                    synthesize("Warm up.")
                    say(f"  {voice_label}:")
                    for name, text in (("1 sentence", one), ("20 sentences", twenty)):
                        m = await latency(base, voice_id, rate, text, args.repeat, synthesize)
                        say(f"    {name:12s} TTFB {m['ttfb'] * 1000:7.1f} ms  total "
                            f"{m['total'] * 1000:7.1f} ms  direct {m['direct'] * 1000:7.1f} ms  "
                            f"total/direct {m['total'] / m['direct']:5.2f}  ({m['audio']:5.1f} s audio)")
                        if name == "20 sentences":
                            say(f"    {'':12s} TTFB / first sentence's direct synthesis "
                                f"({m['first'] * 1000:.1f} ms) = {m['ttfb'] / m['first']:5.2f}")
                if settings:
                    continue
                wall, rate_out = await throughput(base, args.concurrency)
                say(f"  {args.concurrency} concurrent 5-sentence requests (alba): {wall:5.2f} s wall, "
                    f"{rate_out:5.1f} s of audio per second")
                for audio_format in ("wav", "mp3"):
                    mem = await memory(base, pid, args.long_minutes, audio_format)
                    minutes = ""
                    if audio_format == "wav":
                        minutes = f", {(mem['bytes'] - 44) / 2 / SAMPLE_RATE / 60:.1f} min audio"
                    say(f"  long stream (alba, {audio_format}, {mem['chars']:.0f} chars{minutes}) in "
                        f"{mem['seconds']:.1f} s: server RSS {mem['before']:.1f} MiB before, "
                        f"peak {mem['peak']:.1f} MiB, growth {mem['growth']:.1f} MiB")
        for engine, _rate, _label in engines.values():
            engine.close()


if __name__ == "__main__":
    asyncio.run(main())
