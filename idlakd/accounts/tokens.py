"""Access tokens: the signing secret file, issuing and verifying HS256 JWTs, and whom one names."""

from __future__ import annotations

import dataclasses
import logging
import os
import secrets
import time
import uuid
from pathlib import Path
from typing import Any, Final

import jwt

from idlakd.errors import NotAuthenticated
from idlakd.models import User
from idlakd.store.sqlite import Store

log = logging.getLogger(__name__)

ALGORITHM: Final = "HS256"
SECRET_BYTES: Final = 64

MISSING_HEADER: Final = "Missing Authorization Header"
INVALID_TOKEN: Final = "Access token is invalid"
EXPIRED_TOKEN: Final = "Access token has expired"
NO_SUCH_USER: Final = "The user with such access token does not exist"
ADMIN_REQUIRED: Final = "Admin permissions required"


def load_or_create_secret(path: Path) -> bytes:
    """Read the signing secret, creating it (mode 0600, never regenerated) on first start."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        secret = path.read_bytes().strip()
        if len(secret) < 32:
            raise ValueError(f"secret file {path} is too short; delete it to create a new one")
        if path.stat().st_mode & 0o077:
            log.warning("Secret file %s is readable by others; chmod 600 it", path)
        return secret
    secret = secrets.token_urlsafe(SECRET_BYTES).encode()
    with os.fdopen(fd, "wb") as fh:
        fh.write(secret + b"\n")
        fh.flush()
        os.fsync(fh.fileno())
    log.info("Created a new token signing secret in %s", path)
    return secret


@dataclasses.dataclass(frozen=True)
class TokenClaims:
    """The claims idlakd reads from a verified access token."""

    sub: str
    jti: str
    exp: float
    iat: float | None = None


def issue_token(secret: bytes, uid: str, lifetime_seconds: int) -> str:
    """A signed HS256 access token for uid with iat, nbf, exp and a unique jti."""
    now = int(time.time())
    payload = {"sub": uid, "iat": now, "nbf": now, "exp": now + lifetime_seconds,
               "jti": uuid.uuid4().hex}
    return jwt.encode(payload, secret, algorithm=ALGORITHM)


def decode_token(secret: bytes, token: str) -> TokenClaims:
    """Verify signature, algorithm and times; raise NotAuthenticated with the contract's message."""
    try:
        claims: dict[str, Any] = jwt.decode(
            token, secret, algorithms=[ALGORITHM],
            options={"require": ["sub", "exp", "iat", "nbf", "jti"]})
    except jwt.ExpiredSignatureError:
        raise NotAuthenticated(EXPIRED_TOKEN) from None
    except jwt.InvalidTokenError:
        raise NotAuthenticated(INVALID_TOKEN) from None
    sub, jti = claims.get("sub"), claims.get("jti")
    if not isinstance(sub, str) or not isinstance(jti, str):
        raise NotAuthenticated(INVALID_TOKEN)
    return TokenClaims(sub=sub, jti=jti, exp=float(claims["exp"]), iat=float(claims["iat"]))


async def token_user(store: Store, claims: TokenClaims) -> User:
    """The user a verified token (or admin session) names, or raise NotAuthenticated.

    Revoked tokens have expired; a token from before its uid was (re)created names a
    deleted user, not the one now holding the uid.
    """
    revoked, user = await store.token_state(claims.jti, claims.sub, claims.iat)
    if revoked:
        raise NotAuthenticated(EXPIRED_TOKEN)
    if user is None:
        raise NotAuthenticated(NO_SUCH_USER)
    return user
