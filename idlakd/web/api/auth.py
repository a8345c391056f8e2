"""/auth: log in for a token, revoke it, change one's own password."""

from __future__ import annotations

from aiohttp import web

from idlakd.web.auth import issue_token, require_user, token_lifetime_seconds, verify_login
from idlakd.errors import Unauthorized, Unprocessable
from idlakd.web.http import json_response
from idlakd.web.keys import passwords_key, secret_key, store_key, user_id_key
from idlakd.web.validation import Fields, json_object

MIN_PASSWORD_LENGTH = 8


async def login(request: web.Request) -> web.Response:
    """POST /auth {uid, password} -> {access_token}; throttled after repeated failures."""
    fields = Fields(await json_object(request))
    uid = fields.string("uid", required=True)
    password = fields.string("password", required=True)
    fields.check()
    assert uid is not None and password is not None
    await verify_login(request.app, uid, password, request.remote or "unknown")
    request[user_id_key] = uid
    token = issue_token(request.app[secret_key], uid, token_lifetime_seconds(request))
    return json_response({"access_token": token})


async def expire(request: web.Request) -> web.Response:
    """POST /auth/expire: revoke the presented token until its own expiry."""
    _, claims = await require_user(request)
    if claims is not None:
        await request.app[store_key].revoke_token(claims.jti, claims.exp)
    return json_response({"message": "The token has been manually expired."})


async def change_password(request: web.Request) -> web.Response:
    """POST /auth/password {old_password, new_password}: change one's own password."""
    user, _ = await require_user(request)
    fields = Fields(await json_object(request))
    old = fields.string("old_password", required=True)
    new = fields.string("new_password", required=True)
    if new is not None and len(new) < MIN_PASSWORD_LENGTH:
        fields.error("new_password", f"Shorter than minimum length {MIN_PASSWORD_LENGTH}.")
    fields.check()
    assert old is not None and new is not None
    try:
        await verify_login(request.app, user.uid, old, request.remote or "unknown")
    except Unauthorized:
        raise Unprocessable("old_password: Password is incorrect.") from None
    new_hash = await request.app[passwords_key].hash(new)
    await request.app[store_key].set_password_hash(user.uid, new_hash)
    return json_response({"message": "Password has been changed."})
