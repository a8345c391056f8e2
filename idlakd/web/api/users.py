"""/users: admin-only user management."""

from __future__ import annotations

import secrets
from typing import Any

from aiohttp import web

from idlakd.web.auth import generate_password, require_admin
from idlakd.errors import Unprocessable
from idlakd.web.http import json_response
from idlakd.web.keys import passwords_key, store_key
from idlakd.web.validation import UID_RULE, Fields, json_object, normalise_uid

USER_EXISTS = "User id already exists"
NO_SUCH_USER = "User does not exist"
ONLY_ADMIN = "User is the only admin, there must be at least one admin in the system"


# The rules below are shared by these JSON handlers and the admin page (idlakd.web.admin).

def check_new_user(body: dict[str, Any]) -> tuple[str | None, bool]:
    """The (uid or None, admin) of a new user from {uid?, admin?}; raise the API's 422."""
    fields = Fields(body)
    uid = fields.string("uid")
    admin = fields.boolean("admin", default=False)
    if uid is not None:
        # New uids are stored normalised: look-alike spellings collide as 'User id already exists'.
        uid = normalise_uid(uid)
        if uid is None:
            fields.error("uid", UID_RULE)
    fields.check()
    return uid, admin


async def add_user(app: web.Application, uid: str | None, admin: bool) -> tuple[str, str]:
    """Create a user (uid generated when None) and return (uid, password); 422 if uid is taken."""
    uid = uid if uid is not None else secrets.token_hex(6)
    password = generate_password()
    password_hash = await app[passwords_key].hash(password)
    if not await app[store_key].add_user(uid, password_hash, admin):
        raise Unprocessable(USER_EXISTS)
    return uid, password


async def reset_user_password(app: web.Application, uid: str) -> str:
    """Give a user a new generated password and return it; 422 if the user does not exist."""
    password = generate_password()
    password_hash = await app[passwords_key].hash(password)
    if not await app[store_key].set_password_hash(uid, password_hash):
        raise Unprocessable(NO_SUCH_USER)
    return password


def _raise_for(outcome: str) -> None:
    """Turn a store outcome ('missing', 'last_admin') into the API's 422."""
    if outcome == "missing":
        raise Unprocessable(NO_SUCH_USER)
    if outcome == "last_admin":
        raise Unprocessable(ONLY_ADMIN)


async def remove_user(app: web.Application, uid: str) -> None:
    """Delete a user; 422 if unknown or the last admin."""
    _raise_for(await app[store_key].delete_user(uid))


async def toggle_user_admin(app: web.Application, uid: str) -> bool:
    """Toggle a user's admin flag and return it; 422 if unknown or the last admin."""
    outcome, admin = await app[store_key].set_admin(uid, None)
    _raise_for(outcome)
    return admin


async def list_users(request: web.Request) -> web.Response:
    """GET /users -> {users: [{id, admin}]}."""
    await require_admin(request)
    users = await request.app[store_key].list_users()
    return json_response({"users": [{"id": u.uid, "admin": u.admin} for u in users]})


async def create_user(request: web.Request) -> web.Response:
    """POST /users {uid?, admin?} -> {uid, password, admin}; the password is shown only here."""
    await require_admin(request)
    wanted_uid, admin = check_new_user(await json_object(request, optional=True))
    uid, password = await add_user(request.app, wanted_uid, admin)
    return json_response({"uid": uid, "password": password, "admin": admin})


async def reset_password(request: web.Request) -> web.Response:
    """POST /users/{uid}/password -> {password}: a new generated password."""
    await require_admin(request)
    password = await reset_user_password(request.app, request.match_info["uid"])
    return json_response({"password": password})


async def delete_user(request: web.Request) -> web.Response:
    """DELETE /users/{uid}; the last admin cannot be deleted."""
    await require_admin(request)
    uid = request.match_info["uid"]
    await remove_user(request.app, uid)
    return json_response({"message": f"User '{uid}' has been deleted"})


async def toggle_admin(request: web.Request) -> web.Response:
    """POST /users/{uid}/admin: toggle the admin flag; the last admin stays admin."""
    await require_admin(request)
    uid = request.match_info["uid"]
    admin = await toggle_user_admin(request.app, uid)
    return json_response({"uid": uid, "admin": admin})
