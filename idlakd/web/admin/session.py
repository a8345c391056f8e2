"""The admin page's session on a request: its cookies, and who the signed-in admin is."""

from __future__ import annotations

from typing import Final

from aiohttp import web

from idlakd.accounts.tokens import token_user
from idlakd.errors import NotAuthenticated
from idlakd.web.admin.signing import AdminSession, read_session_cookie
from idlakd.web.keys import config_key, secret_key, store_key

SESSION_COOKIE: Final = "idlakd_admin"
# Set on the sign-in form before any session exists, so that form has a CSRF token too.
LOGIN_COOKIE: Final = "idlakd_admin_login"
COOKIE_PATH: Final = "/admin"
LOGIN_FORM_SECONDS: Final = 3600
CSRF_FIELD: Final = "csrf_token"
CSRF_HEADER: Final = "X-CSRF-Token"


class SignInRequired(Exception):
    """No usable admin session: the error middleware redirects to the sign-in page."""

    def __init__(self, reason: str | None) -> None:
        super().__init__(reason or "")
        self.reason = reason


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
    try:
        user = await token_user(request.app[store_key], session.claims())
    except NotAuthenticated:  # revoked, or its user deleted (or re-created since)
        return None, False
    return session, user.admin
