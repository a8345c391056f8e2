"""Authentication over HTTP: the bearer token (or API key) of a request, checked and kept on it.

This only authenticates, when the guard (idlakd.web.guard, which enforces what the route table
declares) first asks: a public route never pays for a token check.
"""

from __future__ import annotations

import time

from aiohttp import web

from idlakd.accounts import keys as api_keys
from idlakd.accounts.tokens import (INVALID_TOKEN, MISSING_HEADER, TokenClaims, TokenVerifier,
                                    token_user)
from idlakd.errors import NotAuthenticated
from idlakd.models import User
from idlakd.web.keys import config_key, store_key, token_key, verifier_key

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


def authenticate(request: web.Request) -> TokenClaims | api_keys.PresentedKey | NotAuthenticated:
    """The request's verified token or API key (or why it has none), found once and kept on it."""
    result = request.get(token_key)
    if result is None:
        token = bearer_token(request.headers.get("Authorization"))
        result = request[token_key] = verified(request.app[verifier_key], token)
    return result


def verified(verifier: TokenVerifier, token: str | None
             ) -> TokenClaims | api_keys.PresentedKey | NotAuthenticated:
    """A presented token's verified claims, an API key's digest, or why it is neither."""
    if token is None:
        return NotAuthenticated(MISSING_HEADER)
    if not token:
        return NotAuthenticated(INVALID_TOKEN)
    try:
        if api_keys.looks_like_key(token):
            return api_keys.presented(token)
        return verifier.decode(token)
    except NotAuthenticated as exc:
        return exc


async def token_holder(request: web.Request) -> User:
    """The user the request's verified token or API key names (still existing, not revoked,
    not expired), or raise 401."""
    result = authenticate(request)
    if not request.app[config_key].authorization:
        return ANONYMOUS
    if isinstance(result, NotAuthenticated):
        raise result
    if isinstance(result, api_keys.PresentedKey):
        _, user = await api_keys.key_holder(request.app[store_key], result, time.time())
        return user
    return await token_user(request.app[store_key], result)


def token_lifetime_seconds(request: web.Request) -> int:
    """Configured token lifetime in seconds."""
    return request.app[config_key].token_expiration_minutes * 60
