"""Access tokens: the signing secret file, issuing and verifying HS256 JWTs, and whom one names."""

from __future__ import annotations

import asyncio
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
from idlakd.store.factory import Store
from idlakd.store.postgres import PostgresStore

log = logging.getLogger(__name__)

ALGORITHM: Final = "HS256"
SECRET_BYTES: Final = 64

MISSING_HEADER: Final = "Missing Authorization Header"
INVALID_TOKEN: Final = "Access token is invalid"
EXPIRED_TOKEN: Final = "Access token has expired"
NO_SUCH_USER: Final = "The user with such access token does not exist"
ADMIN_REQUIRED: Final = "Admin permissions required"
#: Verified tokens remembered at most by a TokenVerifier (past it, it starts again empty).
MAX_VERIFIED: Final = 10_000


def new_secret() -> bytes:
    """A fresh random signing secret."""
    return secrets.token_urlsafe(SECRET_BYTES).encode()


async def load_secret(path: Path | None, store: Store) -> bytes:
    """The signing secret: from its file (created on first start), or, with no file
    configured, the one kept in the PostgreSQL store (created once by the first node)."""
    if path is not None:
        return await asyncio.to_thread(load_or_create_secret, path)
    if not isinstance(store, PostgresStore):
        raise ValueError("a SQLite store keeps no token secret: set secret_file")
    return await store.keep_secret(new_secret())


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
    secret = new_secret()
    with os.fdopen(fd, "wb") as fh:
        fh.write(secret + b"\n")
        fh.flush()
        os.fsync(fh.fileno())
    log.info("Created a new token signing secret in %s", path)
    return secret


# The issue instant in nanoseconds: iat is whole seconds (as clients expect), too coarse to
# tell a token issued just before a password change from one issued just after it.
ISSUED_NS_CLAIM: Final = "iat_ns"


@dataclasses.dataclass(frozen=True)
class TokenClaims:
    """The claims idlakd reads from a verified access token (or an admin session)."""

    sub: str
    jti: str
    exp: float
    iat: float | None = None
    issued_ns: int | None = None
    nbf: float | None = None

    def issued_before(self, instant: float) -> bool:
        """Whether the token was issued before instant (wall-clock seconds, as the store keeps).

        Tokens of an older idlakd carry only the whole-second iat: they count as issued at the
        end of that second (the old rule), so none is refused for being issued in it.
        """
        if self.issued_ns is not None:
            return self.issued_ns / 1e9 < instant
        return self.iat is not None and self.iat + 1 <= instant


def issued_claims(now_ns: int | None = None) -> dict[str, int]:
    """iat (whole seconds) and the precise issue instant, for a token or session issued now."""
    issued_ns = time.time_ns() if now_ns is None else now_ns
    return {"iat": issued_ns // 1_000_000_000, ISSUED_NS_CLAIM: issued_ns}


def precise_issue(claims: dict[str, Any]) -> int | None:
    """The precise issue instant of decoded claims; None when absent; ValueError when malformed."""
    value = claims.get(ISSUED_NS_CLAIM)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(ISSUED_NS_CLAIM)
    if value // 1_000_000_000 != claims.get("iat"):
        raise ValueError(ISSUED_NS_CLAIM)  # two issue instants that disagree: not ours
    return value


def issue_token(secret: bytes, uid: str, lifetime_seconds: int) -> str:
    """A signed HS256 access token for uid with iat (and its precise twin), nbf, exp, a jti."""
    issued = issued_claims()
    now = issued["iat"]
    payload = {"sub": uid, **issued, "nbf": now, "exp": now + lifetime_seconds,
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
    try:
        issued_ns = precise_issue(claims)
    except ValueError:
        raise NotAuthenticated(INVALID_TOKEN) from None
    return TokenClaims(sub=sub, jti=jti, exp=float(claims["exp"]), iat=float(claims["iat"]),
                       issued_ns=issued_ns, nbf=float(claims["nbf"]))


class TokenVerifier:
    """decode_token with a memory: a token verified before skips its signature check (the same
    text under the same secret always verifies the same), and only its times are checked again,
    as PyJWT checks them (iat and nbf not in the future, else invalid; exp passed: expired).
    Whether it was revoked or its user changed is the store's answer (token_user), not this."""

    def __init__(self, secret: bytes, max_entries: int = MAX_VERIFIED) -> None:
        self.secret = secret
        self._max_entries = max_entries
        self._verified: dict[str, TokenClaims] = {}

    def decode(self, token: str) -> TokenClaims:
        """The claims of a valid token, or raise NotAuthenticated with the contract's message."""
        claims = self._verified.get(token)
        if claims is None:
            claims = decode_token(self.secret, token)
            if len(self._verified) >= self._max_entries:
                self._verified.clear()
            self._verified[token] = claims
        now = time.time()
        if int(claims.iat or 0) > now or int(claims.nbf or 0) > now:
            raise NotAuthenticated(INVALID_TOKEN)
        if int(claims.exp) <= now:
            raise NotAuthenticated(EXPIRED_TOKEN)
        return claims


async def token_user(store: Store, claims: TokenClaims) -> User:
    """The user a verified token (or admin session) names, or raise NotAuthenticated.

    Revoked tokens have expired, and so has every token issued before its user's password was
    last changed or reset; a token from before its uid was (re)created names a deleted user,
    not the one now holding the uid.
    """
    state = await store.token_state(claims.jti, claims.sub)
    if state.revoked:
        raise NotAuthenticated(EXPIRED_TOKEN)
    if state.user is None or claims.issued_before(state.created_at):
        raise NotAuthenticated(NO_SUCH_USER)
    if claims.issued_before(state.valid_after):
        raise NotAuthenticated(EXPIRED_TOKEN)
    return state.user
