"""Graceful shutdown of the real `idlakd serve`: running streams finish, new requests are refused."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient
from tests.helpers.app import assert_error, bearer
from tests.helpers.daemon import SLOW_CHUNK_BYTES, login, start_daemon, wait_listening

from idlakd.web.keys import runtime_key

# Whole daemons under signals and faults: the scenario group (README's second pytest run).
pytestmark = pytest.mark.scenario

FOUR_SENTENCES = ("First sentence here. Second sentence here. Third sentence here. "
                  "Fourth one here.")


def _alive(pid: int) -> bool:
    """Whether a process exists (and is not a zombie)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_stream_started_before_the_signal_completes(tmp_path: Path, signum: signal.Signals) -> None:
    # SIGINT goes to the whole process group, as Ctrl-C in a terminal does: workers and the
    # programs they run must not die with it.
    daemon = start_daemon(tmp_path, new_session=signum == signal.SIGINT)
    try:
        await wait_listening(daemon)
        async with aiohttp.ClientSession() as session:
            token = await login(session, daemon.url, "admin", daemon.admin_password())
            async with session.post(daemon.url + "/speech", headers=bearer(token),
                                    json={"voice_id": "slow", "text": FOUR_SENTENCES}) as resp:
                assert resp.status == 200
                first = await resp.content.readany()  # the first sentence is out
                workers = daemon.children()
                assert workers, "the stream should be served by a worker"
                if signum == signal.SIGINT:
                    os.killpg(daemon.process.pid, signal.SIGINT)
                else:
                    daemon.signal(signum)
                signalled = time.monotonic()

                # Stop accepting: a new connection is refused while the stream still runs.
                async with aiohttp.ClientSession() as fresh:
                    while True:
                        try:
                            async with fresh.get(daemon.url + "/healthz") as probe:
                                await probe.read()
                        except aiohttp.ClientConnectorError:
                            break
                        assert time.monotonic() - signalled < 5, "still accepting after the signal"
                        await asyncio.sleep(0.05)
                assert daemon.process.poll() is None, "exited before the stream finished"

                rest = await resp.read()  # raises ClientPayloadError on a truncated chunked body
            finished = time.monotonic()
        body = first + rest
        assert body[:4] == b"RIFF" and body[8:12] == b"WAVE"
        assert len(body) == 44 + 4 * SLOW_CHUNK_BYTES, "the whole text must be spoken"
        assert finished - signalled > 1.0, "the stream should have outlived the signal"

        assert await daemon.wait(timeout=30) == 0
        for pid in workers:
            assert not _alive(pid), f"worker {pid} left running"
        log = daemon.log()
        assert f"{signum.name} received" in log and "idlakd stopped" in log
        assert "Traceback" not in log
        # The real daemon's log (stderr, as under journald): nothing secret in it either.
        for secret in (token, *token.split("."), daemon.admin_password(), FOUR_SENTENCES[:20]):
            assert secret not in log
        assert log.count('"POST /speech" 200') == 1 and "uid=admin" in log
    finally:
        daemon.kill()


async def test_grace_period_bounds_the_wait(tmp_path: Path) -> None:
    daemon = start_daemon(tmp_path, shutdown_grace_seconds="0.5")
    try:
        await wait_listening(daemon)
        async with aiohttp.ClientSession() as session:
            token = await login(session, daemon.url, "admin", daemon.admin_password())
            text = " ".join(f"Sentence number {n}." for n in range(30))  # ~27 s of slow synthesis
            async with session.post(daemon.url + "/speech", headers=bearer(token),
                                    json={"voice_id": "slow", "text": text}) as resp:
                assert resp.status == 200
                await resp.content.readany()
                daemon.signal(signal.SIGTERM)
                start = time.monotonic()
                with pytest.raises(aiohttp.ClientPayloadError):
                    await resp.read()  # cut short: never a clean end of a truncated file
        assert await daemon.wait(timeout=20) == 0
        assert time.monotonic() - start < 10
    finally:
        daemon.kill()


async def test_client_that_stopped_reading_does_not_stretch_the_grace_period(
        tmp_path: Path) -> None:
    """A stream stuck on a client that reads nothing is cut when the grace period ends."""
    daemon = start_daemon(tmp_path, shutdown_grace_seconds="2")
    try:
        await wait_listening(daemon)
        async with aiohttp.ClientSession() as session:
            token = await login(session, daemon.url, "admin", daemon.admin_password())
        text = "A long sentence about nothing in particular, said again and again. " * 200
        body = json.dumps({"voice_id": "alba", "text": text}).encode()
        reader, writer = await asyncio.open_connection("127.0.0.1", daemon.port)
        writer.write(b"POST /speech HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Authorization: Bearer " + token.encode() + b"\r\n"
                     b"Content-Length: %d\r\n\r\n" % len(body) + body)
        try:
            await writer.drain()
            assert (await reader.read(15)) == b"HTTP/1.1 200 OK"
            await asyncio.sleep(1.5)  # now read nothing: the server's writes back up
            daemon.signal(signal.SIGTERM)
            start = time.monotonic()
            assert await daemon.wait(timeout=20) == 0
            # grace (2 s) plus stopping workers; aiohttp alone would wait twice the grace period
            assert time.monotonic() - start < 3.3
        finally:
            writer.close()
    finally:
        daemon.kill()


async def test_restart_keeps_users_tokens_and_revocations(tmp_path: Path) -> None:
    """`systemctl restart`: SIGTERM, start again on the same state directory."""
    daemon = start_daemon(tmp_path)
    try:
        await wait_listening(daemon)
        async with aiohttp.ClientSession() as session:
            admin = await login(session, daemon.url, "admin", daemon.admin_password())
            async with session.post(daemon.url + "/users", headers=bearer(admin),
                                    json={"uid": "carol"}) as resp:
                carol_password = (await resp.json())["password"]
            revoked = await login(session, daemon.url, "carol", carol_password)
            async with session.post(daemon.url + "/auth/expire", headers=bearer(revoked)) as resp:
                assert resp.status == 200
        daemon.signal(signal.SIGTERM)
        assert await daemon.wait(timeout=30) == 0
    finally:
        daemon.kill()
    again = start_daemon(tmp_path, port=str(daemon.port))
    try:
        await wait_listening(again)
        assert "<User admin:" not in again.output()  # not a first start
        async with aiohttp.ClientSession() as session:
            async with session.get(again.url + "/users", headers=bearer(admin)) as resp:
                assert resp.status == 200, "a token from before the restart stays valid"
                assert {u["id"] for u in (await resp.json())["users"]} == {"admin", "carol"}
            async with session.get(again.url + "/users", headers=bearer(revoked)) as resp:
                assert resp.status == 401
                assert (await resp.json())["message"] == "Access token has expired"
            await login(session, again.url, "carol", carol_password)
        again.signal(signal.SIGTERM)
        assert await again.wait(timeout=30) == 0
    finally:
        again.kill()


async def test_speech_and_readiness_answer_503_while_stopping(
        client: TestClient[Any, Any], user_token: str) -> None:
    client.app[runtime_key].stopping = True
    resp = await client.post("/speech", headers=bearer(user_token),
                             json={"voice_id": "alba", "text": "Hello."})
    await assert_error(resp, 503, "Server is shutting down, try again later")
    assert resp.headers["Retry-After"] == "5"
    await assert_error(await client.get("/readyz"), 503, contains="shutting down")
    assert (await client.get("/healthz")).status == 200  # alive, just not ready


async def test_while_draining_readiness_fails_and_speech_is_served(
        client: TestClient[Any, Any], user_token: str) -> None:
    client.app[runtime_key].draining = True
    resp = await client.get("/readyz")
    await assert_error(resp, 503, "Not ready: the server is draining before it shuts down")
    assert resp.headers["Retry-After"] == "5"
    resp = await client.post("/speech", headers=bearer(user_token),
                             json={"voice_id": "alba", "text": "Hello."})
    assert resp.status == 200 and (await resp.read())[:4] == b"RIFF"
    assert (await client.get("/healthz")).status == 200


async def test_sigterm_drains_then_stops_listening(tmp_path: Path) -> None:
    """SIGTERM: /readyz fails at once, new requests are still served for drain_seconds, then
    the daemon stops listening and the stream that was running finishes."""
    daemon = start_daemon(tmp_path, drain_seconds="3")
    try:
        await wait_listening(daemon)
        async with aiohttp.ClientSession() as session:
            token = await login(session, daemon.url, "admin", daemon.admin_password())
            async with session.post(daemon.url + "/speech", headers=bearer(token),
                                    json={"voice_id": "slow", "text": FOUR_SENTENCES}) as resp:
                assert resp.status == 200
                first = await resp.content.readany()
                daemon.signal(signal.SIGTERM)
                signalled = time.monotonic()
                # New connections, as a balancer that has not noticed yet would open them.
                async with aiohttp.ClientSession() as fresh:
                    while True:
                        async with fresh.get(daemon.url + "/readyz") as probe:
                            if probe.status == 503:
                                assert "draining" in (await probe.json())["message"]
                                break
                        assert time.monotonic() - signalled < 1
                        await asyncio.sleep(0.02)
                    async with fresh.post(daemon.url + "/speech", headers=bearer(token),
                                          json={"voice_id": "alba", "text": "Still here."}) as new:
                        assert new.status == 200 and (await new.read())[:4] == b"RIFF"
                    while True:
                        try:
                            async with fresh.get(daemon.url + "/healthz") as probe:
                                await probe.read()
                        except aiohttp.ClientConnectorError:
                            break
                        assert time.monotonic() - signalled < 6, "still accepting after draining"
                        await asyncio.sleep(0.05)
                stopped_listening = time.monotonic() - signalled
                rest = await resp.read()
        assert 2.9 < stopped_listening, "stopped listening before drain_seconds"
        assert len(first + rest) == 44 + 4 * SLOW_CHUNK_BYTES, "the running stream finished"
        assert await daemon.wait(timeout=30) == 0
        assert "draining for 3 s" in daemon.log() and "Traceback" not in daemon.log()
    finally:
        daemon.kill()


async def test_second_signal_cuts_draining_short(tmp_path: Path) -> None:
    daemon = start_daemon(tmp_path, drain_seconds="60")
    try:
        await wait_listening(daemon)
        daemon.signal(signal.SIGTERM)
        async with aiohttp.ClientSession() as session:
            while True:
                async with session.get(daemon.url + "/readyz") as probe:
                    if probe.status == 503:
                        break
                await asyncio.sleep(0.02)
        daemon.signal(signal.SIGTERM)
        start = time.monotonic()
        assert await daemon.wait(timeout=20) == 0
        assert time.monotonic() - start < 10
        assert "draining cut short" in daemon.log()
    finally:
        daemon.kill()


async def test_unusable_port_fails_start_with_one_line(tmp_path: Path) -> None:
    blocker = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    try:
        port = blocker.sockets[0].getsockname()[1]
        daemon = start_daemon(tmp_path, port=str(port))
        try:
            assert await daemon.wait(timeout=30) == 1
            assert "address already in use" in daemon.log().lower()
            assert "Traceback" not in daemon.log()
        finally:
            daemon.kill()
    finally:
        blocker.close()
        await blocker.wait_closed()
    assert os.path.exists(tmp_path / "state" / "idlakd.db")
