"""Authentication over HTTP: the bearer token (or API key) of a request, checked and kept on it.

The auth middleware only authenticates; what a route needs is declared in the route table
and enforced by idlakd.web.guard.
"""

from __future__ import annotations

import time

from aiohttp import web

from idlakd.accounts import keys as api_keys
from idlakd.accounts.tokens import (INVALID_TOKEN, MISSING_HEADER, TokenClaims, decode_token,
                                    token_user)
from idlakd.errors import NotAuthenticated
from idlakd.models import User
from idlakd.web.http import Handler
from idlakd.web.keys import config_key, secret_key, store_key, token_key

# Who every request is when authorization is off (config authorization = false).
ANONYMOUS = User(uid="anonymous", admin=True)


def bearer_token(header: str | None) -> str | None:
    """The token of an Authorization header: 'Bearer <t>' or a bare '<t>' (as the original)."""
    if header is None:
        return None
    parts = header.strip().split()
    if len(parts) == 2 and parts[0].lower() == "bearer":
        return parts[1]
    if len(parts) == 1 and parts[0].lower() != "bearer":
        return parts[0]
    return ""


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Authenticate only: verify a token's signature and times (or hash an API key), keep the
    result on the request."""
    token = bearer_token(request.headers.get("Authorization"))
    request[token_key] = verified(request.app[secret_key], token)
    return await handler(request)


def verified(secret: bytes, token: str | None
             ) -> TokenClaims | api_keys.PresentedKey | NotAuthenticated:
    """A presented token's verified claims, an API key's digest, or why it is neither."""
    if token is None:
        return NotAuthenticated(MISSING_HEADER)
    if not token:
        return NotAuthenticated(INVALID_TOKEN)
    try:
        if api_keys.looks_like_key(token):
            return api_keys.presented(token)
        return decode_token(secret, token)
    except NotAuthenticated as exc:
        return exc


async def token_holder(request: web.Request) -> User:
    """The user the request's verified token or API key names (still existing, not revoked,
    not expired), or raise 401."""
    if not request.app[config_key].authorization:
        return ANONYMOUS
    result = request[token_key]
    if isinstance(result, NotAuthenticated):
        raise result
    if isinstance(result, api_keys.PresentedKey):
        _, user = await api_keys.key_holder(request.app[store_key], result, time.time())
        return user
    return await token_user(request.app[store_key], result)


def token_lifetime_seconds(request: web.Request) -> int:
    """Configured token lifetime in seconds."""
    return request.app[config_key].token_expiration_minutes * 60
