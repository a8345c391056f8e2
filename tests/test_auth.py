"""POST /auth, token forms, tampering, expiry, revocation (also across a restart), throttling."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from aiohttp.test_utils import TestClient

from idlakd.accounts.tokens import issue_token
from idlakd.config import Config
from tests.helpers.app import assert_error, bearer, login, make_config, token_secret


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


async def test_login_returns_hs256_token_with_claims(client: TestClient[Any, Any],
                                                      admin_password: str, config: Config) -> None:
    token = await login(client, "admin", admin_password)
    header = jwt.get_unverified_header(token)
    assert header["alg"] == "HS256"
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["sub"] == "admin"
    assert {"iat", "nbf", "exp", "jti"} <= set(claims)
    assert claims["exp"] - claims["iat"] == 30 * 60


async def test_login_failures_are_the_same_for_unknown_uid_and_wrong_password(
        client: TestClient[Any, Any], admin_password: str) -> None:
    for body in ({"uid": "admin", "password": "wrong"}, {"uid": "nobody", "password": "x"}):
        resp = await client.post("/auth", json=body)
        await assert_error(resp, 401, "Login details are incorrect")


async def test_login_validation(client: TestClient[Any, Any]) -> None:
    resp = await client.post("/auth", json={"uid": "admin"})
    await assert_error(resp, 422, "password: Missing data for required field.")
    resp = await client.post("/auth", json={})
    await assert_error(resp, 422, "uid: Missing data for required field., "
                                  "password: Missing data for required field.")
    resp = await client.post("/auth", json={"uid": 5, "password": "x"})
    await assert_error(resp, 422, "uid: Not a valid string.")
    resp = await client.post("/auth", data=b"{not json", headers={"Content-Type": "application/json"})
    await assert_error(resp, 400, "Request body is not valid JSON")
    resp = await client.post("/auth", json=["uid", "password"])
    await assert_error(resp, 422)
    resp = await client.post("/auth", data=b"\xff\xfe\x00garbage")
    await assert_error(resp, 400, "Request body is not valid JSON")


async def test_token_forms_and_missing_header(client: TestClient[Any, Any], admin_token: str) -> None:
    assert (await client.get("/users", headers=bearer(admin_token))).status == 200
    assert (await client.get("/users", headers={"Authorization": admin_token})).status == 200
    await assert_error(await client.get("/users"), 401, "Missing Authorization Header")
    await assert_error(await client.get("/users", headers={"Authorization": "Bearer"}), 401,
                       "Access token is invalid")
    await assert_error(await client.get("/users", headers={"Authorization": "Bearer a.b.c"}), 401,
                       "Access token is invalid")


async def test_tampered_and_alg_none_tokens_are_invalid(client: TestClient[Any, Any],
                                                        admin_token: str) -> None:
    header, payload, signature = admin_token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["sub"] = "someone-else"
    forged = f"{header}.{_b64(claims)}.{signature}"
    await assert_error(await client.get("/users", headers=bearer(forged)), 401,
                       "Access token is invalid")
    none_token = f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{payload}."
    await assert_error(await client.get("/users", headers=bearer(none_token)), 401,
                       "Access token is invalid")
    other_secret = jwt.encode(claims | {"sub": "admin"}, "another-secret-of-enough-length-123456",
                              algorithm="HS256")
    await assert_error(await client.get("/users", headers=bearer(other_secret)), 401,
                       "Access token is invalid")
    hs512 = jwt.encode(claims | {"sub": "admin"}, "x" * 64, algorithm="HS512")
    await assert_error(await client.get("/users", headers=bearer(hs512)), 401,
                       "Access token is invalid")


async def test_expired_and_not_yet_valid_tokens(client: TestClient[Any, Any], admin_password: str,
                                                config: Config) -> None:
    secret = await token_secret(config)
    now = int(time.time())
    base = {"sub": "admin", "jti": "j1", "iat": now - 100}
    expired = jwt.encode(base | {"nbf": now - 100, "exp": now - 10}, secret, algorithm="HS256")
    await assert_error(await client.get("/users", headers=bearer(expired)), 401,
                       "Access token has expired")
    future = jwt.encode(base | {"nbf": now + 600, "exp": now + 900}, secret, algorithm="HS256")
    await assert_error(await client.get("/users", headers=bearer(future)), 401,
                       "Access token is invalid")
    no_jti = jwt.encode({"sub": "admin", "iat": now, "nbf": now, "exp": now + 60}, secret,
                        algorithm="HS256")
    await assert_error(await client.get("/users", headers=bearer(no_jti)), 401,
                       "Access token is invalid")


async def test_token_of_deleted_user(client: TestClient[Any, Any], admin_token: str,
                                     user_token: str) -> None:
    assert (await client.delete("/users/alice", headers=bearer(admin_token))).status == 200
    resp = await client.post("/speech", json={"voice_id": "alba", "text": "hi"},
                             headers=bearer(user_token))
    await assert_error(resp, 401, "The user with such access token does not exist")


async def test_expire_revokes_token_across_restart(tmp_path: Path, started_app_factory: Any,
                                                   capsys: Any) -> None:
    cfg = make_config(tmp_path)
    first = await started_app_factory(cfg)
    password = capsys.readouterr().out.split("<User admin:")[1].split(":True>")[0]
    token = await login(first, "admin", password)
    other = await login(first, "admin", password)
    resp = await first.post("/auth/expire", headers=bearer(token))
    assert resp.status == 200
    assert await resp.json() == {"message": "The token has been manually expired."}
    await assert_error(await first.get("/users", headers=bearer(token)), 401,
                       "Access token has expired")
    assert (await first.get("/users", headers=bearer(other))).status == 200
    await first.close()
    second = await started_app_factory(cfg)
    assert "<User admin:" not in capsys.readouterr().out  # not a first start any more
    await assert_error(await second.get("/users", headers=bearer(token)), 401,
                       "Access token has expired")
    assert (await second.get("/users", headers=bearer(other))).status == 200


@pytest.mark.sqlite_only("the secret file, which PostgreSQL replaces with the stored secret")
async def test_secret_file_is_private_and_reused(tmp_path: Path, started_app_factory: Any) -> None:
    cfg = make_config(tmp_path)
    await started_app_factory(cfg)
    first = cfg.secret_file.read_bytes()
    assert cfg.secret_file.stat().st_mode & 0o777 == 0o600
    assert cfg.database.stat().st_mode & 0o077 == 0
    await started_app_factory(cfg)
    assert cfg.secret_file.read_bytes() == first


async def test_token_lifetime_is_configurable(tmp_path: Path, started_app_factory: Any,
                                              capsys: Any) -> None:
    cfg = make_config(tmp_path, token_expiration_minutes="5")
    client = await started_app_factory(cfg)
    password = capsys.readouterr().out.split("<User admin:")[1].split(":True>")[0]
    claims = jwt.decode(await login(client, "admin", password),
                        options={"verify_signature": False})
    assert claims["exp"] - claims["iat"] == 300


async def test_login_throttling_per_uid(tmp_path: Path, started_app_factory: Any,
                                        capsys: Any) -> None:
    cfg = make_config(tmp_path, login_max_failures="3")
    client = await started_app_factory(cfg)
    password = capsys.readouterr().out.split("<User admin:")[1].split(":True>")[0]
    for _ in range(3):
        await assert_error(await client.post("/auth", json={"uid": "admin", "password": "no"}),
                           401, "Login details are incorrect")
    resp = await client.post("/auth", json={"uid": "admin", "password": password})
    await assert_error(resp, 429)
    assert int(resp.headers["Retry-After"]) > 0
    # another uid is not locked by admin's failures
    await assert_error(await client.post("/auth", json={"uid": "bob", "password": "no"}), 401)


async def test_change_own_password(client: TestClient[Any, Any], admin_token: str,
                                   admin_password: str) -> None:
    resp = await client.post("/auth/password", headers=bearer(admin_token),
                             json={"old_password": "wrong", "new_password": "n3w-password"})
    await assert_error(resp, 422, contains="old_password")
    resp = await client.post("/auth/password", headers=bearer(admin_token),
                             json={"old_password": admin_password, "new_password": "short"})
    await assert_error(resp, 422, contains="new_password")
    resp = await client.post("/auth/password", headers=bearer(admin_token),
                             json={"old_password": admin_password, "new_password": "n3w-password"})
    assert resp.status == 200
    await assert_error(await client.post("/auth", json={"uid": "admin", "password": admin_password}),
                       401, "Login details are incorrect")
    await login(client, "admin", "n3w-password")
    await assert_error(await client.post("/auth/password", json={}), 401,
                       "Missing Authorization Header")


async def test_long_password_and_unicode_work(client: TestClient[Any, Any], admin_token: str,
                                              admin_password: str) -> None:
    long_password = "ü" * 500
    resp = await client.post("/auth/password", headers=bearer(admin_token),
                             json={"old_password": admin_password, "new_password": long_password})
    assert resp.status == 200
    await login(client, "admin", long_password)
    await assert_error(await client.post("/auth", json={"uid": "admin",
                                                         "password": "ü" * 499 + "u"}), 401)


def test_issue_token_is_decodable_with_secret() -> None:
    token = issue_token(b"s" * 40, "bob", 60)
    assert jwt.decode(token, b"s" * 40, algorithms=["HS256"])["sub"] == "bob"
