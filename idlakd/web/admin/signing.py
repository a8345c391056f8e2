"""The admin page's signed values: session cookies and CSRF tokens, keyed off the daemon's secret."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import secrets
import uuid
from typing import Any, Final

import jwt

from idlakd.accounts.tokens import TokenClaims, issued_claims, precise_issue

AUDIENCE: Final = "idlakd-admin"
ALGORITHM: Final = "HS256"


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
    issued_ns: int | None = None

    def claims(self) -> TokenClaims:
        """The session as token claims: revoked and checked like an API token."""
        return TokenClaims(sub=self.uid, jti=self.jti, exp=self.exp, iat=self.iat,
                           issued_ns=self.issued_ns)


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
    issued = issued_claims(None if now is None else int(now * 1e9))
    exp = issued["iat"] + lifetime_seconds
    jti = uuid.uuid4().hex
    value = jwt.encode({"sub": uid, "jti": jti, **issued, "exp": exp, "aud": AUDIENCE},
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
    try:
        issued_ns = precise_issue(claims)
    except ValueError:
        return None
    return AdminSession(uid=sub, jti=jti, exp=float(claims["exp"]), csrf=csrf_token(secret, jti),
                        iat=float(claims["iat"]), issued_ns=issued_ns)


def login_nonce() -> str:
    """A fresh random nonce for the sign-in form's cookie."""
    return secrets.token_urlsafe(18)
