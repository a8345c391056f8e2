"""Token hygiene from outside: a password change or reset ends every token and admin session
issued before it, a re-created uid never inherits a deleted user's tokens — both tested at the
same instant, without sleeping — and the first admin's password file."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from idlakd.accounts.users import INITIAL_PASSWORD_FILE
from idlakd.config import Config
from tests.helpers.admin import admin_client, csrf_of, secret_of, sign_in
from tests.helpers.app import REPO, assert_error, bearer, login, make_config
from tests.helpers.postgres import state_env

EXPIRED = "Access token has expired"
NO_SUCH_USER = "The user with such access token does not exist"


async def new_user(client: TestClient[Any, Any], admin_token: str, uid: str,
                   admin: bool = False) -> str:
    """Create uid through the API; its password."""
    resp = await client.post("/users", json={"uid": uid, "admin": admin},
                              headers=bearer(admin_token))
    assert resp.status == 200, await resp.text()
    password: str = (await resp.json())["password"]
    return password


async def works(client: TestClient[Any, Any], token: str) -> bool:
    """Whether token opens a user route (POST /speech with an unknown voice: 400, not 401)."""
    resp = await client.post("/speech", json={"voice_id": "nope", "text": "x"},
                             headers=bearer(token))
    assert resp.status in (400, 401), await resp.text()
    return resp.status == 400


async def test_a_password_change_ends_earlier_tokens_at_once(
        client: TestClient[Any, Any], admin_token: str) -> None:
    """Tokens issued the same moment before the change are refused; one issued after works."""
    password = await new_user(client, admin_token, "alice")
    before = [await login(client, "alice", password) for _ in range(2)]
    assert all([await works(client, token) for token in before])
    resp = await client.post("/auth/password", headers=bearer(before[0]),
                             json={"old_password": password, "new_password": "n3w-passw0rd"})
    assert resp.status == 200, await resp.text()
    for token in before:  # the one that made the change too
        await assert_error(await client.post("/auth/expire", headers=bearer(token)), 401, EXPIRED)
    after = await login(client, "alice", "n3w-passw0rd")
    assert await works(client, after)
    await assert_error(await client.post("/auth", json={"uid": "alice", "password": password}),
                       401)


async def test_an_admin_reset_ends_earlier_tokens_at_once(
        client: TestClient[Any, Any], admin_token: str) -> None:
    """POST /users/<uid>/password: the leaked password's tokens stop working immediately."""
    password = await new_user(client, admin_token, "bob")
    stolen = await login(client, "bob", password)
    resp = await client.post("/users/bob/password", headers=bearer(admin_token))
    assert resp.status == 200
    await assert_error(await client.get("/voices/x", headers=bearer(stolen)), 404)  # public
    assert not await works(client, stolen)
    fresh = await login(client, "bob", (await resp.json())["password"])
    assert await works(client, fresh)
    # Resetting another user's password leaves the admin's own token alone.
    assert (await client.get("/users", headers=bearer(admin_token))).status == 200


async def test_a_reset_from_the_shell_reaches_the_running_daemon(
        client: TestClient[Any, Any], admin_token: str, config: Config) -> None:
    """`idlakd user passwd` on the daemon's database ends the tokens the daemon issued."""
    password = await new_user(client, admin_token, "carol")
    token = await login(client, "carol", password)
    env = os.environ | {**state_env(config.state_dir), "IDLAKD_BCRYPT_ROUNDS": "4"}
    proc = subprocess.run([sys.executable, "-m", "idlakd", "user", "passwd", "carol"],
                          capture_output=True, text=True, env=env, timeout=60, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    new_password = re.search(r"<User carol:([^:]+):False>", proc.stdout)
    assert new_password, proc.stdout
    assert not await works(client, token)
    assert await works(client, await login(client, "carol", new_password.group(1)))


async def test_a_reused_uid_never_inherits_tokens_even_in_the_same_second(
        client: TestClient[Any, Any], admin_token: str) -> None:
    """Delete dave and create dave again at once: the first dave's token names nobody."""
    first = await new_user(client, admin_token, "dave")
    old_token = await login(client, "dave", first)
    assert await works(client, old_token)
    assert (await client.delete("/users/dave", headers=bearer(admin_token))).status == 200
    second = await new_user(client, admin_token, "dave", admin=True)
    await assert_error(await client.get("/users", headers=bearer(old_token)), 401, NO_SUCH_USER)
    new_token = await login(client, "dave", second)
    assert (await client.get("/users", headers=bearer(new_token))).status == 200


async def test_admin_sessions_end_with_a_reset_and_with_a_reused_uid(
        client: TestClient[Any, Any], admin_token: str) -> None:
    """The admin page's session follows the same rule as tokens, at the same instant."""
    password = await new_user(client, admin_token, "erin", admin=True)
    assert (await sign_in(client, "erin", password)).status == 303
    assert (await client.get("/admin/users", allow_redirects=False)).status == 200
    assert (await client.post("/users/erin/password", headers=bearer(admin_token))).status == 200
    resp = await client.get("/admin/users", allow_redirects=False)
    assert resp.status == 303 and "/admin/login" in resp.headers["Location"]

    password = await new_user(client, admin_token, "frank", admin=True)
    assert (await sign_in(client, "frank", password)).status == 303
    assert (await client.delete("/users/frank", headers=bearer(admin_token))).status == 200
    await new_user(client, admin_token, "frank", admin=True)
    resp = await client.get("/admin/users", allow_redirects=False)
    assert resp.status == 303, "the first frank's session opened the new frank's admin page"


async def test_an_admin_resetting_their_own_password_stays_signed_in(
        client: TestClient[Any, Any], admin_password: str) -> None:
    """The reset ends the old session; the page answers in a new one and shows the password."""
    csrf = await admin_client(client, admin_password)
    old_cookie = client.session.cookie_jar.filter_cookies(client.make_url("/admin"))["idlakd_admin"]
    resp = await client.post("/admin/users/password", data={"csrf_token": csrf, "uid": "admin"})
    page = await resp.text()
    assert resp.status == 200 and resp.url.path == "/admin/users", page[-400:]
    new_password = secret_of(page)
    assert await login(client, "admin", new_password)
    await assert_error(await client.post("/auth", json={"uid": "admin",
                                                        "password": admin_password}), 401)
    # The session the reset answered in goes on; the cookie from before the reset does not.
    assert (await client.get("/admin/users", allow_redirects=False)).status == 200
    assert csrf_of(page) != csrf
    client.session.cookie_jar.clear()
    client.session.cookie_jar.update_cookies({"idlakd_admin": old_cookie.value},
                                             client.make_url("/admin"))
    resp = await client.get("/admin/users", allow_redirects=False)
    assert resp.status == 303


# The first admin's password file

def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def test_the_first_admin_password_is_also_in_an_owner_only_file(
        tmp_path: Path, started_app_factory: Any, capsys: pytest.CaptureFixture[str]) -> None:
    """Mode 0600, the printed password, its path printed too; a later start leaves it alone."""
    old = os.umask(0o002)
    try:
        config = make_config(tmp_path)
        client: TestClient[Any, Any] = await started_app_factory(config)
    finally:
        os.umask(old)
    out = capsys.readouterr().out
    password = re.search(r"<User admin:([^:]+):True>", out)
    assert password
    path = config.state_dir / INITIAL_PASSWORD_FILE
    assert _mode(path) == 0o600
    assert path.read_text() == password.group(1) + "\n"
    assert str(path) in out
    assert await login(client, "admin", password.group(1))
    await client.close()
    # The operator noted it somewhere else and wrote over it: a restart keeps their file.
    path.write_text("kept by the operator\n")
    await started_app_factory(config)
    assert path.read_text() == "kept by the operator\n"
    assert "<User admin:" not in capsys.readouterr().out


async def test_an_existing_password_file_is_never_overwritten(
        tmp_path: Path, started_app_factory: Any, capsys: pytest.CaptureFixture[str]) -> None:
    """A fresh database but a file of that name already there: the file stays as it was, and
    the password is still printed on the console."""
    config = make_config(tmp_path)
    config.state_dir.mkdir(parents=True, mode=0o700)
    path = config.state_dir / INITIAL_PASSWORD_FILE
    path.write_text("someone else's\n")
    os.chmod(path, 0o640)
    client: TestClient[Any, Any] = await started_app_factory(config)
    out = capsys.readouterr().out
    password = re.search(r"<User admin:([^:]+):True>", out)
    assert password and str(path) not in out
    assert path.read_text() == "someone else's\n" and _mode(path) == 0o640
    assert await login(client, "admin", password.group(1))
