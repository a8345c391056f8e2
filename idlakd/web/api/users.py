"""/users: admin-only user management (the guard checked the admin token)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from idlakd.accounts import users as accounts
from idlakd.accounts.uids import UID_RULE, normalise_uid
from idlakd.web.http import json_response
from idlakd.web.keys import passwords_key, store_key
from idlakd.web.validation import Fields, json_object


def _new_user_fields(body: dict[str, Any]) -> tuple[str | None, bool]:
    """The (uid or None, admin) of a new user from {uid?, admin?}; one 422 names every bad field."""
    fields = Fields(body)
    uid = fields.string("uid")
    admin = fields.boolean("admin", default=False)
    if uid is not None and normalise_uid(uid) is None:
        fields.error("uid", UID_RULE)
    fields.check()
    return uid, admin


async def list_users(request: web.Request) -> web.Response:
    """GET /users -> {users: [{id, admin}]}."""
    users = await request.app[store_key].list_users()
    return json_response({"users": [{"id": u.uid, "admin": u.admin} for u in users]})


async def create_user(request: web.Request) -> web.Response:
    """POST /users {uid?, admin?} -> {uid, password, admin}; the password is shown only here."""
    uid, admin = _new_user_fields(await json_object(request, optional=True))
    created = await accounts.create_user(request.app[store_key], request.app[passwords_key],
                                         uid, admin)
    return json_response({"uid": created.uid, "password": created.password,
                          "admin": created.admin})


async def reset_password(request: web.Request) -> web.Response:
    """POST /users/{uid}/password -> {password}: a new generated password."""
    password = await accounts.reset_password(request.app[store_key], request.app[passwords_key],
                                             request.match_info["uid"])
    return json_response({"password": password})


async def delete_user(request: web.Request) -> web.Response:
    """DELETE /users/{uid}; the last admin cannot be deleted."""
    uid = request.match_info["uid"]
    await accounts.delete_user(request.app[store_key], uid)
    return json_response({"message": f"User '{uid}' has been deleted"})


async def toggle_admin(request: web.Request) -> web.Response:
    """POST /users/{uid}/admin: toggle the admin flag; the last admin stays admin."""
    uid = request.match_info["uid"]
    admin = await accounts.toggle_admin(request.app[store_key], uid)
    return json_response({"uid": uid, "admin": admin})
