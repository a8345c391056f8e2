"""Per-user quotas and usage, from the outside: /speech answers, the usage routes, the page, the CLI."""

from __future__ import annotations

import asyncio
import datetime
import re
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from idlakd.config import Config, DatabaseUrl
from idlakd.web.app import create_app
from tests.helpers.admin import admin_client
from tests.helpers.app import ClientFactory, assert_error, bearer, login, make_config
from tests.helpers.daemon import login as daemon_login
from tests.helpers.daemon import start_daemon, wait_listening

# The same routes on both stores (SQLite and PostgreSQL).
pytestmark = pytest.mark.both_stores

REPO = Path(__file__).resolve().parent.parent
TEXT = "Hello there."  # 12 characters
MINUTE_RE = re.compile(r"Quota exceeded: (\d+) characters per minute; try again in (\d+) s")
DAY_RE = re.compile(r"Quota exceeded: (\d+) characters per day; try again in (\d+) s")


async def _away_from_the_minute_end(margin: float = 8.0) -> None:
    """Sleep past the next UTC minute when it is near: a test's requests then share one window."""
    into = time.time() % 60
    if into > 60 - margin:
        await asyncio.sleep(60 - into + 0.1)


async def _speak(client: TestClient[Any, Any], token: str, text: str = TEXT,
                 **fields: Any) -> aiohttp.ClientResponse:
    """POST /speech for a complete WAV (its length exact)."""
    return await client.post("/speech", headers=bearer(token),
                             json={"voice_id": "alba", "text": text, "stream": False, **fields})


async def _put_limits(client: TestClient[Any, Any], admin_token: str, uid: str,
                      **limits: int | None) -> dict[str, Any]:
    """PUT /users/{uid}/limits; the answer."""
    resp = await client.put(f"/users/{uid}/limits", json=limits, headers=bearer(admin_token))
    assert resp.status == 200, await resp.text()
    body: dict[str, Any] = await resp.json()
    return body


def _wav_seconds(wav: bytes) -> float:
    """Duration of a complete 16-bit WAV, from its fmt and data sizes."""
    rate = struct.unpack_from("<I", wav, 24)[0]
    data = wav.index(b"data")
    size = struct.unpack_from("<I", wav, data + 4)[0]
    return float(size / 2 / rate)


async def test_per_minute_default_from_config(aiohttp_client: ClientFactory, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    """quota_chars_per_minute=30: two 12-character texts pass, the third is 429 naming the limit."""
    client = await aiohttp_client(create_app(make_config(tmp_path, quota_chars_per_minute="30")))
    password = re.search(r"<User admin:([^:]+):True>", capsys.readouterr().out)
    assert password
    token = await login(client, "admin", password.group(1))
    await _away_from_the_minute_end()
    for _ in range(2):
        resp = await _speak(client, token)
        assert resp.status == 200, await resp.text()
        await resp.read()
    resp = await _speak(client, token)
    body = await assert_error(resp, 429)
    match = MINUTE_RE.fullmatch(body["message"])
    assert match and match.group(1) == "30", body
    assert body["code"] == "quota_exceeded"
    assert resp.headers["Retry-After"] == match.group(2)
    assert 1 <= int(match.group(2)) <= 60
    # A text that alone is over the limit can never pass: 413, not a retry.
    body = await assert_error(await _speak(client, token, "x" * 31), 413)
    assert body["message"] == "Quota exceeded: 30 characters per minute, and this text alone has 31"
    # Refusals count nothing.
    usage = await (await client.get("/auth/usage", headers=bearer(token))).json()
    assert usage["requests"] == 2 and usage["characters"] == 24
    assert usage["minute_characters"] == 24
    assert usage["limits"] == {"chars_per_minute": 30, "chars_per_day": 0, "concurrent": 8}


async def test_per_day_override_and_usage(client: TestClient[Any, Any], admin_token: str,
                                          user_token: str) -> None:
    """An admin's per-day override takes effect; usage counts requests, characters, audio seconds."""
    limits = await _put_limits(client, admin_token, "alice", chars_per_day=24)
    assert limits["limits"]["chars_per_day"] == 24
    assert limits["overrides"] == {"chars_per_minute": None, "chars_per_day": 24,
                                   "concurrent": None}
    seconds = 0.0
    for _ in range(2):
        resp = await _speak(client, user_token)
        assert resp.status == 200, await resp.text()
        seconds += _wav_seconds(await resp.read())
    resp = await _speak(client, user_token)
    body = await assert_error(resp, 429)
    match = DAY_RE.fullmatch(body["message"])
    assert match and match.group(1) == "24", body
    now = datetime.datetime.now(datetime.timezone.utc)
    midnight = (now + datetime.timedelta(days=1)).replace(hour=0, minute=0, second=0,
                                                          microsecond=0)
    assert abs(int(resp.headers["Retry-After"]) - (midnight - now).total_seconds()) < 5

    own = await (await client.get("/auth/usage", headers=bearer(user_token))).json()
    assert own["uid"] == "alice" and own["day"] == now.date().isoformat()
    assert own["requests"] == 2 and own["characters"] == 24 and own["running"] == 0
    assert own["audio_seconds"] == pytest.approx(seconds, abs=0.01) and seconds > 0.5
    assert own["limits"]["chars_per_day"] == 24
    seen = await (await client.get("/users/alice/usage", headers=bearer(admin_token))).json()
    assert seen == own
    # Back to the default (none per day): the next request passes.
    limits = await _put_limits(client, admin_token, "alice", chars_per_day=None)
    assert limits["limits"]["chars_per_day"] == 0 and limits["overrides"]["chars_per_day"] is None
    resp = await _speak(client, user_token)
    assert resp.status == 200
    await resp.read()


async def test_failed_syntheses_are_not_counted(client: TestClient[Any, Any],
                                                user_token: str) -> None:
    """Markup refused (422) before any audio: neither the request nor its characters count."""
    resp = await _speak(client, user_token, "<speak><audio src='x'/>Hi.</speak>")
    await assert_error(resp, 422)
    usage = await (await client.get("/auth/usage", headers=bearer(user_token))).json()
    assert usage["requests"] == 0 and usage["characters"] == 0 and usage["running"] == 0


async def test_limits_routes_check_their_input(client: TestClient[Any, Any], admin_token: str,
                                               user_token: str) -> None:
    """Bad values, unknown fields and users are 422; users may not see others' usage or limits."""
    url = "/users/alice/limits"
    resp = await client.put(url, json={"concurrent": -1, "chars_per_day": True, "colour": 1},
                            headers=bearer(admin_token))
    body = await assert_error(resp, 422)
    assert "concurrent: Must be null (the configured default) or a whole number" in body["message"]
    assert "chars_per_day: Must be null" in body["message"]
    assert "colour: Unknown field." in body["message"]
    await assert_error(await client.put(url, json=[1], headers=bearer(admin_token)), 422,
                       "Request body must be a JSON object")
    await assert_error(await client.put("/users/nobody/limits", json={"concurrent": 1},
                                        headers=bearer(admin_token)), 422, "User does not exist")
    for path in ("/users/nobody/limits", "/users/nobody/usage"):
        await assert_error(await client.get(path, headers=bearer(admin_token)), 422,
                           "User does not exist")
    for method, path in (("GET", "/users/alice/usage"), ("GET", url), ("PUT", url)):
        resp = await client.request(method, path, json={}, headers=bearer(user_token))
        await assert_error(resp, 401, "Admin permissions required")
    got = await (await client.get(url, headers=bearer(admin_token))).json()
    assert got == {"uid": "alice",
                   "limits": {"chars_per_minute": 100000, "chars_per_day": 0, "concurrent": 8},
                   "overrides": {"chars_per_minute": None, "chars_per_day": None,
                                 "concurrent": None},
                   "defaults": {"chars_per_minute": 100000, "chars_per_day": 0, "concurrent": 8}}


async def test_concurrent_requests_never_pass_a_limit_together(
        client: TestClient[Any, Any], admin_token: str, user_token: str) -> None:
    """20 requests at once under a per-day limit that allows exactly 5: exactly 5 are served."""
    await _put_limits(client, admin_token, "alice", chars_per_day=5 * len(TEXT))
    responses = await asyncio.gather(*(_speak(client, user_token) for _ in range(20)))
    statuses = sorted(r.status for r in responses)
    for resp in responses:
        await resp.read()
    assert statuses == [200] * 5 + [429] * 15, statuses
    usage = await (await client.get("/auth/usage", headers=bearer(user_token))).json()
    assert usage["requests"] == 5 and usage["characters"] == 5 * len(TEXT)


async def test_deleted_user_leaves_no_limits_behind(client: TestClient[Any, Any],
                                                    admin_token: str, user_token: str) -> None:
    """A re-created uid starts with the defaults and no usage."""
    await _put_limits(client, admin_token, "alice", concurrent=1)
    assert (await _speak(client, user_token)).status == 200
    assert (await client.delete("/users/alice", headers=bearer(admin_token))).status == 200
    assert (await client.post("/users", json={"uid": "alice"},
                              headers=bearer(admin_token))).status == 200
    got = await (await client.get("/users/alice/limits", headers=bearer(admin_token))).json()
    assert got["overrides"]["concurrent"] is None
    usage = await (await client.get("/users/alice/usage", headers=bearer(admin_token))).json()
    assert usage["requests"] == 0


async def test_admin_page_shows_usage_and_sets_limits(client: TestClient[Any, Any],
                                                      admin_password: str, admin_token: str,
                                                      user_token: str) -> None:
    """The users page lists each user's usage and limits; its form (with CSRF) sets limits."""
    assert (await _speak(client, user_token)).status == 200
    csrf = await admin_client(client, admin_password)
    page = await (await client.get("/admin/users")).text()
    row = re.search(r'<tr data-usage-uid="alice">(.*?)</tr>', page, re.S)
    assert row, page
    assert '<td class="requests">1</td>' in row.group(1)
    assert f'<td class="characters">{len(TEXT)}</td>' in row.group(1)
    assert 'action="/admin/users/limits"' in row.group(1)
    form = {"uid": "alice", "chars_per_minute": "", "chars_per_day": "500", "concurrent": "2"}
    resp = await client.post("/admin/users/limits", allow_redirects=False, data=form)
    assert resp.status == 403  # no CSRF token
    resp = await client.post("/admin/users/limits", allow_redirects=False,
                             data={**form, "csrf_token": csrf})
    assert resp.status == 303 and resp.headers["Location"] == "/admin/users"
    page = await (await client.get("/admin/users")).text()
    assert "Limits of &#39;alice&#39; saved." in page or "Limits of 'alice' saved." in page
    got = await (await client.get("/users/alice/limits", headers=bearer(admin_token))).json()
    assert got["overrides"] == {"chars_per_minute": None, "chars_per_day": 500, "concurrent": 2}
    resp = await client.post("/admin/users/limits", allow_redirects=False,
                             data={**form, "concurrent": "many", "csrf_token": csrf})
    assert resp.status == 303
    page = await (await client.get("/admin/users")).text()
    assert "concurrent: Must be null" in page


def _cli(config: Config, *args: str) -> subprocess.CompletedProcess[str]:
    """Run `python -m idlakd` on the test's state directory and database."""
    database = config.database.url if isinstance(config.database, DatabaseUrl) else config.database
    return subprocess.run(
        [sys.executable, "-m", "idlakd", "--set", f"state_dir={config.state_dir}",
         "--set", f"database={database}", *args],
        cwd=REPO, capture_output=True, text=True, timeout=60)


async def test_cli_limits_and_usage(client: TestClient[Any, Any], config: Config,
                                    user_token: str) -> None:
    """`idlakd user limits|usage` on the daemon's database: the daemon applies the limits at once."""
    assert (await _speak(client, user_token)).status == 200
    shown = await asyncio.to_thread(_cli, config, "user", "limits", "alice")
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.splitlines() == ["chars_per_minute\t100000\tdefault",
                                         "chars_per_day\t0\tdefault", "concurrent\t8\tdefault"]
    changed = await asyncio.to_thread(_cli, config, "user", "limits", "alice",
                                      "--chars-per-day", "20", "--concurrent", "3")
    assert changed.returncode == 0, changed.stderr
    assert "chars_per_day\t20\tset (default 0)" in changed.stdout.splitlines()
    body = await assert_error(await _speak(client, user_token), 429)
    assert DAY_RE.fullmatch(body["message"]), body
    usage = await asyncio.to_thread(_cli, config, "user", "usage", "alice")
    assert usage.returncode == 0, usage.stderr
    lines = dict(line.split("\t", 1) for line in usage.stdout.splitlines())
    assert lines["requests"] == "1" and lines["characters"] == str(len(TEXT))
    assert float(lines["audio_seconds"]) > 0.5
    reset = await asyncio.to_thread(_cli, config, "user", "limits", "alice",
                                    "--chars-per-day", "default")
    assert "chars_per_day\t0\tdefault" in reset.stdout.splitlines()
    for bad in (("user", "limits", "nobody"), ("user", "usage", "nobody")):
        proc = await asyncio.to_thread(_cli, config, *bad)
        assert proc.returncode == 1 and "user 'nobody' does not exist" in proc.stderr
    proc = await asyncio.to_thread(_cli, config, "user", "limits", "alice", "--concurrent", "-1")
    assert proc.returncode == 2


async def test_concurrent_limit_across_slow_streams(tmp_path: Path) -> None:
    """quota_concurrent=1: a second stream while the first runs is 429; after it ends, one passes."""
    daemon = start_daemon(tmp_path, quota_concurrent="1")
    try:
        await wait_listening(daemon)
        async with aiohttp.ClientSession() as session:
            token = await daemon_login(session, daemon.url, "admin", daemon.admin_password())
            headers = bearer(token)
            body = {"voice_id": "slow", "text": "One sentence. And another one."}
            async with session.post(daemon.url + "/speech", headers=headers, json=body) as first:
                assert first.status == 200
                await first.content.readany()  # it runs
                async with aiohttp.ClientSession() as other:
                    async with other.post(daemon.url + "/speech", headers=headers,
                                          json=body) as second:
                        assert second.status == 429
                        assert second.headers["Retry-After"] == "1"
                        message = (await second.json())["message"]
                        assert message == ("Quota exceeded: 1 concurrent syntheses; try again "
                                           "when one has ended")
                    async with other.get(daemon.url + "/auth/usage", headers=headers) as resp:
                        assert (await resp.json())["running"] == 1
                await first.read()
            # The same connection's next request comes after the first one's end was recorded.
            async with session.post(daemon.url + "/speech", headers=headers, json=body) as third:
                assert third.status == 200
                await third.read()
            async with session.get(daemon.url + "/auth/usage", headers=headers) as resp:
                usage = await resp.json()
            assert usage["requests"] == 2 and usage["running"] == 0
            # The slow voice makes 0.3 s of audio per sentence.
            assert usage["audio_seconds"] == pytest.approx(4 * 0.3, abs=0.01)
    finally:
        daemon.kill()
