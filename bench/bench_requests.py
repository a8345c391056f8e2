"""Per-request cost of `idlakd serve` against a bare aiohttp handler, and the loop's tail under a
login flood (issue 15, targets 1-3), before and after, side by side in one run.

    .venv/bin/python bench/bench_requests.py [--rounds 3] [--seconds 4] [--before /tmp/before15]

Servers, all started once by this script on loopback and measured in alternating order:
  * bare: a bare aiohttp handler (same Python, same aiohttp, this file run with --bare) that
    answers every GET with the JSON idlakd gives for `GET /voices/alba`; access log off (aiohttp's
    access logger has no handler here, so it writes nothing: the framework's ceiling);
  * after: `idlakd serve` of this tree; before: the same from the --before tree (a copy of main
    before issue 15, run with PYTHONPATH and cwd there). Both with the default configuration,
    access log ON at INFO (log_level=INFO, lines written to a file), except that the per-address
    login limits are raised (the flood comes from one address: it must reach the uid's check).

Per round and server: `wrk -t1 -c64 -d<seconds>s` (Debian's wrk, not pinned to a CPU) against
`GET /voices/alba` and, on the daemons, `GET /auth/keys` with a Bearer token (the cheapest route
that checks a token); then target 3 on each daemon: p99 of `GET /languages` (one client, one
request every 10 ms, 8 s) while 16 clients send failing logins for one uid as fast as they can
(bench_api.languages_under_auth). The uid is locked first (failing logins one by one until a
429), so every flood measures the same steady state: a locked uid's 429s, each checked against
the failures the store counts for every node. Prints medians with [min-max] over the rounds,
each daemon's req/s over the bare handler's of the same round, the server's CPU time per
request, and the refused logins answered per second during the flood.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_api import languages_under_auth  # noqa: E402
from load import REPO, Server, cpu_seconds, free_port, start_server  # noqa: E402

VOICE = "alba"
# A uid nobody logged in as from 127.0.0.1: the flood counts against the uid's own window.
FLOOD_UID = "victim"
# The flood comes from 127.0.0.1 only: without these, the per-address limits would answer it
# from memory and the uid's own check (the store's failure count) would never be reached.
FLOOD_SETTINGS = {"login_max_failures_per_address": "1000000",
                  "login_max_attempts_per_address": "1000000", "log_level": "INFO"}


def bare_main(port: int, body_file: Path) -> None:
    """The bare handler: one aiohttp route answering the stored JSON (run in a subprocess)."""
    from aiohttp import web

    body = body_file.read_bytes()

    async def handler(request: web.Request) -> web.Response:
        """The same bytes idlakd answers for the voice."""
        return web.Response(body=body, content_type="application/json")

    app = web.Application()
    app.router.add_get("/{tail:.*}", handler)
    web.run_app(app, host="127.0.0.1", port=port, print=None)


def wrk(url: str, seconds: float, token: str | None = None, pid: int | None = None
        ) -> tuple[float, float]:
    """requests/s that wrk measured (64 connections, one thread), and the server's CPU time per
    request in microseconds (all its threads; from /proc, so less moved by the machine's load
    than the rate); raise when any answer was not 2xx."""
    argv = ["wrk", "-t1", "-c64", f"-d{seconds:g}s", url]
    if token is not None:
        argv[1:1] = ["-H", f"Authorization: Bearer {token}"]
    cpu_before = cpu_seconds(pid) if pid is not None else 0.0
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30).stdout
    cpu = cpu_seconds(pid) - cpu_before if pid is not None else 0.0
    if "Non-2xx" in out:
        raise RuntimeError(f"wrk saw errors from {url}:\n{out}")
    rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
    total = re.search(r"(\d+) requests in", out)
    if rate is None or total is None:
        raise RuntimeError(f"wrk printed no rate:\n{out}")
    return float(rate.group(1)), cpu / int(total.group(1)) * 1e6


async def admin_token(server: Server) -> str:
    """Log in as the first admin (before any flood locks the uid)."""
    async with aiohttp.ClientSession() as session:
        async with session.post(server.url + "/auth", json={
                "uid": "admin", "password": server.password}) as resp:
            return str((await resp.json())["access_token"])


async def make_victim(server: Server, token: str) -> None:
    """Create the flooded uid (the flood's guesses are then about a real account)."""
    async with aiohttp.ClientSession() as session:
        async with session.post(server.url + "/users", json={"uid": FLOOD_UID},
                                headers={"Authorization": f"Bearer {token}"}) as resp:
            assert resp.status == 200, await resp.text()


async def lock_victim(url: str) -> int:
    """Failing logins one by one until the uid is locked (429): every flood then measures the
    same steady state, a locked uid, whatever the earlier rounds left. How many it took."""
    async with aiohttp.ClientSession() as session:
        for attempt in range(1, 40):
            async with session.post(url + "/auth", json={
                    "uid": FLOOD_UID, "password": "not-the-password"}) as resp:
                if resp.status == 429:
                    return attempt
    raise RuntimeError("the flooded uid never locked")


async def voice_body(url: str) -> bytes:
    """What the daemon answers for GET /voices/<VOICE>."""
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{url}/voices/{VOICE}") as resp:
            assert resp.status == 200
            return await resp.read()


def start_bare(tmp: Path, body: bytes) -> tuple[subprocess.Popen[bytes], str]:
    """The bare handler in a subprocess; waits until it answers."""
    body_file = tmp / "voice.json"
    body_file.write_bytes(body)
    port = free_port()
    process = subprocess.Popen([sys.executable, __file__, "--bare", str(port), str(body_file)])
    url = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            subprocess.run(["wrk", "-t1", "-c1", "-d0.1s", url], capture_output=True, check=True)
            break
        except subprocess.CalledProcessError:
            time.sleep(0.05)
    return process, url


def spread(values: list[float], digits: int = 0) -> str:
    """median [min-max]."""
    return (f"{statistics.median(values):,.{digits}f} "
            f"[{min(values):,.{digits}f}–{max(values):,.{digits}f}]")


def run(args: argparse.Namespace) -> dict[str, list[float]]:
    """Start the three servers, alternate the measurements, stop them; every figure by name."""
    figures: dict[str, list[float]] = {}

    def note(name: str, value: float) -> None:
        figures.setdefault(name, []).append(value)
        print(f"  {name}: {value:,.1f}", file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory(prefix="idlakd-bench-") as tmp_name:
        tmp = Path(tmp_name)
        daemons: dict[str, Server] = {}
        bare: subprocess.Popen[bytes] | None = None
        try:
            for name, root in (("after", REPO), ("before", args.before)):
                daemons[name] = start_server(tmp / name, settings=FLOOD_SETTINGS,
                                             log_path=tmp / f"{name}.log", root=root)
            tokens = {name: asyncio.run(admin_token(d)) for name, d in daemons.items()}
            for name, daemon in daemons.items():
                asyncio.run(make_victim(daemon, tokens[name]))
            bodies = {name: asyncio.run(voice_body(d.url)) for name, d in daemons.items()}
            if bodies["after"] != bodies["before"]:
                print("note: the two trees answer different voice JSON", file=sys.stderr)
            bare, bare_url = start_bare(tmp, bodies["after"])
            for round_number in range(args.rounds):
                print(f"round {round_number + 1}", file=sys.stderr)
                order = ["bare", "after", "before"]
                order = order[round_number % 3:] + order[:round_number % 3]
                rates: dict[str, float] = {}
                for name in order:
                    url = bare_url if name == "bare" else daemons[name].url
                    pid = bare.pid if name == "bare" else daemons[name].process.pid
                    rates[name], cpu = wrk(f"{url}/voices/{VOICE}", args.seconds, pid=pid)
                    note(f"{name} voice", rates[name])
                    note(f"{name} voice cpu", cpu)
                    if name != "bare":
                        rates[f"{name} auth"], cpu = wrk(f"{url}/auth/keys", args.seconds,
                                                         tokens[name], pid)
                        note(f"{name} auth", rates[f"{name} auth"])
                        note(f"{name} auth cpu", cpu)
                for name in ("after", "before"):
                    note(f"{name} voice ratio", rates[name] / rates["bare"])
                    note(f"{name} auth ratio", rates[f"{name} auth"] / rates["bare"])
                flood_order = ("after", "before") if round_number % 2 == 0 else ("before", "after")
                for name in flood_order:
                    asyncio.run(lock_victim(daemons[name].url))
                    result = asyncio.run(languages_under_auth(
                        daemons[name].url, FLOOD_UID, "not-the-password", 16,
                        args.flood_seconds + 0.5))
                    note(f"{name} languages p99", result["p99_ms"])
                    note(f"{name} languages p50", result["p50_ms"])
                    note(f"{name} logins/s", result["logins_per_s"] + 0.0)
                    note(f"{name} failed logins/s", result["login_errors"]
                         / (args.flood_seconds + 0.5))
        finally:
            for server in daemons.values():
                server.stop()
            if bare is not None:
                bare.terminate()
                bare.wait(10)
    return figures


def table(figures: dict[str, list[float]]) -> str:
    """The figures as a Markdown table: before and after side by side."""
    def cell(name: str, digits: int = 0) -> str:
        return spread(figures[name], digits)

    rows = [
        "| | bare aiohttp | idlakd before | idlakd after |",
        "|---|---|---|---|",
        f"| `GET /voices/{VOICE}`, req/s | {cell('bare voice')} | {cell('before voice')} "
        f"| {cell('after voice')} |",
        f"| ratio to bare (target ≥ 0.5) | | {cell('before voice ratio', 2)} "
        f"| {cell('after voice ratio', 2)} |",
        f"| `GET /voices/{VOICE}`, server CPU µs per request | {cell('bare voice cpu')} "
        f"| {cell('before voice cpu')} | {cell('after voice cpu')} |",
        f"| `GET /auth/keys` (Bearer), req/s | | {cell('before auth')} | {cell('after auth')} |",
        f"| ratio to bare (target ≥ 0.35) | | {cell('before auth ratio', 2)} "
        f"| {cell('after auth ratio', 2)} |",
        f"| `GET /auth/keys`, server CPU µs per request | | {cell('before auth cpu')} "
        f"| {cell('after auth cpu')} |",
        f"| `GET /languages` p99 under the login flood, ms (target ≤ 20) | "
        f"| {cell('before languages p99', 1)} | {cell('after languages p99', 1)} |",
        f"| `GET /languages` p50 under the flood, ms | | {cell('before languages p50', 1)} "
        f"| {cell('after languages p50', 1)} |",
        f"| failed logins answered per s during the flood | "
        f"| {cell('before failed logins/s')} | {cell('after failed logins/s')} |",
    ]
    return "\n".join(rows)


def main() -> int:
    """Entry point (or, with --bare, the bare handler's process)."""
    if len(sys.argv) == 4 and sys.argv[1] == "--bare":
        bare_main(int(sys.argv[2]), Path(sys.argv[3]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=4.0, help="seconds per wrk run")
    parser.add_argument("--flood-seconds", type=float, default=8.0)
    parser.add_argument("--before", type=Path, default=Path("/tmp/before15"),
                        help="source tree of the 'before' daemon")
    args = parser.parse_args()
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    figures = run(args)
    print(f"{started}; load average at start {load}, at end "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}; {os.cpu_count()} CPUs; "
          f"Python {sys.version.split()[0]}, aiohttp {aiohttp.__version__}")
    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    print(f"{args.rounds} rounds, wrk -t1 -c64 -d{args.seconds:g}s (not pinned), medians [range]\n")
    print(table(figures))
    print()
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
