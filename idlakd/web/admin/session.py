"""The admin page's session: a signed cookie, CSRF tokens bound to it, one-shot page messages."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import secrets
import time
import uuid
from typing import Any, Final

import jwt
from aiohttp import web

from idlakd.web.auth import TokenClaims
from idlakd.web.keys import config_key, secret_key, store_key

SESSION_COOKIE: Final = "idlakd_admin"
# Set on the sign-in form before any session exists, so that form has a CSRF token too.
LOGIN_COOKIE: Final = "idlakd_admin_login"
COOKIE_PATH: Final = "/admin"
AUDIENCE: Final = "idlakd-admin"
ALGORITHM: Final = "HS256"
LOGIN_FORM_SECONDS: Final = 3600
CSRF_FIELD: Final = "csrf_token"
CSRF_HEADER: Final = "X-CSRF-Token"


def derive_key(secret: bytes, purpose: str) -> bytes:
    """A key for one purpose derived from the daemon's secret.

    Separate keys mean an admin cookie is never a valid API token (nor the reverse).
    """
    return hmac.new(secret, f"idlakd admin {purpose}".encode(), hashlib.sha256).digest()


@dataclasses.dataclass(frozen=True)
class AdminSession:
    """A verified session: who, its id (jti, revocable like a token) and its expiry."""

    uid: str
    jti: str
    exp: float
    csrf: str
    iat: float

    def claims(self) -> TokenClaims:
        """The session as token claims, so API handlers can authenticate it the same way."""
        return TokenClaims(sub=self.uid, jti=self.jti, exp=self.exp, iat=self.iat)


def csrf_token(secret: bytes, binding: str) -> str:
    """The CSRF token of a session id (or of a sign-in form nonce)."""
    mac = hmac.new(derive_key(secret, "csrf"), binding.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).decode().rstrip("=")


def csrf_ok(secret: bytes, binding: str, presented: str | None) -> bool:
    """True when presented is the CSRF token of binding (constant-time comparison)."""
    return bool(presented) and hmac.compare_digest(
        csrf_token(secret, binding).encode(), str(presented).encode())


def issue_session(secret: bytes, uid: str, lifetime_seconds: int,
                  now: float | None = None) -> tuple[str, str, float]:
    """A signed session cookie value for uid -> (value, jti, exp)."""
    issued = int(time.time() if now is None else now)
    exp = issued + lifetime_seconds
    jti = uuid.uuid4().hex
    value = jwt.encode({"sub": uid, "jti": jti, "iat": issued, "exp": exp, "aud": AUDIENCE},
                       derive_key(secret, "session"), algorithm=ALGORITHM)
    return value, jti, float(exp)


def read_session_cookie(secret: bytes, value: str) -> AdminSession | None:
    """The session a cookie value names when its signature and times are good, else None."""
    try:
        claims: dict[str, Any] = jwt.decode(
            value, derive_key(secret, "session"), algorithms=[ALGORITHM], audience=AUDIENCE,
            options={"require": ["sub", "jti", "iat", "exp", "aud"]})
    except jwt.InvalidTokenError:
        return None
    sub, jti = claims.get("sub"), claims.get("jti")
    if not isinstance(sub, str) or not isinstance(jti, str):
        return None
    return AdminSession(uid=sub, jti=jti, exp=float(claims["exp"]), csrf=csrf_token(secret, jti),
                        iat=float(claims["iat"]))


def cookie_secure(request: web.Request) -> bool:
    """Mark cookies Secure over HTTPS, or always when configured (TLS ends at a proxy)."""
    return request.secure or request.app[config_key].cookie_secure


def set_cookie(request: web.Request, response: web.StreamResponse, name: str, value: str,
               max_age: int) -> None:
    """Set an admin cookie: HttpOnly, SameSite=Strict, path /admin, Secure when it can be."""
    response.set_cookie(name, value, max_age=max_age, path=COOKIE_PATH, httponly=True,
                        samesite="Strict", secure=cookie_secure(request))


def clear_cookie(request: web.Request, response: web.StreamResponse, name: str) -> None:
    """Remove an admin cookie from the browser."""
    response.del_cookie(name, path=COOKIE_PATH, secure=cookie_secure(request),
                        httponly=True, samesite="Strict")


async def current_session(request: web.Request) -> tuple[AdminSession | None, bool]:
    """(session, is_admin) of a signed, unexpired, unrevoked cookie of an existing user."""
    value = request.cookies.get(SESSION_COOKIE)
    if not value:
        return None, False
    session = read_session_cookie(request.app[secret_key], value)
    if session is None:
        return None, False
    # issued_at: a session from before its uid was re-created belonged to a deleted user.
    revoked, user = await request.app[store_key].token_state(session.jti, session.uid,
                                                             session.iat)
    if revoked or user is None:
        return None, False
    return session, user.admin


def login_nonce() -> str:
    """A fresh random nonce for the sign-in form's cookie."""
    return secrets.token_urlsafe(18)


@dataclasses.dataclass(frozen=True)
class Flash:
    """A message shown once on the next page: 'ok' or 'error', maybe with a one-time secret."""

    kind: str
    text: str
    secret: str | None = None
    secret_label: str = ""


class Flashes:
    """Messages waiting for the next page of a session (post/redirect/get), kept in memory.

    A generated password rides here, never in a cookie or a URL, and is gone once shown.
    """

    MAX_SESSIONS: Final = 10_000
    MAX_AGE_SECONDS: Final = 300.0

    def __init__(self) -> None:
        self._pending: dict[str, tuple[float, list[Flash]]] = {}

    def push(self, jti: str, flash: Flash) -> None:
        """Queue a message for the session's next page."""
        now = time.monotonic()
        if len(self._pending) >= self.MAX_SESSIONS:
            # Unread messages of abandoned sessions must not grow without bound.
            for key in [k for k, (t, _) in self._pending.items()
                        if t < now - self.MAX_AGE_SECONDS] or list(self._pending)[:100]:
                del self._pending[key]
        self._pending.setdefault(jti, (now, []))[1].append(flash)

    def pop(self, jti: str) -> list[Flash]:
        """The session's waiting messages (fresh ones only), removed."""
        stamped, flashes = self._pending.pop(jti, (0.0, []))
        return flashes if stamped >= time.monotonic() - self.MAX_AGE_SECONDS else []

    def forget(self, jti: str) -> None:
        """Drop a session's messages (on sign-out)."""
        self._pending.pop(jti, None)
