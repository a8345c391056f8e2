"""Connection hygiene against a real `idlakd serve`, from outside, over raw sockets (issue 9)."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import re
import resource
import time
from pathlib import Path
from typing import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from tests.helpers.daemon import Daemon, start_daemon, wait_listening
from idlakd.web.connections import ACCEPT_ERROR_MESSAGE, AcceptErrorLog
from idlakd.web.ops.metrics import Metrics

# Time the server gets beyond a deadline before a test calls it missed.
MARGIN = 1.0
# How long a test waits for something that must not happen before calling it missing.
PATIENCE = 5.0

Stream = tuple[asyncio.StreamReader, asyncio.StreamWriter]


@contextlib.asynccontextmanager
async def serving(tmp_path: Path, **settings: str) -> AsyncIterator[Daemon]:
    """A listening daemon with these settings, killed afterwards."""
    daemon = start_daemon(tmp_path, **settings)
    try:
        await wait_listening(daemon)
        yield daemon
    finally:
        daemon.kill()


async def connect(daemon: Daemon) -> Stream:
    """A raw TCP connection to the daemon."""
    return await asyncio.open_connection("127.0.0.1", daemon.port)


async def read_until_closed(reader: asyncio.StreamReader, timeout: float = PATIENCE) -> bytes:
    """Everything the server sends until it closes (a reset counts as closed)."""
    data = b""
    async with asyncio.timeout(timeout):
        while True:
            try:
                chunk = await reader.read(65536)
            except ConnectionResetError:
                return data
            if not chunk:
                return data
            data += chunk


async def trickle(writer: asyncio.StreamWriter, head: bytes, interval: float = 0.2) -> int:
    """Send head, then one byte every interval until the server closes; bytes trickled."""
    writer.write(head)
    sent = 0
    with contextlib.suppress(ConnectionError):
        while True:
            await asyncio.sleep(interval)
            writer.write(b"a")
            await writer.drain()
            sent += 1
    return sent


def json_body(response: bytes) -> tuple[int, dict[str, object]]:
    """Status code and JSON body of one raw HTTP response."""
    head, _, body = response.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, json.loads(body)


async def get(daemon: Daemon, path: str) -> tuple[int, str]:
    """A normal request through aiohttp's client: status and text."""
    async with aiohttp.ClientSession() as session:
        async with session.get(daemon.url + path) as resp:
            return resp.status, await resp.text()


async def metric(daemon: Daemon, name: str) -> float:
    """One unlabelled value from /metrics."""
    status, text = await get(daemon, "/metrics")
    assert status == 200, text
    match = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    assert match, f"{name} not in /metrics"
    return float(match.group(1))


async def wait_no_connections(daemon: Daemon) -> None:
    """Wait until the daemon counts no connection but the one asking."""
    deadline = time.monotonic() + PATIENCE
    while True:
        reader, writer = await connect(daemon)
        # The server closes this one itself, and frees its place before the client sees EOF.
        writer.write(b"GET /metrics HTTP/1.1\r\nHost: idlakd\r\nConnection: close\r\n\r\n")
        text = (await read_until_closed(reader)).decode()
        writer.close()
        if re.search(r"^idlakd_http_connections_open 1\.0$", text, re.MULTILINE):
            return
        assert time.monotonic() < deadline, text
        await asyncio.sleep(0.05)


def assert_quiet_log(daemon: Daemon) -> None:
    """No ERROR line and no traceback in the daemon's log."""
    log = daemon.log()
    assert " ERROR " not in log and "Traceback" not in log, log


async def test_silent_connection_is_closed_at_the_header_timeout(tmp_path: Path) -> None:
    """Finding 5: a connection that sends nothing is closed after header_timeout_seconds."""
    async with serving(tmp_path, header_timeout_seconds="1") as daemon:
        reader, writer = await connect(daemon)
        start = time.monotonic()
        assert await read_until_closed(reader) == b""
        elapsed = time.monotonic() - start
        writer.close()
        assert 0.9 <= elapsed <= 1 + MARGIN, elapsed
        assert_quiet_log(daemon)


async def test_trickled_headers_are_cut_at_the_header_timeout(tmp_path: Path) -> None:
    """Finding 5: a head trickled a byte every 0.2 s does not push the deadline back."""
    async with serving(tmp_path, header_timeout_seconds="1.5") as daemon:
        reader, writer = await connect(daemon)
        start = time.monotonic()
        sender = asyncio.create_task(
            trickle(writer, b"GET /healthz HTTP/1.1\r\nHost: idlakd\r\nX-Slow: "))
        assert await read_until_closed(reader) == b""  # no response: the head never completed
        elapsed = time.monotonic() - start
        sent = await asyncio.wait_for(sender, PATIENCE)
        writer.close()
        assert 1.4 <= elapsed <= 1.5 + MARGIN, elapsed
        assert sent >= 5  # the trickle was under way when the server cut it
        # The same deadline holds for the next request on a kept-alive connection.
        reader, writer = await connect(daemon)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: idlakd\r\n\r\n")
        await reader.readuntil(b"\r\n\r\n")
        start = time.monotonic()
        await read_until_closed(reader)
        assert 1.4 <= time.monotonic() - start <= 1.5 + MARGIN
        writer.close()
        assert_quiet_log(daemon)


async def test_trickled_body_gets_408_at_the_body_timeout(tmp_path: Path) -> None:
    """Finding 5: a body trickled a byte every 0.2 s ends in 408 JSON and a close."""
    async with serving(tmp_path, header_timeout_seconds="1", body_timeout_seconds="2") as daemon:
        reader, writer = await connect(daemon)
        start = time.monotonic()
        head = (b"POST /auth HTTP/1.1\r\nHost: idlakd\r\nContent-Type: application/json\r\n"
                b"Content-Length: 1000\r\n\r\n{")
        sender = asyncio.create_task(trickle(writer, head))
        response = await read_until_closed(reader)
        elapsed = time.monotonic() - start
        sender.cancel()
        writer.close()
        # Past the header timeout (the head was complete), at the body timeout.
        assert 1.9 <= elapsed <= 2 + MARGIN, elapsed
        status, body = json_body(response)
        assert status == 408, response
        assert "2 seconds" in str(body["message"])
        assert b"Connection: close" in response
        assert await metric(daemon, "idlakd_http_body_timeouts_total") == 1
        assert_quiet_log(daemon)


async def test_connections_beyond_max_connections_are_closed_at_once(tmp_path: Path) -> None:
    """max_connections: the N+1th is closed at once; the N still work; a place frees on close."""
    async with serving(tmp_path, max_connections="3", header_timeout_seconds="10") as daemon:
        await wait_no_connections(daemon)
        held = [await connect(daemon) for _ in range(3)]
        reader, writer = await connect(daemon)  # accepted after the three (backlog order)
        start = time.monotonic()
        assert await read_until_closed(reader) == b""
        assert time.monotonic() - start < 0.5
        writer.close()
        for reader, writer in held:  # the admitted connections still serve
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: idlakd\r\n\r\n")
            assert (await reader.readuntil(b"\r\n")).startswith(b"HTTP/1.1 200")
        for _, writer in held:
            writer.close()
        deadline = time.monotonic() + PATIENCE
        while True:  # the server notices the closes within moments
            try:
                status, _ = await get(daemon, "/healthz")
                break
            except aiohttp.ClientConnectionError:
                assert time.monotonic() < deadline, "no place freed after the clients closed"
                await asyncio.sleep(0.05)
        assert status == 200
        assert await metric(daemon, "idlakd_http_connections_rejected_total") >= 1
        assert_quiet_log(daemon)


MALFORMED = (
    b"GARBAGE\r\n\r\n",
    b"GET / HTTP/1.1\r\nBad Header\r\n\r\n",
    b"GET /\x01 HTTP/1.1\r\nHost: idlakd\r\n\r\n",
    b"POST /auth HTTP/1.1\r\nHost: idlakd\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"zz\r\nabc\r\n0\r\n\r\n",
)


async def test_malformed_requests_are_counted_not_logged(tmp_path: Path) -> None:
    """Finding 7: 200 malformed requests: 400 JSON each, a counter, no ERROR or traceback."""
    async with serving(tmp_path) as daemon:
        for n in range(200):
            reader, writer = await connect(daemon)
            writer.write(MALFORMED[n % len(MALFORMED)])
            status, body = json_body(await read_until_closed(reader))
            writer.close()
            assert status == 400 and isinstance(body["message"], str)
        # Bad chunking after a head that came in an earlier packet: 400 at once, not a hang.
        reader, writer = await connect(daemon)
        writer.write(b"POST /auth HTTP/1.1\r\nHost: idlakd\r\nTransfer-Encoding: chunked\r\n"
                     b"Content-Type: application/json\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(0.1)
        writer.write(b"zz\r\nabc\r\n0\r\n\r\n")
        status, _ = json_body(await read_until_closed(reader, timeout=2))
        writer.close()
        assert status == 400
        assert_quiet_log(daemon)
        assert daemon.log().count("\n") < 20  # not even an access line per malformed request
        assert await metric(daemon, "idlakd_http_malformed_requests_total") == 201


async def test_descriptor_exhaustion_is_logged_once_and_recovers(tmp_path: Path) -> None:
    """Finding 5: out of descriptors, accept errors give one line (not one per second) and
    the daemon serves again once the idle connections go."""
    async with serving(tmp_path, header_timeout_seconds="30") as daemon:
        pid = daemon.process.pid
        await asyncio.sleep(0.3)  # start-up work that opens files has settled
        in_use = len(os.listdir(f"/proc/{pid}/fd"))
        # A few spare descriptors: the next connections exhaust them, the rest wait in the backlog.
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (in_use + 4, in_use + 4))
        # Accepted until the descriptors run out; asyncio then fails accept() for each one left
        # in the backlog, and again on each retry a second later.
        held = [await connect(daemon) for _ in range(8)]
        await asyncio.sleep(1.2)
        for _, writer in held:
            writer.close()
        deadline = time.monotonic() + PATIENCE
        while True:
            try:
                status, _ = await get(daemon, "/healthz")
                break
            except aiohttp.ClientConnectionError:
                assert time.monotonic() < deadline, "daemon did not recover:\n" + daemon.log()
                await asyncio.sleep(0.1)
        assert status == 200
        log = daemon.log()
        assert "Traceback" not in log, log
        lines = [line for line in log.splitlines() if "accept" in line.lower()]
        assert len(lines) == 1, log  # logged once ...
        assert "Too many open files" in lines[0]
        # ... though several failures happened
        assert await metric(daemon, "idlakd_http_accept_errors_total") >= 2


async def test_accept_errors_are_reported_once_a_window(caplog: pytest.LogCaptureFixture) -> None:
    """Through the loop's real exception handler: one line, then one count a window."""
    loop = asyncio.get_running_loop()
    metrics = Metrics()
    errors = AcceptErrorLog(metrics, interval=0.2)
    errors.install(loop)
    try:
        for _ in range(30):
            loop.call_exception_handler({"message": ACCEPT_ERROR_MESSAGE,
                                         "exception": OSError(errno.EMFILE, "Too many open files")})
        await asyncio.sleep(0.3)  # the window closes: one line with the count
        await asyncio.sleep(0.3)  # a quiet window: nothing more
    finally:
        errors.uninstall(loop)
    lines = [r.getMessage() for r in caplog.records if r.name == "idlakd.web.connections"]
    assert len(lines) == 2, lines
    assert "Too many open files" in lines[0] and "29 more times" in lines[1]
    assert metrics.registry.get_sample_value("idlakd_http_accept_errors_total") == 30
    assert loop.get_exception_handler() is None
