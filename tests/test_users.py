"""/users: listing, creation, password reset, deletion, admin toggle, last-admin rules."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import pytest
from aiohttp.test_utils import TestClient
from yarl import URL

from idlakd.web.keys import passwords_key, store_key
from tests.helpers.app import assert_error, bearer, login

# The user routes on both stores: the same answers from SQLite and PostgreSQL.
pytestmark = pytest.mark.both_stores

async def test_list_users(client: TestClient[Any, Any], admin_token: str) -> None:
    resp = await client.get("/users", headers=bearer(admin_token))
    assert resp.status == 200
    assert resp.headers["Content-Type"] == "application/json"
    assert await resp.json() == {"users": [{"id": "admin", "admin": True}]}


async def test_create_user_and_login(client: TestClient[Any, Any], admin_token: str) -> None:
    resp = await client.post("/users", json={"uid": "bob", "admin": False},
                             headers=bearer(admin_token))
    assert resp.status == 200
    body = await resp.json()
    assert body["uid"] == "bob" and body["admin"] is False
    assert len(body["password"]) >= 22  # 128 bits, URL-safe
    await login(client, "bob", body["password"])
    users = (await (await client.get("/users", headers=bearer(admin_token))).json())["users"]
    assert {"id": "bob", "admin": False} in users


async def test_create_user_generates_uid(client: TestClient[Any, Any], admin_token: str) -> None:
    resp = await client.post("/users", headers=bearer(admin_token))
    assert resp.status == 200
    body = await resp.json()
    assert body["uid"] and body["admin"] is False
    await login(client, body["uid"], body["password"])
    resp = await client.post("/users", json={"admin": True}, headers=bearer(admin_token))
    assert (await resp.json())["admin"] is True


async def test_create_user_errors(client: TestClient[Any, Any], admin_token: str) -> None:
    h = bearer(admin_token)
    await assert_error(await client.post("/users", json={"uid": "admin"}, headers=h), 422,
                       "User id already exists")
    await assert_error(await client.post("/users", json={"uid": "x", "admin": "yes"}, headers=h),
                       422, "admin: Not a valid boolean.")
    await assert_error(await client.post("/users", json={"uid": "x", "admin": 1}, headers=h),
                       422, "admin: Not a valid boolean.")
    await assert_error(await client.post("/users", json={"uid": 12}, headers=h), 422,
                       "uid: Not a valid string.")
    await assert_error(await client.post("/users", json={"uid": "a" * 65}, headers=h), 422,
                       contains="uid:")
    await assert_error(await client.post("/users", json={"uid": "a" * 100_000}, headers=h), 422,
                       contains="uid:")
    await assert_error(await client.post("/users", json={"uid": "a/b"}, headers=h), 422,
                       contains="uid:")
    await assert_error(await client.post("/users", json={"uid": ""}, headers=h), 422,
                       contains="uid:")


async def test_uids_from_before_the_uid_rule_keep_working(client: TestClient[Any, Any],
                                                           admin_token: str) -> None:
    """Uids the rule now refuses (markup, SQL quotes, '%', look-alikes) still work for users
    created before it: login and token, admin toggle, password reset and delete by URL."""
    h = bearer(admin_token)
    app = client.app
    legacy = ("<script>", "o'brien\";--", "x%20y", "ünï©ødé", "\u0430dmin", "a\u200bb")
    for uid in legacy:
        await assert_error(await client.post("/users", json={"uid": uid}, headers=h), 422,
                           contains="uid: Must be 1 to 64 characters")
        # Created as an older idlakd did: straight into the database.
        await app[store_key].add_user(uid, await app[passwords_key].hash("legacy-pass"), False)
        token = await login(client, uid, "legacy-pass")
        assert (await client.post("/auth/expire", headers=bearer(token))).status == 200
        seg = quote(uid, safe="")
        resp = await client.post(URL(f"/users/{seg}/admin", encoded=True), headers=h)
        assert resp.status == 200 and (await resp.json()) == {"uid": uid, "admin": True}
        resp = await client.post(URL(f"/users/{seg}/password", encoded=True), headers=h)
        await login(client, uid, (await resp.json())["password"])
    users = (await (await client.get("/users", headers=h)).json())["users"]
    assert [u["id"] for u in users] == ["admin", *legacy]
    for uid in legacy:
        resp = await client.delete(URL(f"/users/{quote(uid, safe='')}", encoded=True), headers=h)
        assert resp.status == 200, uid
    assert len((await (await client.get("/users", headers=h)).json())["users"]) == 1


async def test_non_admin_is_refused(client: TestClient[Any, Any], user_token: str) -> None:
    h = bearer(user_token)
    for method, path in (("GET", "/users"), ("POST", "/users"), ("POST", "/users/admin/password"),
                         ("DELETE", "/users/admin"), ("POST", "/users/admin/admin")):
        await assert_error(await client.request(method, path, headers=h), 401,
                           "Admin permissions required")


async def test_reset_password(client: TestClient[Any, Any], admin_token: str,
                              admin_password: str) -> None:
    h = bearer(admin_token)
    created = await (await client.post("/users", json={"uid": "carol"}, headers=h)).json()
    resp = await client.post("/users/carol/password", headers=h)
    assert resp.status == 200
    new = (await resp.json())["password"]
    assert new != created["password"] and len(new) >= 22
    await assert_error(await client.post("/auth", json={"uid": "carol",
                                                         "password": created["password"]}), 401)
    await login(client, "carol", new)
    await assert_error(await client.post("/users/nobody/password", headers=h), 422,
                       "User does not exist")


async def test_delete_user(client: TestClient[Any, Any], admin_token: str) -> None:
    h = bearer(admin_token)
    await client.post("/users", json={"uid": "dave"}, headers=h)
    resp = await client.delete("/users/dave", headers=h)
    assert resp.status == 200
    assert await resp.json() == {"message": "User 'dave' has been deleted"}
    await assert_error(await client.delete("/users/dave", headers=h), 422, "User does not exist")


async def test_last_admin_rules(client: TestClient[Any, Any], admin_token: str) -> None:
    h = bearer(admin_token)
    only = "User is the only admin, there must be at least one admin in the system"
    await assert_error(await client.delete("/users/admin", headers=h), 422, only)
    await assert_error(await client.post("/users/admin/admin", headers=h), 422, only)
    await assert_error(await client.post("/users/ghost/admin", headers=h), 422,
                       "User does not exist")
    await client.post("/users", json={"uid": "erin"}, headers=h)
    resp = await client.post("/users/erin/admin", headers=h)
    assert await resp.json() == {"uid": "erin", "admin": True}
    resp = await client.post("/users/admin/admin", headers=h)
    assert await resp.json() == {"uid": "admin", "admin": False}
    # admin's token still authenticates, but admin is no longer an admin
    await assert_error(await client.get("/users", headers=h), 401, "Admin permissions required")
