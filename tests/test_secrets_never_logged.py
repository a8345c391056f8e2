"""A real daemon logging at DEBUG, driven through logins, speech, the admin page and errors: no secret it was given or gave out appears in its log."""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import sys
from pathlib import Path

import aiohttp
import jwt
import pytest

from tests.helpers.admin import csrf_of, secret_of
from tests.helpers.app import bearer
from tests.helpers.daemon import REPO, Daemon, login, start_daemon, wait_listening
from tests.helpers.postgres import state_env


def look_alike(password: str) -> str:
    """A wrong password one character away from a real one (a typo a log must not keep either)."""
    return password[:-1] + ("x" if password[-1] != "x" else "y")


# A leak of this many characters of a secret counts (a log line may cut or mask the rest).
WINDOW = 12


def signature(signed: str) -> str:
    """The part of a JWT or signed cookie that must stay secret (its claims are readable anyway)."""
    return signed.rsplit(".", 1)[-1]


def leaks(secret: str, log: str) -> bool:
    """Whether any WINDOW characters in a row of the secret appear in the log."""
    return any(secret[i:i + WINDOW] in log for i in range(max(1, len(secret) - WINDOW + 1)))


async def malformed_request_with(daemon: Daemon, token: str) -> bytes:
    """A request the HTTP parser refuses, carrying a token: the parser's error quotes raw bytes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", daemon.port)
    writer.write(b"GET /users HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + token.encode()
                 + b"\r\nNo colon in this header " + token.encode() + b"\r\n\r\n")
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), timeout=10)
    writer.close()
    return answer


async def exercise_api(session: aiohttp.ClientSession, daemon: Daemon, admin_password: str,
                       found: list[str]) -> None:
    """Logins right and wrong, users, password changes, speech and error paths, all over HTTP."""
    url = daemon.url
    async with session.post(url + "/auth", json={"uid": "admin",
                                                 "password": look_alike(admin_password)}) as resp:
        assert resp.status == 401
    found.append(look_alike(admin_password))
    admin_token = await login(session, url, "admin", admin_password)
    found.append(signature(admin_token))
    async with session.post(url + "/users", json={"uid": "alice"}, headers=bearer(admin_token)) as resp:
        assert resp.status == 200
        alice_password = (await resp.json())["password"]
    found.append(alice_password)
    alice_token = await login(session, url, "alice", alice_password)
    found.append(signature(alice_token))
    chosen = secrets.token_urlsafe(12)
    found.append(chosen)
    change = {"old_password": alice_password, "new_password": chosen}
    async with session.post(url + "/auth/password", json=change, headers=bearer(alice_token)) as resp:
        assert resp.status == 200, await resp.text()
    # The change ended every token issued before it, this one too.
    alice_token = await login(session, url, "alice", chosen)
    found.append(signature(alice_token))
    wrong_old = {"old_password": look_alike(chosen), "new_password": chosen + "-2"}
    found.append(look_alike(chosen))
    async with session.post(url + "/auth/password", json=wrong_old, headers=bearer(alice_token)) as resp:
        assert resp.status == 422
    async with session.post(url + "/users/alice/password", headers=bearer(admin_token)) as resp:
        assert resp.status == 200
        reset = (await resp.json())["password"]
    found.append(reset)
    alice_token = await login(session, url, "alice", reset)
    found.append(signature(alice_token))
    speech = {"voice_id": "alba", "text": "Hello there."}
    async with session.post(url + "/speech", json=speech, headers=bearer(alice_token)) as resp:
        assert resp.status == 200 and len(await resp.read()) > 1000
    for body, status in ((dict(speech, voice_id="nope"), 400), (dict(speech, audio_format="x"), 422)):
        async with session.post(url + "/speech", json=body, headers=bearer(alice_token)) as resp:
            assert resp.status == status
    # Secrets where they do not belong: a query string, a malformed body, a non-string field.
    async with session.get(url + "/voices", params={"access_token": alice_token}) as resp:
        assert resp.status == 200
    broken = '{"uid": "alice", "password": "%s"' % reset
    async with session.post(url + "/auth", data=broken,
                            headers={"Content-Type": "application/json"}) as resp:
        assert resp.status == 400
    async with session.post(url + "/auth", json={"uid": "alice", "password": [reset]}) as resp:
        assert resp.status == 422
    # Tokens that fail: forged with another key, then a revoked one.
    forged = jwt.encode({"sub": "admin", "iat": 0, "nbf": 0, "exp": 2**31, "jti": "x"},
                        secrets.token_bytes(32), algorithm="HS256")
    found.append(signature(forged))
    async with session.get(url + "/users", headers=bearer(forged)) as resp:
        assert resp.status == 401
    async with session.post(url + "/auth/expire", headers=bearer(admin_token)) as resp:
        assert resp.status == 200
    async with session.get(url + "/users", headers=bearer(admin_token)) as resp:
        assert resp.status == 401
    assert b" 400 " in (await malformed_request_with(daemon, alice_token)).split(b"\r\n")[0]


async def exercise_admin_page(session: aiohttp.ClientSession, daemon: Daemon, admin_password: str,
                              found: list[str]) -> None:
    """Sign in wrongly and rightly, create a user, try a voice: the session cookie is a secret too."""
    url = daemon.url
    for password, status in ((look_alike(admin_password), 401), (admin_password, 200)):
        async with session.get(url + "/admin/login") as resp:
            csrf = csrf_of(await resp.text())
        form = {"csrf_token": csrf, "uid": "admin", "password": password}
        async with session.post(url + "/admin/login", data=form) as resp:
            assert resp.status == status, await resp.text()
    found += [signature(cookie.value) for cookie in session.cookie_jar if len(cookie.value) >= 16]
    async with session.get(url + "/admin/users") as resp:
        csrf = csrf_of(await resp.text())
    async with session.post(url + "/admin/users", data={"csrf_token": csrf, "uid": "bob"}) as resp:
        assert resp.status == 200
        found.append(secret_of(await resp.text()))
    async with session.post(url + "/admin/speech", headers={"X-CSRF-Token": csrf},
                            json={"voice_id": "alba", "text": "Hi.", "stream": False}) as resp:
        assert resp.status == 200 and (await resp.read())[:4] == b"RIFF"


def reset_from_the_shell(tmp_path: Path, uid: str) -> tuple[str, str]:
    """`idlakd user passwd UID` on the daemon's database: (the password it printed, its stderr)."""
    proc = subprocess.run(
        [sys.executable, "-m", "idlakd", "--set", f"state_dir={tmp_path / 'state'}",
         "--set", "log_level=DEBUG", "user", "passwd", uid],
        env=os.environ | state_env(tmp_path / "state"), cwd=REPO, capture_output=True, text=True, timeout=60, check=True)
    return proc.stdout.split(":")[1], proc.stderr


async def test_no_secret_reaches_the_log(tmp_path: Path) -> None:
    daemon = start_daemon(tmp_path, log_level="DEBUG")
    secrets_seen: list[str] = []
    try:
        await wait_listening(daemon)
        admin_password = daemon.admin_password()
        secrets_seen.append(admin_password)
        jar = aiohttp.CookieJar(unsafe=True)  # the daemon is at 127.0.0.1, an IP address
        async with aiohttp.ClientSession(cookie_jar=jar) as session:
            await exercise_api(session, daemon, admin_password, secrets_seen)
            await exercise_admin_page(session, daemon, admin_password, secrets_seen)
        shell_password, shell_log = await asyncio.to_thread(reset_from_the_shell, tmp_path, "bob")
        secrets_seen.append(shell_password)
        daemon.signal()
        assert await daemon.wait(timeout=30) == 0
    finally:
        daemon.kill()
    log = daemon.log() + shell_log
    # The log is really there, at DEBUG, with the access lines of logins and speech.
    assert '"POST /auth' in log and '"POST /speech' in log and "DEBUG" in log, log[-3000:]
    count, shortest = len(secrets_seen), min(len(s) for s in secrets_seen)
    assert count >= 12 and shortest >= WINDOW, (count, shortest)
    leaked = sum(leaks(s, log) for s in secrets_seen)
    if leaked:  # without the secrets themselves in the report
        pytest.fail(f"{leaked} of {len(secrets_seen)} secrets appear in the log")
