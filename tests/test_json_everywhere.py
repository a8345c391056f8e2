"""JSON everywhere (issue 11, item 6): parser-level errors in the error shape over raw sockets
against a real daemon, GET / for browsers and for programs, and a Server header without
versions on every kind of response."""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path
from typing import Any, AsyncIterator

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from idlakd import __version__
from tests.helpers.app import assert_error
from tests.helpers.daemon import Daemon, login, start_daemon, wait_listening

PARSER_MESSAGE = "The browser (or proxy) sent a request that this server could not understand."

# (name, bytes sent, the statuses the answer may have)
RAW_CASES: tuple[tuple[str, bytes, tuple[int, ...]], ...] = (
    ("malformed request line", b"GARBAGE\r\n\r\n", (400,)),
    ("bad method token", b"G@T / HTTP/1.1\r\nHost: idlakd\r\n\r\n", (400,)),
    ("unknown HTTP version", b"GET / HTTP/9.9\r\nHost: idlakd\r\n\r\n", (400,)),
    ("URL over 8190 bytes", b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: idlakd\r\n\r\n",
     (400, 414)),
    ("header over 8190 bytes",
     b"GET / HTTP/1.1\r\nHost: idlakd\r\nX-Long: " + b"a" * 9000 + b"\r\n\r\n", (400, 431)),
    ("too many headers", b"GET / HTTP/1.1\r\nHost: idlakd\r\n"
     + b"".join(b"X-%d: a\r\n" % n for n in range(200)) + b"\r\n", (400, 431)),
    ("header without a colon", b"GET / HTTP/1.1\r\nBad Header\r\n\r\n", (400,)),
    ("bad chunk size", b"POST /auth HTTP/1.1\r\nHost: idlakd\r\nTransfer-Encoding: chunked\r\n"
     b"\r\nzz\r\nabc\r\n0\r\n\r\n", (400,)),
    ("Content-Length and chunked", b"POST /auth HTTP/1.1\r\nHost: idlakd\r\nContent-Length: 3\r\n"
     b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", (400,)),
    ("unknown Expect", b"POST /auth HTTP/1.1\r\nHost: idlakd\r\nExpect: 100-nope\r\n"
     b"Content-Length: 2\r\nConnection: close\r\n\r\n{}", (417,)),
)


@contextlib.asynccontextmanager
async def serving(tmp_path: Path) -> AsyncIterator[Daemon]:
    """A listening `idlakd serve`, killed afterwards."""
    daemon = start_daemon(tmp_path)
    try:
        await wait_listening(daemon)
        yield daemon
    finally:
        daemon.kill()


async def raw(daemon: Daemon, data: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send bytes on a new connection; status, headers (lower-case names) and body of the answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", daemon.port)
    try:
        writer.write(data)
        received = b""
        async with asyncio.timeout(10):
            with contextlib.suppress(ConnectionResetError):
                while chunk := await reader.read(65536):
                    received += chunk
                    if _complete(received):
                        break
    finally:
        writer.close()
    head, _, body = received.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(lines[0].split(" ", 2)[1]), headers, body


def _complete(received: bytes) -> bool:
    """Whether a response with a Content-Length has fully arrived."""
    head, sep, body = received.partition(b"\r\n\r\n")
    if not sep:
        return False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value)
    return False


async def test_parser_errors_answer_the_json_error_shape(tmp_path: Path) -> None:
    async with serving(tmp_path) as daemon:
        for name, data, statuses in RAW_CASES:
            status, headers, body = await raw(daemon, data)
            assert status in statuses, (name, status, body)
            assert headers["content-type"] == "application/json", (name, headers)
            assert headers["server"] == "idlakd", (name, headers)
            message = json.loads(body)
            assert set(message) == {"message"} and isinstance(message["message"], str), name
            if status == 400:
                assert message["message"] == PARSER_MESSAGE, name
        # The daemon is still fine, and said nothing alarming about any of it.
        status, _, body = await raw(daemon, b"GET /healthz HTTP/1.1\r\nHost: idlakd\r\n"
                                            b"Connection: close\r\n\r\n")
        assert status == 200 and json.loads(body)["status"] == "ok"
        assert "Traceback" not in daemon.log() and " ERROR " not in daemon.log()


async def test_root_sends_browsers_to_the_admin_page(client: TestClient[Any, Any]) -> None:
    browser = ("text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,"
               "image/webp,*/*;q=0.8")
    resp = await client.get("/", headers={"Accept": browser}, allow_redirects=False)
    assert resp.status == 302 and resp.headers["Location"] == "/admin"
    assert "Accept" in resp.headers["Vary"]
    followed = await client.get("/", headers={"Accept": browser})
    assert followed.status == 200 and "/admin/login" in str(followed.url)
    assert "text/html" in followed.headers["Content-Type"]


async def test_root_answers_programs_with_a_json_index(client: TestClient[Any, Any]) -> None:
    for headers in ({}, {"Accept": "application/json"}, {"Accept": "*/*"}):
        resp = await client.get("/", headers=headers, allow_redirects=False)
        assert resp.status == 200, headers
        assert resp.headers["Content-Type"] == "application/json"
        assert "Accept" in resp.headers["Vary"]
        index = await resp.json()
        assert index["name"] == "idlakd" and index["version"] == __version__
        assert index["links"]["docs"] == "/docs"
        assert index["links"]["openapi"] == "/openapi.json"
    for link in index["links"].values():  # every link leads somewhere
        assert (await client.get(link, allow_redirects=False)).status in (200, 302, 303), link
    # Only GET: other methods are the usual 405.
    await assert_error(await client.post("/"), 405)


async def test_server_header_names_no_versions(tmp_path: Path) -> None:
    async with serving(tmp_path) as daemon:
        password = daemon.admin_password()
        seen: dict[str, str] = {}
        async with aiohttp.ClientSession(daemon.url) as http:
            token = await login(http, daemon.url, "admin", password)
            auth = {"Authorization": f"Bearer {token}"}
            requests: list[tuple[str, str, dict[str, Any]]] = [
                ("json 200", "/healthz", {}),
                ("index", "/", {}),
                ("redirect", "/", {"headers": {"Accept": "text/html"}}),
                ("404", "/nope", {}),
                ("401", "/users", {}),
                ("html page", "/docs", {}),
                ("admin page", "/admin/login", {}),
                ("metrics", "/metrics", {}),
            ]
            for name, path, options in requests:
                async with http.get(path, allow_redirects=False, **options) as resp:
                    await resp.read()
                    seen[name] = resp.headers.get("Server", "")
            async with http.post("/speech", headers=auth, json={
                    "voice_id": "alba", "text": "Hello there."}) as resp:
                assert resp.status == 200 and resp.headers.get("Transfer-Encoding") == "chunked"
                assert (await resp.read())[:4] == b"RIFF"
                seen["audio stream"] = resp.headers.get("Server", "")
            async with http.post("/speech", headers=auth, data=b"{") as resp:
                seen["400 body"] = resp.headers.get("Server", "")
        _, headers, _ = await raw(daemon, b"GARBAGE\r\n\r\n")
        seen["parser error"] = headers["server"]
    assert seen == {name: "idlakd" for name in seen}, seen


@pytest.mark.parametrize("accept", ["text/html", "application/json"])
async def test_server_header_in_process(client: TestClient[Any, Any], accept: str) -> None:
    """The app itself (not only the daemon's connection handler) names no versions."""
    for path in ("/", "/nope", "/voices", "/admin"):
        resp = await client.get(path, headers={"Accept": accept}, allow_redirects=False)
        assert resp.headers["Server"] == "idlakd", (path, resp.headers)
