"""Load test of a real `idlakd serve` on loopback: many concurrent clients mixing the API's routes.

    .venv/bin/python bench/load.py                      # 200 clients, 60 s (the issue's run)
    .venv/bin/python bench/load.py --clients 50 --duration 8 --bcrypt-rounds 4   # CI-sized

It starts the daemon itself (fresh state directory, free port, the repository's eSpeak voices),
then runs `--clients` client tasks for `--duration` seconds. Each client loops: pick a request
from the mix, send it on its keep-alive connection, record status and latency, pause a random
"think time", repeat. The mix: GET /voices, GET /languages, GET /languages/<iso>/accents,
POST /voices with filters, GET /voices/<id>, POST /auth (the real password), and short
POST /speech (streamed, read to the end).

Pass conditions (exit status 0, else 1):
  * no error other than deliberate 503s from /speech (queue full): no 5xx, no 4xx, no
    connection error, no timeout;
  * p99 latency of GET /voices under --p99-ms (50) while synthesis runs;
  * the daemon's RSS at the end within --rss-mb (30) of its RSS after warm-up.

Everything is bounded: the run stops after --duration, each request has a timeout, and the
daemon is stopped (SIGTERM, then SIGKILL) at the end. Only 127.0.0.1 is ever contacted.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import dataclasses
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import aiohttp

REPO = Path(__file__).resolve().parent.parent
VOICES = ("alba", "callum", "sarah", "ioana", "pierre", "anna", "dmitri")
LANGUAGES = ("en", "ro", "fr", "de", "ru", "xx")
SHORT_TEXTS = ("Hello there.", "Good morning to you.", "Yes.", "How are you today?",
               "The quick brown fox.")

# (name, weight per mille): a client's next request is drawn from this mix. Tokens live 30
# minutes, so a real client logs in rarely: 1 request in 500 (about 0.7 logins/s from 200 clients,
# each costing ~0.25 s of CPU at bcrypt's default cost).
MIX: tuple[tuple[str, int], ...] = (
    ("GET /voices", 350),
    ("GET /languages", 200),
    ("GET /languages/{iso}/accents", 80),
    ("POST /voices", 120),
    ("GET /voices/{id}", 118),
    ("POST /auth", 2),
    ("POST /speech", 130),
)


def free_port() -> int:
    """A loopback TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """User+system CPU time a process has used (from /proc; 0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    """Direct children of a process (the daemon's workers and ffmpegs)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def rss_bytes(pid: int) -> int:
    """Resident set size of a process (from /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


@dataclasses.dataclass
class Server:
    """A running `idlakd serve` and its first admin's password."""

    process: subprocess.Popen[str]
    url: str
    password: str
    state_dir: Path

    def stop(self) -> int:
        """SIGTERM, wait, SIGKILL if needed; the exit status."""
        try:
            if self.process.poll() is None:
                self.process.send_signal(signal.SIGTERM)
                try:
                    return self.process.wait(40)
                except subprocess.TimeoutExpired:
                    self.process.kill()
            return self.process.wait(10)
        finally:
            if self.process.stdout is not None:
                self.process.stdout.close()


def start_server(state_dir: Path, bcrypt_rounds: int | None = None,
                 settings: dict[str, str] | None = None, log_path: Path | None = None,
                 extra_env: dict[str, str] | None = None, root: Path = REPO) -> Server:
    """Start the real daemon on a free loopback port; wait until it answers.

    root: the source tree to run (another checkout's idlakd, e.g. a "before" copy).
    """
    port = free_port()
    values = {"state_dir": str(state_dir), "port": str(port), "host": "127.0.0.1",
              "voice_config": str(root / "voiceconfig.json"), "log_level": "WARNING"}
    if bcrypt_rounds is not None:
        values["bcrypt_rounds"] = str(bcrypt_rounds)
    values.update(settings or {})
    argv = [sys.executable, "-m", "idlakd"]
    for key, value in values.items():
        argv += ["--set", f"{key}={value}"]
    argv.append("serve")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("IDLAKD_") and k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH", "")]))
    env.update(extra_env or {})
    log = open(log_path or os.devnull, "w")
    process = subprocess.Popen(argv, cwd=root, env=env, stdout=subprocess.PIPE, stderr=log,
                               text=True)
    log.close()
    assert process.stdout is not None
    line = process.stdout.readline()  # the first start prints the admin's password, first
    match = re.search(r"<User admin:([^:]+):True>", line)
    if not match:
        process.kill()
        raise RuntimeError(f"daemon did not print the admin password: {line!r}")
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise RuntimeError("daemon did not start listening") from None
            time.sleep(0.05)
    return Server(process, url, match.group(1), state_dir)


def percentile(values: list[float], pct: float) -> float:
    """The pct-th percentile (nearest rank) of values; 0 for none."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, int(round(pct / 100 * len(ordered) + 0.5)) - 1))
    return ordered[rank]


@dataclasses.dataclass
class Stats:
    """What the clients saw."""

    latencies: dict[str, list[float]] = dataclasses.field(
        default_factory=lambda: collections.defaultdict(list))
    outcomes: collections.Counter[tuple[str, str]] = dataclasses.field(
        default_factory=collections.Counter)
    speech_running: int = 0
    voices_during_speech: list[float] = dataclasses.field(default_factory=list)

    def record(self, name: str, outcome: str, seconds: float) -> None:
        """One finished request."""
        self.outcomes[(name, outcome)] += 1
        if outcome in ("200", "204"):
            self.latencies[name].append(seconds)

    @property
    def errors(self) -> dict[str, int]:
        """Every outcome that is not a success or a deliberate 503 of /speech."""
        return {f"{name} -> {outcome}": count for (name, outcome), count in self.outcomes.items()
                if outcome not in ("200", "204") and not (name == "POST /speech" and outcome == "503")}


class LoadClient:
    """One simulated client: a loop of requests from the mix with think time in between."""

    def __init__(self, session: aiohttp.ClientSession, url: str, token: str, password: str,
                 stats: Stats, rng: random.Random, think: tuple[float, float],
                 speech_weight: int | None = None, auth_weight: int | None = None) -> None:
        self.session = session
        self.url = url
        self.token = token
        self.password = password
        self.stats = stats
        self.rng = rng
        self.think = think
        names = [name for name, _ in MIX]
        overrides = {"POST /speech": speech_weight, "POST /auth": auth_weight}
        weights: list[float] = []
        for name, weight in MIX:
            override = overrides.get(name)
            weights.append(float(weight if override is None else override))
        self._pick: Callable[[], str] = lambda: rng.choices(names, weights)[0]

    async def _request(self, name: str) -> str:
        """Send one request of the mix; its outcome (status code text)."""
        rng = self.rng
        headers = {"Authorization": f"Bearer {self.token}"}
        if name == "GET /voices":
            coro = self.session.get(self.url + "/voices")
        elif name == "GET /languages":
            coro = self.session.get(self.url + "/languages")
        elif name == "GET /languages/{iso}/accents":
            coro = self.session.get(self.url + f"/languages/{rng.choice(LANGUAGES[:-1])}/accents")
        elif name == "POST /voices":
            coro = self.session.post(self.url + "/voices", json=rng.choice(
                [{}, {"language": "en"}, {"language": "en", "accent": "gb"}, {"gender": "female"}]))
        elif name == "GET /voices/{id}":
            coro = self.session.get(self.url + f"/voices/{rng.choice(VOICES)}")
        elif name == "POST /auth":
            coro = self.session.post(self.url + "/auth",
                                     json={"uid": "loadtest", "password": self.password})
        else:
            coro = self.session.post(self.url + "/speech", headers=headers, json={
                "voice_id": rng.choice(VOICES), "text": rng.choice(SHORT_TEXTS)})
        async with coro as resp:
            body = await resp.read()
            if resp.status == 200 and name == "POST /speech" and len(body) < 100:
                return "short-audio"
            return str(resp.status)

    async def run(self, until: float) -> None:
        """Loop until the deadline (each request bounded by the session's timeout)."""
        loop = asyncio.get_running_loop()
        await asyncio.sleep(self.rng.uniform(0, self.think[1]))  # do not start in lockstep
        while loop.time() < until:
            name = self._pick()
            start = loop.time()
            if name == "POST /speech":
                self.stats.speech_running += 1
            try:
                outcome = await self._request(name)
            except asyncio.TimeoutError:
                outcome = "timeout"
            except aiohttp.ClientError as exc:
                outcome = type(exc).__name__
            finally:
                if name == "POST /speech":
                    self.stats.speech_running -= 1
            elapsed = loop.time() - start
            self.stats.record(name, outcome, elapsed)
            if elapsed > 0.1 and os.environ.get("LOAD_DEBUG"):
                print(f"slow {name} {elapsed*1000:.0f} ms at {start:.2f}", file=sys.stderr)
            if name == "GET /voices" and outcome == "200" and self.stats.speech_running > 0:
                self.stats.voices_during_speech.append(elapsed)
            await asyncio.sleep(self.rng.uniform(*self.think))


async def _setup_user(url: str, admin_password: str) -> tuple[str, str]:
    """Create the load test's user; its token and password."""
    async with aiohttp.ClientSession() as session:
        async with session.post(url + "/auth", json={"uid": "admin", "password": admin_password}) as r:
            admin = (await r.json())["access_token"]
        async with session.post(url + "/users", json={"uid": "loadtest"},
                                headers={"Authorization": f"Bearer {admin}"}) as r:
            password = (await r.json())["password"]
        async with session.post(url + "/auth", json={"uid": "loadtest", "password": password}) as r:
            token = (await r.json())["access_token"]
        # Warm-up: one of each kind, so the RSS baseline includes imports, caches and pools;
        # two sentences per voice start both of its workers (workers_per_voice defaults to 2).
        async def warm(voice: str) -> None:
            async with session.post(url + "/speech", json={
                    "voice_id": voice, "text": "Warm up. And a second sentence."},
                    headers={"Authorization": f"Bearer {token}"}) as r:
                await r.read()
        await asyncio.gather(*(warm(voice) for voice in VOICES))
        for path in ("/voices", "/languages", "/languages/en/accents", "/voices/alba"):
            async with session.get(url + path) as r:
                await r.read()
    return token, password


async def run_load(url: str, token: str, password: str, clients: int, duration: float,
                   think: tuple[float, float], seed: int, request_timeout: float,
                   speech_weight: int | None = None, auth_weight: int | None = None) -> Stats:
    """Run the clients against url for duration seconds."""
    stats = Stats()
    timeout = aiohttp.ClientTimeout(total=request_timeout)
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        until = asyncio.get_running_loop().time() + duration
        rng = random.Random(seed)
        runners = [LoadClient(session, url, token, password, stats,
                              random.Random(rng.random()), think, speech_weight, auth_weight)
                   for _ in range(clients)]
        await asyncio.gather(*(c.run(until) for c in runners))
    return stats


def summarise(stats: Stats, duration: float, rss_start: int, rss_end: int) -> dict[str, Any]:
    """Figures of a run, as JSON-able data."""
    per_route = {}
    for name, _ in MIX:
        values = stats.latencies.get(name, [])
        per_route[name] = {
            "ok": len(values),
            "rps": round(len(values) / duration, 1),
            "p50_ms": round(percentile(values, 50) * 1000, 1),
            "p99_ms": round(percentile(values, 99) * 1000, 1),
            "max_ms": round(max(values, default=0) * 1000, 1),
        }
    outcomes: collections.Counter[str] = collections.Counter()
    for (name, outcome), count in stats.outcomes.items():
        outcomes[f"{name} {outcome}"] += count
    return {
        "requests": sum(stats.outcomes.values()),
        "routes": per_route,
        "outcomes": dict(sorted(outcomes.items())),
        "errors": stats.errors,
        "speech_503": stats.outcomes.get(("POST /speech", "503"), 0),
        "voices_during_speech": {
            "count": len(stats.voices_during_speech),
            "p50_ms": round(percentile(stats.voices_during_speech, 50) * 1000, 1),
            "p99_ms": round(percentile(stats.voices_during_speech, 99) * 1000, 1),
        },
        "rss_start_mb": round(rss_start / 2 ** 20, 1),
        "rss_end_mb": round(rss_end / 2 ** 20, 1),
        "rss_growth_mb": round((rss_end - rss_start) / 2 ** 20, 1),
    }


def verdict(summary: dict[str, Any], p99_ms: float, rss_mb: float) -> list[str]:
    """The pass conditions that failed (empty: passed)."""
    failed = []
    if summary["errors"]:
        failed.append(f"errors other than deliberate 503s: {summary['errors']}")
    during = summary["voices_during_speech"]
    if during["count"] == 0:
        failed.append("no GET /voices ran while synthesis ran")
    elif during["p99_ms"] >= p99_ms:
        failed.append(f"p99 of GET /voices while synthesising {during['p99_ms']} ms >= {p99_ms} ms")
    if abs(summary["rss_growth_mb"]) > rss_mb:
        failed.append(f"RSS moved {summary['rss_growth_mb']} MB (> {rss_mb} MB)")
    return failed


async def main_async(args: argparse.Namespace) -> int:
    """Start the daemon, warm up, run the load, measure, stop; print the summary."""
    with tempfile.TemporaryDirectory(prefix="idlakd-load-") as tmp:
        server = start_server(Path(tmp) / "state", args.bcrypt_rounds,
                              log_path=Path(args.server_log) if args.server_log else None,
                              extra_env={"PYTHONASYNCIODEBUG": "1"} if args.asyncio_debug else None)
        try:
            token, password = await _setup_user(server.url, server.password)
            workers = children(server.process.pid)
            if args.renice_workers:
                # Experiment: what the loop gains when synthesis yields the CPU to it.
                for pid in workers:
                    os.setpriority(os.PRIO_PROCESS, pid, args.renice_workers)
            rss_start = rss_bytes(server.process.pid)
            cpu_start = (cpu_seconds(server.process.pid),
                         sum(cpu_seconds(p) for p in workers), time.process_time())
            started = time.monotonic()
            stats = await run_load(server.url, token, password, args.clients, args.duration,
                                   (args.think_min, args.think_max), args.seed, args.timeout,
                                   args.speech_weight, args.auth_weight)
            took = time.monotonic() - started
            workers_after = children(server.process.pid)
            cpu = {"daemon_cores": (cpu_seconds(server.process.pid) - cpu_start[0]) / took,
                   "workers_cores": (sum(cpu_seconds(p) for p in workers_after) - cpu_start[1]) / took,
                   "load_generator_cores": (time.process_time() - cpu_start[2]) / took,
                   "workers": len(workers_after),
                   "loadavg_1min_at_end": os.getloadavg()[0], "cpus": os.cpu_count()}
            await asyncio.sleep(1.0)  # let finished streams release their buffers
            rss_end = rss_bytes(server.process.pid)
        finally:
            status = server.stop()
    summary = summarise(stats, took, rss_start, rss_end)
    summary["cpu"] = {k: round(v, 2) if isinstance(v, float) else v for k, v in cpu.items()}
    summary["config"] = {"clients": args.clients, "duration_s": args.duration,
                         "think_s": [args.think_min, args.think_max],
                         "bcrypt_rounds": args.bcrypt_rounds or "default (12)",
                         "speech_weight": args.speech_weight, "auth_weight": args.auth_weight,
                         "renice_workers": args.renice_workers,
                         "server_exit": status}
    failed = verdict(summary, args.p99_ms, args.rss_mb)
    summary["failed"] = failed
    print(json.dumps(summary, indent=2))
    print("PASS" if not failed else "FAIL: " + "; ".join(failed))
    return 0 if not failed else 1


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command line of the load test."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--clients", type=int, default=200)
    p.add_argument("--duration", type=float, default=60.0, help="seconds of load")
    p.add_argument("--think-min", type=float, default=0.2, help="least pause between requests (s)")
    p.add_argument("--think-max", type=float, default=1.0, help="longest pause between requests (s)")
    p.add_argument("--bcrypt-rounds", type=int, default=None, help="default: the daemon's (12)")
    p.add_argument("--timeout", type=float, default=30.0, help="per-request timeout (s)")
    p.add_argument("--p99-ms", type=float, default=50.0)
    p.add_argument("--rss-mb", type=float, default=30.0)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--speech-weight", type=int, default=None,
                   help="weight of POST /speech in the mix (default 130 per mille; 0: none)")
    p.add_argument("--server-log", help="write the daemon's stderr here")
    p.add_argument("--auth-weight", type=int, default=None,
                   help="weight of POST /auth in the mix (default 2 per mille)")
    p.add_argument("--asyncio-debug", action="store_true",
                   help="run the daemon with PYTHONASYNCIODEBUG=1: its log names slow callbacks")
    p.add_argument("--renice-workers", type=int, default=0,
                   help="experiment: renice the daemon's synthesis workers to this value")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    return asyncio.run(main_async(parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
