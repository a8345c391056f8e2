"""/users: admin-only user management."""

from __future__ import annotations

import secrets

from aiohttp import web

from idlakd.auth import generate_password, require_admin
from idlakd.errors import Unprocessable
from idlakd.http import json_response
from idlakd.keys import passwords_key, store_key
from idlakd.validation import UID_RULE, Fields, json_object, valid_uid

USER_EXISTS = "User id already exists"
NO_SUCH_USER = "User does not exist"
ONLY_ADMIN = "User is the only admin, there must be at least one admin in the system"


async def list_users(request: web.Request) -> web.Response:
    """GET /users -> {users: [{id, admin}]}."""
    await require_admin(request)
    users = await request.app[store_key].list_users()
    return json_response({"users": [{"id": u.uid, "admin": u.admin} for u in users]})


async def create_user(request: web.Request) -> web.Response:
    """POST /users {uid?, admin?} -> {uid, password, admin}; the password is shown only here."""
    await require_admin(request)
    fields = Fields(await json_object(request, optional=True))
    uid = fields.string("uid")
    admin = fields.boolean("admin", default=False)
    if uid is not None and not valid_uid(uid):
        fields.error("uid", UID_RULE)
    fields.check()
    uid = uid if uid is not None else secrets.token_hex(6)
    password = generate_password()
    password_hash = await request.app[passwords_key].hash(password)
    if not await request.app[store_key].add_user(uid, password_hash, admin):
        raise Unprocessable(USER_EXISTS)
    return json_response({"uid": uid, "password": password, "admin": admin})


async def reset_password(request: web.Request) -> web.Response:
    """POST /users/{uid}/password -> {password}: a new generated password."""
    await require_admin(request)
    uid = request.match_info["uid"]
    password = generate_password()
    password_hash = await request.app[passwords_key].hash(password)
    if not await request.app[store_key].set_password_hash(uid, password_hash):
        raise Unprocessable(NO_SUCH_USER)
    return json_response({"password": password})


async def delete_user(request: web.Request) -> web.Response:
    """DELETE /users/{uid}; the last admin cannot be deleted."""
    await require_admin(request)
    uid = request.match_info["uid"]
    outcome = await request.app[store_key].delete_user(uid)
    if outcome == "missing":
        raise Unprocessable(NO_SUCH_USER)
    if outcome == "last_admin":
        raise Unprocessable(ONLY_ADMIN)
    return json_response({"message": f"User '{uid}' has been deleted"})


async def toggle_admin(request: web.Request) -> web.Response:
    """POST /users/{uid}/admin: toggle the admin flag; the last admin stays admin."""
    await require_admin(request)
    uid = request.match_info["uid"]
    outcome, admin = await request.app[store_key].set_admin(uid, None)
    if outcome == "missing":
        raise Unprocessable(NO_SUCH_USER)
    if outcome == "last_admin":
        raise Unprocessable(ONLY_ADMIN)
    return json_response({"uid": uid, "admin": admin})
