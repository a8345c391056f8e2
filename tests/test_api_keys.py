"""API keys from the outside: made, listed, used as a Bearer, revoked, dead with their user, expired, from the CLI, never logged."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from idlakd.accounts import keys as api_keys
from idlakd.accounts.tokens import ADMIN_REQUIRED, NO_SUCH_USER
from idlakd.accounts.users import NO_SUCH_USER as UNKNOWN_USER
from idlakd.config import Config
from idlakd.errors import NotAuthenticated
from idlakd.store.factory import store_at
from tests.helpers.app import assert_error, bearer, make_config
from tests.helpers.daemon import REPO, Daemon, login, start_daemon, wait_listening
from tests.helpers.postgres import dump_text, run_sql, state_env

KEY_RE = re.compile(r"idk_[A-Za-z0-9_-]{43}")
TIME_RE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")
LIMIT = 3
LISTED = {"id", "name", "prefix", "created_at", "last_used_at", "expires_at"}


@pytest.fixture
def config(tmp_path: Path) -> Config:
    """The test configuration with a small key cap, to reach it."""
    return make_config(tmp_path, max_api_keys_per_user=str(LIMIT))




async def make_key(client: TestClient[Any, Any], token: str, name: str = "ci",
                   **extra: Any) -> dict[str, Any]:
    """POST /auth/keys; the answer (with the key)."""
    resp = await client.post("/auth/keys", json={"name": name, **extra}, headers=bearer(token))
    assert resp.status == 200, await resp.text()
    body: dict[str, Any] = await resp.json()
    return body


async def speech_status(client: TestClient[Any, Any], credential: str) -> int:
    """POST /speech with a credential; the status (the audio read to the end)."""
    resp = await client.post("/speech", json={"voice_id": "alba", "text": "Hi.", "stream": False},
                             headers=bearer(credential))
    await resp.read()
    return resp.status


async def test_create_list_and_delete(client: TestClient[Any, Any], user_token: str) -> None:
    made = await make_key(client, user_token, name="  build server  ", expires_in_days=30)
    assert set(made) == LISTED | {"key"}
    key = made["key"]
    assert KEY_RE.fullmatch(key) and made["prefix"] == key[:12]
    assert made["name"] == "build server" and made["last_used_at"] is None
    assert TIME_RE.fullmatch(made["created_at"]) and TIME_RE.fullmatch(made["expires_at"])
    other = await make_key(client, user_token, name="laptop")
    assert other["expires_at"] is None and other["key"] != key

    resp = await client.get("/auth/keys", headers=bearer(user_token))
    assert resp.status == 200
    text = await resp.text()
    listed = (await resp.json())["keys"]
    assert [k["name"] for k in listed] == ["build server", "laptop"]
    assert all(set(k) == LISTED for k in listed)
    # Never the key, nor its digest, in any list.
    assert key not in text and api_keys.digest_of(key).hex() not in text

    resp = await client.delete(f"/auth/keys/{made['id']}", headers=bearer(user_token))
    assert resp.status == 200
    assert (await resp.json()) == {"message": f"API key '{made['id']}' has been revoked"}
    resp = await client.get("/auth/keys", headers=bearer(user_token))
    assert [k["id"] for k in (await resp.json())["keys"]] == [other["id"]]
    await assert_error(await client.delete(f"/auth/keys/{made['id']}", headers=bearer(user_token)),
                       404, api_keys.NO_SUCH_KEY)


async def test_a_key_is_accepted_wherever_a_token_is(client: TestClient[Any, Any], admin_token: str,
                                                     user_token: str) -> None:
    alice_key = (await make_key(client, user_token))["key"]
    admin_key = (await make_key(client, admin_token))["key"]
    assert await speech_status(client, alice_key) == 200
    # A bare key is accepted too, as a bare token is.
    resp = await client.post("/speech", json={"voice_id": "alba", "text": "Hi.", "stream": False},
                             headers={"Authorization": alice_key})
    assert resp.status == 200 and (await resp.read())[:4] == b"RIFF"
    resp = await client.get("/users", headers=bearer(admin_key))
    assert resp.status == 200 and {"id": "alice", "admin": False} in (await resp.json())["users"]
    await assert_error(await client.get("/users", headers=bearer(alice_key)), 401, ADMIN_REQUIRED)
    # A key lists its own user's keys.
    resp = await client.get("/auth/keys", headers=bearer(alice_key))
    assert resp.status == 200 and len((await resp.json())["keys"]) == 1


async def test_unknown_malformed_and_revoked_keys_are_refused(client: TestClient[Any, Any],
                                                              user_token: str) -> None:
    made = await make_key(client, user_token)
    forged = "idk_" + "A" * 43
    for credential in (forged, made["key"][:-1], made["key"] + "x", "idk_"):
        await assert_error(await client.get("/auth/keys", headers=bearer(credential)), 401,
                           api_keys.KEY_INVALID)
    await client.delete(f"/auth/keys/{made['id']}", headers=bearer(user_token))
    await assert_error(await client.post("/speech", json={"voice_id": "alba", "text": "Hi."},
                                         headers=bearer(made["key"])), 401, api_keys.KEY_INVALID)


async def test_auth_expire_with_a_key_revokes_it(client: TestClient[Any, Any],
                                                 user_token: str) -> None:
    key = (await make_key(client, user_token))["key"]
    resp = await client.post("/auth/expire", headers=bearer(key))
    assert resp.status == 200
    await assert_error(await client.get("/auth/keys", headers=bearer(key)), 401,
                       api_keys.KEY_INVALID)
    resp = await client.get("/auth/keys", headers=bearer(user_token))
    assert (await resp.json())["keys"] == []


async def test_a_key_dies_with_its_user_and_stays_dead_for_a_new_user_of_the_uid(
        client: TestClient[Any, Any], admin_token: str, user_token: str) -> None:
    key = (await make_key(client, user_token))["key"]
    assert (await client.delete("/users/alice", headers=bearer(admin_token))).status == 200
    await assert_error(await client.get("/auth/keys", headers=bearer(key)), 401, NO_SUCH_USER)
    # The uid taken again at once (no sleeping past any window): the old key is still dead.
    resp = await client.post("/users", json={"uid": "alice"}, headers=bearer(admin_token))
    assert resp.status == 200
    await assert_error(await client.get("/auth/keys", headers=bearer(key)), 401, NO_SUCH_USER)
    assert await speech_status(client, key) == 401
    resp = await client.get("/users/alice/keys", headers=bearer(admin_token))
    assert resp.status == 200 and (await resp.json())["keys"] == []


async def test_a_password_change_or_reset_ends_the_keys_made_before_it(
        client: TestClient[Any, Any], admin_token: str, user_token: str) -> None:
    before = await make_key(client, user_token, name="before")
    resp = await client.post("/users/alice/password", headers=bearer(admin_token))
    assert resp.status == 200
    password = (await resp.json())["password"]
    await assert_error(await client.get("/users", headers=bearer(before["key"])), 401,
                       api_keys.KEY_ENDED)
    # A key made after the reset works, and the ended one is no longer listed.
    token = (await (await client.post("/auth", json={"uid": "alice", "password": password})).json())[
        "access_token"]
    after = await make_key(client, token, name="after")
    resp = await client.get("/users/alice/keys", headers=bearer(admin_token))
    assert [k["name"] for k in (await resp.json())["keys"]] == ["after"]
    await assert_error(await client.delete(f"/users/alice/keys/{before['id']}",
                                           headers=bearer(admin_token)), 404, api_keys.NO_SUCH_KEY)
    # Changing one's own password (with the key itself) ends it too.
    resp = await client.post("/auth/password", headers=bearer(after["key"]),
                             json={"old_password": password, "new_password": "a new password"})
    assert resp.status == 200
    await assert_error(await client.get("/auth/keys", headers=bearer(after["key"])), 401,
                       api_keys.KEY_ENDED)


async def test_an_expired_key_is_refused(client: TestClient[Any, Any], config: Config,
                                         user_token: str) -> None:
    made = await make_key(client, user_token, expires_in_days=1)
    key = made["key"]
    assert await speech_status(client, key) == 200
    # A day later, by the accounts' clock: the same database, a second Store on it.
    async with store_at(config.database, 2) as store:
        later = time.time() + 86400 + 1
        with pytest.raises(NotAuthenticated) as refused:
            await api_keys.key_holder(store, api_keys.presented(key), later)
        assert refused.value.message == api_keys.KEY_EXPIRED
        _, user = await api_keys.key_holder(store, api_keys.presented(key), time.time())
        assert user.uid == "alice"
    # A day later for the daemon: its expiry moved into the past in the database file.
    run_sql(config.database, "UPDATE api_keys SET expires_at = ? WHERE id = ?",
            time.time() - 1, made["id"])
    await assert_error(await client.post("/speech", json={"voice_id": "alba", "text": "Hi."},
                                         headers=bearer(key)), 401, api_keys.KEY_EXPIRED)
    # Still listed (so its user sees why), until revoked.
    resp = await client.get("/auth/keys", headers=bearer(user_token))
    assert [k["id"] for k in (await resp.json())["keys"]] == [made["id"]]


async def test_last_use_is_written_at_most_once_a_minute(client: TestClient[Any, Any],
                                                         config: Config, user_token: str) -> None:
    made = await make_key(client, user_token)

    def last_used() -> float | None:
        value = run_sql(config.database, "SELECT last_used_at FROM api_keys WHERE id = ?",
                        made["id"])[0][0]
        return None if value is None else float(value)

    assert last_used() is None
    assert (await client.get("/auth/keys", headers=bearer(made["key"]))).status == 200
    first = last_used()
    assert first is not None and abs(first - time.time()) < 10
    assert (await client.get("/auth/keys", headers=bearer(made["key"]))).status == 200
    assert last_used() == first  # within the minute: no write
    run_sql(config.database, "UPDATE api_keys SET last_used_at = ? WHERE id = ?",
            first - 61, made["id"])
    assert (await client.get("/auth/keys", headers=bearer(made["key"]))).status == 200
    renewed = last_used()
    assert renewed is not None and renewed > first - 1
    resp = await client.get("/auth/keys", headers=bearer(user_token))
    assert TIME_RE.fullmatch((await resp.json())["keys"][0]["last_used_at"])


async def test_fields_are_checked(client: TestClient[Any, Any], user_token: str) -> None:
    name_rule = f"name: {api_keys.NAME_RULE}"
    days_rule = f"expires_in_days: {api_keys.DAYS_RULE}"
    cases: list[tuple[dict[str, Any], str]] = [
        ({}, "name: Missing data for required field."),
        ({"name": 7}, "name: Not a valid string."),
        ({"name": ""}, name_rule),
        ({"name": "   "}, name_rule),
        ({"name": "x" * 65}, name_rule),
        ({"name": "bell\x07"}, name_rule),
        ({"name": "tab\there"}, name_rule),
        ({"name": "ok", "expires_in_days": 0}, days_rule),
        ({"name": "ok", "expires_in_days": 3651}, days_rule),
        ({"name": "ok", "expires_in_days": 1.5}, days_rule),
        ({"name": "ok", "expires_in_days": "30"}, days_rule),
        ({"name": "ok", "expires_in_days": True}, days_rule),
        ({"name": "", "expires_in_days": -1}, f"{name_rule}, {days_rule}"),
    ]
    for body, message in cases:
        resp = await client.post("/auth/keys", json=body, headers=bearer(user_token))
        await assert_error(resp, 422, message)
    made = await make_key(client, user_token, name="x" * 64, expires_in_days=3650)
    assert made["name"] == "x" * 64
    assert (await make_key(client, user_token, name="Ünïcode ✓"))["name"] == "Ünïcode ✓"
    await assert_error(await client.post("/auth/keys", json={"name": "x"}), 401)


async def test_a_user_holds_at_most_max_api_keys_per_user(client: TestClient[Any, Any],
                                                          admin_token: str, user_token: str) -> None:
    made = [await make_key(client, user_token, name=f"k{i}") for i in range(LIMIT)]
    await assert_error(await client.post("/auth/keys", json={"name": "one more"},
                                         headers=bearer(user_token)), 422,
                       api_keys.too_many_keys(LIMIT))
    # The cap is per user; revoking one makes room.
    await make_key(client, admin_token)
    await client.delete(f"/auth/keys/{made[0]['id']}", headers=bearer(user_token))
    await make_key(client, user_token, name="one more")


async def test_admins_list_and_revoke_anyones_keys(client: TestClient[Any, Any], admin_token: str,
                                                   user_token: str) -> None:
    alice = await make_key(client, user_token)
    mine = await make_key(client, admin_token, name="admin's")
    resp = await client.get("/users/alice/keys", headers=bearer(admin_token))
    assert resp.status == 200
    listed = (await resp.json())["keys"]
    assert [k["id"] for k in listed] == [alice["id"]] and all(set(k) == LISTED for k in listed)
    # A user cannot reach another's key, or the admin routes.
    await assert_error(await client.delete(f"/auth/keys/{mine['id']}", headers=bearer(user_token)),
                       404, api_keys.NO_SUCH_KEY)
    await assert_error(await client.get("/users/admin/keys", headers=bearer(user_token)),
                       401, ADMIN_REQUIRED)
    assert (await client.get("/auth/keys", headers=bearer(mine["key"]))).status == 200
    # The key must belong to the user named in the path.
    await assert_error(await client.delete(f"/users/admin/keys/{alice['id']}",
                                           headers=bearer(admin_token)), 404, api_keys.NO_SUCH_KEY)
    await assert_error(await client.get("/users/nobody/keys", headers=bearer(admin_token)),
                       422, UNKNOWN_USER)
    resp = await client.delete(f"/users/alice/keys/{alice['id']}", headers=bearer(mine["key"]))
    assert resp.status == 200
    assert (await resp.json())["message"] == f"API key '{alice['id']}' has been revoked"
    await assert_error(await client.get("/auth/keys", headers=bearer(alice["key"])), 401,
                       api_keys.KEY_INVALID)


async def test_the_database_holds_no_key(client: TestClient[Any, Any], config: Config,
                                         user_token: str) -> None:
    key = (await make_key(client, user_token))["key"]
    dump = dump_text(config.database)
    digest = run_sql(config.database, "SELECT digest FROM api_keys")[0][0]
    assert key[12:] not in dump and bytes(digest) == api_keys.digest_of(key)


# The real daemon and the real command line


def idlakd(daemon_state: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run `python -m idlakd` against the daemon's state directory."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("IDLAKD_")}
    env |= {**state_env(daemon_state), "IDLAKD_BCRYPT_ROUNDS": "4"}
    proc = subprocess.run([sys.executable, "-m", "idlakd", *args], capture_output=True, text=True,
                          env=env, timeout=60, cwd=REPO)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


async def status_of(session: aiohttp.ClientSession, daemon: Daemon, credential: str,
                    path: str = "/auth/keys") -> tuple[int, dict[str, Any]]:
    """GET path at the daemon with a credential: (status, JSON body)."""
    async with session.get(daemon.url + path, headers=bearer(credential)) as resp:
        return resp.status, await resp.json()


async def test_the_command_line_adds_lists_and_revokes_keys(tmp_path: Path) -> None:
    daemon = start_daemon(tmp_path)
    state = tmp_path / "state"
    try:
        await wait_listening(daemon)
        idlakd(state, "user", "add", "carol")
        added = idlakd(state, "key", "add", "carol", "deploy bot", "--expires-in-days", "90")
        key = added.stdout.strip()
        assert KEY_RE.fullmatch(key), added.stdout
        assert "shown only this once" in added.stderr and "deploy bot" in added.stderr
        async with aiohttp.ClientSession() as session:
            # The running daemon takes a key the CLI made.
            status, body = await status_of(session, daemon, key)
            assert status == 200 and [k["name"] for k in body["keys"]] == ["deploy bot"]
            key_id = body["keys"][0]["id"]

            listed = idlakd(state, "key", "list", "carol").stdout.splitlines()
            assert listed[0].split("\t") == ["ID", "USER", "NAME", "PREFIX", "CREATED",
                                             "LAST USED", "EXPIRES"]
            row = listed[1].split("\t")
            assert row[:4] == [key_id, "carol", "deploy bot", key[:12]]
            assert TIME_RE.fullmatch(row[5]) and TIME_RE.fullmatch(row[6])  # used once above
            everyone = idlakd(state, "key", "list").stdout
            assert key_id in everyone and key[12:] not in everyone

            missing = idlakd(state, "key", "add", "nobody", "x", check=False)
            assert missing.returncode == 1 and UNKNOWN_USER in missing.stderr
            assert not KEY_RE.search(missing.stdout)
            bad = idlakd(state, "key", "add", "carol", "x", "--expires-in-days", "0", check=False)
            assert bad.returncode == 1 and api_keys.DAYS_RULE in bad.stderr
            assert idlakd(state, "key", "list", "nobody", check=False).returncode == 1

            revoked = idlakd(state, "key", "revoke", key_id)
            assert f"API key {key_id} 'deploy bot' of 'carol' has been revoked" in revoked.stdout
            status, body = await status_of(session, daemon, key)
            assert status == 401 and body["message"] == api_keys.KEY_INVALID
            again = idlakd(state, "key", "revoke", key_id, check=False)
            assert again.returncode == 1 and api_keys.NO_SUCH_KEY in again.stderr
    finally:
        daemon.signal()
        await daemon.wait(30)


WINDOW = 12


def leaks(secret: str, log: str) -> bool:
    """Whether any WINDOW characters in a row of the secret appear in the log."""
    return any(secret[i:i + WINDOW] in log for i in range(max(1, len(secret) - WINDOW + 1)))


async def test_a_key_never_appears_in_the_daemons_log(tmp_path: Path) -> None:
    daemon = start_daemon(tmp_path, log_level="DEBUG")
    state = tmp_path / "state"
    try:
        await wait_listening(daemon)
        keys: list[str] = []
        async with aiohttp.ClientSession() as session:
            token = await login(session, daemon.url, "admin", daemon.admin_password())
            for name in ("one", "two"):
                async with session.post(daemon.url + "/auth/keys", json={"name": name},
                                        headers=bearer(token)) as resp:
                    assert resp.status == 200
                    keys.append((await resp.json())["key"])
            keys.append(idlakd(state, "key", "add", "admin", "three").stdout.strip())
            for key in keys:
                assert (await status_of(session, daemon, key, "/users"))[0] == 200
                async with session.post(daemon.url + "/speech", headers=bearer(key),
                                        json={"voice_id": "alba", "text": "Hi."}) as resp:
                    assert resp.status == 200
                    await resp.read()
                # Refused and malformed look-alikes of a real key.
                assert (await status_of(session, daemon, key[:-1] + "#"))[0] == 401
                assert (await status_of(session, daemon, key + "x", "/users"))[0] == 401
            async with session.post(daemon.url + "/auth/expire", headers=bearer(keys[0])) as resp:
                assert resp.status == 200
            assert (await status_of(session, daemon, keys[0]))[0] == 401
            status, body = await status_of(session, daemon, token)
            for listed in body["keys"]:
                async with session.delete(f"{daemon.url}/auth/keys/{listed['id']}",
                                          headers=bearer(token)) as resp:
                    assert resp.status == 200
    finally:
        daemon.signal()
        await daemon.wait(30)
    log = daemon.log() + daemon.output()
    assert "API key" in log  # revocations are logged, by id
    assert not [key for key in keys if leaks(key, log)]
    assert not [key for key in keys if leaks(api_keys.digest_of(key).hex(), log)]
