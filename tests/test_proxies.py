"""trusted_proxies from outside: forged X-Forwarded-For / Forwarded from an untrusted and a
trusted peer (the real daemon; client sockets bound to distinct loopback addresses), and
what the resulting client address feeds: the login throttle and the access log."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from pathlib import Path
from typing import AsyncIterator, Awaitable, Callable

import aiohttp
import pytest

from tests.helpers.daemon import REPO, Daemon, free_port, start_daemon, wait_listening

PROXY = "127.0.0.1"  # trusted_proxies in these tests
STRANGER = "127.0.0.2"  # another loopback peer, not trusted


def session_from(address: str) -> aiohttp.ClientSession:
    """A client whose connections leave from this loopback address."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(address, 0)))


Serve = Callable[..., Awaitable[Daemon]]


@pytest.fixture
async def serve(tmp_path: Path) -> AsyncIterator[Serve]:
    """Start `idlakd serve` with 3 failures allowed per address, plus the given settings."""
    started: list[Daemon] = []

    async def start(**settings: str) -> Daemon:
        daemon = start_daemon(tmp_path, login_max_failures_per_address="3",
                              login_max_failures="100", **settings)
        started.append(daemon)
        await wait_listening(daemon)
        return daemon

    yield start
    for daemon in started:
        daemon.kill()


async def login_status(session: aiohttp.ClientSession, daemon: Daemon, uid: str, password: str,
                       headers: dict[str, str] | None = None) -> int:
    """POST /auth; the status."""
    async with session.post(daemon.url + "/auth", json={"uid": uid, "password": password},
                            headers=headers) as resp:
        await resp.read()
        return resp.status


async def access_addresses(daemon: Daemon, marker: str) -> list[str]:
    """Client addresses of the access lines of requests to /voices/<marker>."""
    await asyncio.sleep(0.3)  # an access line is written after its response
    return re.findall(rf'^.*idlakd\.access: (\S+) "GET /voices/{marker}"', daemon.log(), re.M)


async def probe(session: aiohttp.ClientSession, daemon: Daemon, marker: str,
                headers: dict[str, str]) -> None:
    """One request whose access line can be found by its path."""
    async with session.get(f"{daemon.url}/voices/{marker}", headers=headers) as resp:
        assert resp.status == 404


async def test_nothing_is_believed_by_default(serve: Serve) -> None:
    """No trusted_proxies: a forged header from the loopback changes nothing."""
    daemon = await serve()
    async with session_from(PROXY) as session:
        await probe(session, daemon, "m1", {"X-Forwarded-For": "203.0.113.9"})
        await probe(session, daemon, "m2", {"Forwarded": "for=203.0.113.9"})
        for n in range(3):
            forged = {"X-Forwarded-For": f"203.0.113.{n}"}
            assert await login_status(session, daemon, "nobody", "x", forged) == 401
        # Each failure had a "new" forwarded address; all counted against the peer.
        forged = {"X-Forwarded-For": "203.0.113.200"}
        assert await login_status(session, daemon, "nobody", "x", forged) == 429
    assert await access_addresses(daemon, "m1") == [PROXY]
    assert await access_addresses(daemon, "m2") == [PROXY]


async def test_an_untrusted_peer_cannot_forge_its_address(serve: Serve) -> None:
    """From 127.0.0.2 (not trusted) X-Forwarded-For and Forwarded are ignored."""
    daemon = await serve(trusted_proxies=f"{PROXY}, 10.0.0.0/8")
    async with session_from(STRANGER) as session:
        await probe(session, daemon, "u1", {"X-Forwarded-For": "198.51.100.1"})
        await probe(session, daemon, "u2", {"Forwarded": 'for="198.51.100.1"'})
        for n in range(3):
            forged = {"X-Forwarded-For": f"198.51.100.{n}", "Forwarded": f"for=198.51.100.{n}"}
            assert await login_status(session, daemon, "nobody", "x", forged) == 401
        forged = {"X-Forwarded-For": "198.51.100.99"}
        assert await login_status(session, daemon, "nobody", "x", forged) == 429
    assert await access_addresses(daemon, "u1") == [STRANGER]
    assert await access_addresses(daemon, "u2") == [STRANGER]
    # The proxy's own clients were not touched by the stranger's failures.
    async with session_from(PROXY) as proxy:
        assert await login_status(proxy, daemon, "nobody", "x",
                                  {"X-Forwarded-For": "198.51.100.99"}) == 401


async def test_a_trusted_proxy_names_the_client(serve: Serve) -> None:
    """From the trusted proxy: the right-most untrusted X-Forwarded-For hop is the client, for
    the throttle and the access log; what the client wrote to the left of it, and any Forwarded
    header (the proxy passes it through as the client sent it), are not believed."""
    daemon = await serve(trusted_proxies=f"{PROXY}, 10.0.0.0/8")
    async with session_from(PROXY) as proxy:
        # The client forged "1.1.1.1"; nginx appended the peer it saw, then an inner proxy (trusted).
        await probe(proxy, daemon, "t1", {"X-Forwarded-For": "1.1.1.1, 203.0.113.5, 10.1.2.3"})
        await probe(proxy, daemon, "t3", {"X-Forwarded-For": "::ffff:203.0.113.6"})
        # A client's own Forwarded beside the proxy's X-Forwarded-For: only the latter counts.
        await probe(proxy, daemon, "t5", {"X-Forwarded-For": "203.0.113.8",
                                          "Forwarded": "for=198.51.100.8"})
        await probe(proxy, daemon, "t9", {"Forwarded": "for=198.51.100.9"})
        # Not an address where one must be read: the proxy's own address, or the nearest
        # trusted hop to the client.
        await probe(proxy, daemon, "t6", {"X-Forwarded-For": "203.0.113.9, garbage"})
        await probe(proxy, daemon, "t10", {"X-Forwarded-For": "garbage, 10.9.9.9"})
        # One hop: the client nginx saw.
        await probe(proxy, daemon, "t8", {"X-Forwarded-For": "1.1.1.1"})
        # Failures count per forwarded client: 3 from one, then the 4th is 429; another is not.
        one, other = {"X-Forwarded-For": "203.0.113.50"}, {"X-Forwarded-For": "203.0.113.51"}
        for _ in range(3):
            assert await login_status(proxy, daemon, "nobody", "x", one) == 401
        assert await login_status(proxy, daemon, "nobody", "x", one) == 429
        # A forged left-most hop does not escape the client's bucket, nor does a Forwarded
        # header that disagrees with it (it once made the proxy's own address the client).
        spoof = {"X-Forwarded-For": "192.0.2.1, 203.0.113.50"}
        assert await login_status(proxy, daemon, "nobody", "x", spoof) == 429
        spoof = {"X-Forwarded-For": "203.0.113.50", "Forwarded": "for=192.0.2.1"}
        assert await login_status(proxy, daemon, "nobody", "x", spoof) == 429
        assert await login_status(proxy, daemon, "nobody", "x", other) == 401
    assert await access_addresses(daemon, "t1") == ["203.0.113.5"]
    assert await access_addresses(daemon, "t3") == ["203.0.113.6"]
    assert await access_addresses(daemon, "t5") == ["203.0.113.8"]
    assert await access_addresses(daemon, "t9") == [PROXY]
    assert await access_addresses(daemon, "t6") == [PROXY]
    assert await access_addresses(daemon, "t10") == ["10.9.9.9"]
    assert await access_addresses(daemon, "t8") == ["1.1.1.1"]


async def test_a_proxy_that_writes_forwarded(serve: Serve) -> None:
    """forwarded_header = Forwarded: its for= is read from the right, X-Forwarded-For never."""
    daemon = await serve(trusted_proxies=f"{PROXY}, 10.0.0.0/8", forwarded_header="Forwarded")
    async with session_from(PROXY) as proxy:
        await probe(proxy, daemon, "f1", {"Forwarded": 'for=1.1.1.1, for="[2001:db8::17]:4711"'})
        await probe(proxy, daemon, "f2", {"Forwarded": "for=unknown"})
        await probe(proxy, daemon, "f3", {"Forwarded": "for=203.0.113.7;proto=https",
                                          "X-Forwarded-For": "198.51.100.7"})
        await probe(proxy, daemon, "f4", {"X-Forwarded-For": "198.51.100.8"})
    assert await access_addresses(daemon, "f1") == ["2001:db8::17"]
    assert await access_addresses(daemon, "f2") == [PROXY]
    assert await access_addresses(daemon, "f3") == ["203.0.113.7"]
    assert await access_addresses(daemon, "f4") == [PROXY]


async def raw_get(daemon: Daemon, marker: str, headers: bytes) -> None:
    """A raw HTTP/1.1 GET of /voices/<marker> from the proxy's address, with these header lines."""
    reader, writer = await asyncio.open_connection("127.0.0.1", daemon.port,
                                                   local_addr=(PROXY, 0))
    writer.write(b"GET /voices/" + marker.encode() + b" HTTP/1.1\r\nHost: x\r\n"
                 b"Connection: close\r\n" + headers + b"\r\n")
    await writer.drain()
    assert (await reader.read()).startswith(b"HTTP/1.1 404")
    writer.close()
    await writer.wait_closed()


async def test_several_forwarded_for_headers_are_one_list(serve: Serve) -> None:
    """Two X-Forwarded-For lines: from a trusted proxy one list (the last line's address is the
    client); from the same peer without trusted_proxies, the peer."""
    lines = b"X-Forwarded-For: 1.1.1.1\r\nX-Forwarded-For: 203.0.113.77\r\n"
    trusting = await serve(trusted_proxies=PROXY)
    await raw_get(trusting, "h1", lines)
    assert await access_addresses(trusting, "h1") == ["203.0.113.77"]
    trusting.kill()
    plain = await serve()
    await raw_get(plain, "h2", lines)
    assert await access_addresses(plain, "h2") == [PROXY]


def test_a_bad_trusted_proxies_entry_stops_the_start(tmp_path: Path) -> None:
    """A typo in trusted_proxies is a configuration error naming it, not a silent 'trust none'."""
    proc = subprocess.run(
        [sys.executable, "-m", "idlakd", "--set", f"state_dir={tmp_path / 'state'}",
         "--set", "trusted_proxies=127.0.0.1, 10.0.0.0/33", "serve", "--port", str(free_port())],
        capture_output=True, text=True, timeout=60, cwd=REPO)
    assert proc.returncode == 2, proc.stderr
    assert "trusted_proxies" in proc.stderr and "10.0.0.0/33" in proc.stderr
