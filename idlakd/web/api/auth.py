"""/auth: log in for a token, revoke it, change one's own password."""

from __future__ import annotations

from typing import Final

from aiohttp import web

from idlakd.accounts import keys as api_keys
from idlakd.accounts.logins import verify_login
from idlakd.accounts.tokens import TokenClaims, issue_token
from idlakd.errors import InvalidRequest, NotAuthenticated
from idlakd.web.auth import token_lifetime_seconds
from idlakd.web.http import json_response
from idlakd.web.keys import (client_address_key, config_key, passwords_key, secret_key, store_key, throttle_key,
                             token_key, user_id_key, user_key)
from idlakd.web.validation import Fields, json_object

MIN_PASSWORD_LENGTH: Final = 8


async def _check_password(request: web.Request, uid: str, password: str) -> None:
    """The one login check, for the client's address."""
    app = request.app
    await verify_login(app[throttle_key], app[store_key], app[passwords_key], uid, password,
                       request[client_address_key])


async def login(request: web.Request) -> web.Response:
    """POST /auth {uid, password} -> {access_token}; throttled after repeated failures."""
    fields = Fields(await json_object(request))
    uid = fields.string("uid", required=True)
    password = fields.string("password", required=True)
    fields.check()
    assert uid is not None and password is not None
    await _check_password(request, uid, password)
    request[user_id_key] = uid
    token = issue_token(request.app[secret_key], uid, token_lifetime_seconds(request))
    return json_response({"access_token": token})


async def expire(request: web.Request) -> web.Response:
    """POST /auth/expire: revoke the presented token until its own expiry (an API key: for good)."""
    claims = request[token_key]
    # With authorization off nobody presented a token that counts: nothing to revoke.
    if request.app[config_key].authorization and isinstance(claims, TokenClaims):
        await request.app[store_key].revoke_token(claims.jti, claims.exp)
    elif request.app[config_key].authorization and isinstance(claims, api_keys.PresentedKey):
        await api_keys.revoke_presented(request.app[store_key], claims)
    return json_response({"message": "The token has been manually expired."})


async def change_password(request: web.Request) -> web.Response:
    """POST /auth/password {old_password, new_password}: change one's own password."""
    user = request[user_key]
    fields = Fields(await json_object(request))
    old = fields.string("old_password", required=True)
    new = fields.string("new_password", required=True)
    if new is not None and len(new) < MIN_PASSWORD_LENGTH:
        fields.error("new_password", f"Shorter than minimum length {MIN_PASSWORD_LENGTH}.")
    fields.check()
    assert old is not None and new is not None
    try:
        await _check_password(request, user.uid, old)
    except NotAuthenticated:
        raise InvalidRequest("old_password: Password is incorrect.") from None
    new_hash = await request.app[passwords_key].hash(new)
    await request.app[store_key].set_password_hash(user.uid, new_hash)
    return json_response({"message": "Password has been changed."})
