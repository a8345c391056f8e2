"""API figures of a real `idlakd serve` on loopback (no synthesis involved).

    .venv/bin/python bench/bench_api.py [--seconds 5] [--idle-connections 1000]

Prints, as a Markdown table:
  1. requests/s of GET /voices and POST /voices at 1, 16 and 64 concurrent keep-alive clients
     (closed loop: each client sends its next request as soon as the answer is read);
  2. p50/p99 latency of GET /languages (one client, one request every 10 ms) while 16 clients
     hammer POST /auth with the daemon's default bcrypt cost (12) -- bcrypt must stay off the
     event loop: target p99 < 20 ms;
  3. memory per idle keep-alive connection: the daemon's RSS growth after N clients each made
     one request and kept the connection open, divided by N.

The load generator runs in this one process on the same machine as the daemon, so on a small
machine the figures of (1) are bounded by the shared CPU, not only by the daemon.
Everything stays on 127.0.0.1 and every loop is bounded in time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
import tempfile
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from load import percentile, rss_bytes, start_server  # noqa: E402


async def closed_loop(url: str, method: str, path: str, body: Any, clients: int,
                      seconds: float) -> dict[str, float]:
    """clients keep-alive connections sending back-to-back requests for seconds: rps, p50, p99."""
    latencies: list[float] = []
    errors = 0
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector,
                                     timeout=aiohttp.ClientTimeout(total=30)) as session:
        # Open every connection first so the measurement is of keep-alive requests only.
        async def warm() -> None:
            async with session.request(method, url + path, json=body) as resp:
                await resp.read()
        await asyncio.gather(*(warm() for _ in range(clients)))
        loop = asyncio.get_running_loop()
        until = loop.time() + seconds

        async def client() -> None:
            nonlocal errors
            while loop.time() < until:
                start = loop.time()
                async with session.request(method, url + path, json=body) as resp:
                    await resp.read()
                    if resp.status != 200:
                        errors += 1
                latencies.append(loop.time() - start)

        started = loop.time()
        await asyncio.gather(*(client() for _ in range(clients)))
        took = loop.time() - started
    return {"rps": len(latencies) / took, "p50_ms": percentile(latencies, 50) * 1000,
            "p99_ms": percentile(latencies, 99) * 1000, "requests": len(latencies),
            "errors": errors}


async def languages_under_auth(url: str, uid: str, password: str, hammers: int,
                               seconds: float) -> dict[str, float]:
    """p50/p99 of GET /languages while `hammers` clients log in back to back (real bcrypt)."""
    logins = 0
    login_errors = 0
    latencies: list[float] = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        loop = asyncio.get_running_loop()
        until = loop.time() + seconds

        async def hammer() -> None:
            nonlocal logins, login_errors
            while loop.time() < until:
                async with session.post(url + "/auth",
                                        json={"uid": uid, "password": password}) as resp:
                    await resp.read()
                    if resp.status == 200:
                        logins += 1
                    else:
                        login_errors += 1

        async def probe() -> None:
            await asyncio.sleep(0.5)  # let the hammers fill the executor first
            while loop.time() < until:
                start = loop.time()
                async with session.get(url + "/languages") as resp:
                    await resp.read()
                latencies.append(loop.time() - start)
                await asyncio.sleep(0.01)

        started = loop.time()
        await asyncio.gather(probe(), *(hammer() for _ in range(hammers)))
        took = loop.time() - started
    return {"p50_ms": percentile(latencies, 50) * 1000, "p99_ms": percentile(latencies, 99) * 1000,
            "max_ms": max(latencies) * 1000, "samples": len(latencies),
            "logins_per_s": logins / took, "login_errors": login_errors}


async def idle_connection_memory(url: str, pid: int, count: int) -> dict[str, float]:
    """RSS growth of the daemon per idle keep-alive connection (count connections held open)."""
    host, port = url.removeprefix("http://").split(":")
    request = f"GET /languages HTTP/1.1\r\nHost: {host}\r\nConnection: keep-alive\r\n\r\n".encode()
    writers: list[asyncio.StreamWriter] = []
    await asyncio.sleep(0.5)
    before = rss_bytes(pid)
    try:
        for _ in range(count):
            reader, writer = await asyncio.open_connection(host, int(port))
            writers.append(writer)
            writer.write(request)
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length")))
            await reader.readexactly(length)
        await asyncio.sleep(1.0)
        after = rss_bytes(pid)
    finally:
        for writer in writers:
            writer.close()
        await asyncio.gather(*(w.wait_closed() for w in writers), return_exceptions=True)
    return {"connections": count, "rss_before_mb": before / 2 ** 20, "rss_after_mb": after / 2 ** 20,
            "per_connection_kb": (after - before) / count / 1024}


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    """Start the daemon (default bcrypt cost), measure, stop."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < args.idle_connections + 200:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, args.idle_connections + 500), hard))
    results: dict[str, Any] = {"throughput": {}}
    with tempfile.TemporaryDirectory(prefix="idlakd-bench-") as tmp:
        server = start_server(Path(tmp) / "state", bcrypt_rounds=None,
                              settings={"login_max_failures_per_address": "100000"})
        try:
            async with aiohttp.ClientSession() as session:
                async with session.post(server.url + "/auth", json={
                        "uid": "admin", "password": server.password}) as resp:
                    admin = (await resp.json())["access_token"]
                async with session.post(server.url + "/users", json={"uid": "bench"},
                                        headers={"Authorization": f"Bearer {admin}"}) as resp:
                    bench_password = (await resp.json())["password"]
            for method, body in (("GET", None), ("POST", {"language": "en"})):
                for clients in (1, 16, 64):
                    figures = await closed_loop(server.url, method, "/voices", body, clients,
                                                args.seconds)
                    results["throughput"][f"{method} /voices x{clients}"] = figures
                    print(f"{method} /voices with {clients} clients: {figures['rps']:.0f} req/s "
                          f"(p50 {figures['p50_ms']:.1f} ms, p99 {figures['p99_ms']:.1f} ms)",
                          file=sys.stderr)
            results["languages_under_auth"] = await languages_under_auth(
                server.url, "bench", bench_password, 16, args.seconds * 2)
            print(f"GET /languages under /auth load: {results['languages_under_auth']}",
                  file=sys.stderr)
            results["idle_connections"] = await idle_connection_memory(
                server.url, server.process.pid, args.idle_connections)
        finally:
            results["server_exit"] = server.stop()
    return results


def to_markdown(results: dict[str, Any]) -> str:
    """The figures as Markdown tables."""
    lines = ["| request | clients | req/s | p50 ms | p99 ms |", "|---|---:|---:|---:|---:|"]
    for name, f in results["throughput"].items():
        request, clients = name.rsplit(" x", 1)
        lines.append(f"| `{request}` | {clients} | {f['rps']:.0f} | {f['p50_ms']:.1f} | "
                     f"{f['p99_ms']:.1f} |")
    a = results["languages_under_auth"]
    lines += ["", "| GET /languages while 16 clients POST /auth (bcrypt 12) | value |", "|---|---:|",
              f"| p50 | {a['p50_ms']:.1f} ms |", f"| p99 | {a['p99_ms']:.1f} ms |",
              f"| max | {a['max_ms']:.1f} ms |", f"| samples | {a['samples']} |",
              f"| logins/s achieved | {a['logins_per_s']:.1f} |"]
    m = results["idle_connections"]
    lines += ["", "| idle keep-alive connections | value |", "|---|---:|",
              f"| connections held | {m['connections']} |",
              f"| daemon RSS before / after | {m['rss_before_mb']:.1f} / {m['rss_after_mb']:.1f} MB |",
              f"| per connection | {m['per_connection_kb']:.1f} KB |"]
    return "\n".join(lines)


def main() -> int:
    """Entry point: print the figures (Markdown, then JSON)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="seconds per throughput figure")
    parser.add_argument("--idle-connections", type=int, default=1000)
    args = parser.parse_args()
    results = asyncio.run(main_async(args))
    print(to_markdown(results))
    print()
    print(json.dumps(results, indent=2, default=float))
    target_ok = results["languages_under_auth"]["p99_ms"] < 20
    print(f"\nGET /languages p99 under /auth load < 20 ms: {'yes' if target_ok else 'NO'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
