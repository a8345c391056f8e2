"""The one guard: every route's declared access (web.access) enforced before its handler runs."""

from __future__ import annotations

from typing import Any, Awaitable, Callable, Final, Mapping
from urllib.parse import urlsplit

from aiohttp import web

from idlakd.accounts.tokens import ADMIN_REQUIRED
from idlakd.errors import NotAuthenticated, NotPermitted
from idlakd.models import User
from idlakd.web.access import Access, Handler
from idlakd.web.admin.session import (CSRF_FIELD, CSRF_HEADER, SESSION_COOKIE, SignInRequired,
                                      current_session)
from idlakd.web.admin.signing import AdminSession, csrf_ok
from idlakd.web.auth import token_holder, verified
from idlakd.web.keys import (access_key, admin_session_key, config_key, secret_key, store_key,
                             token_key, user_id_key, user_key, verifier_key)
from idlakd.web.ops.metrics import is_local

FORM_EXPIRED: Final = ("This form has expired or did not come from this page (CSRF check "
                       "failed). Reload the page and try again.")
SESSION_ENDED: Final = "Your session has ended: sign in again."
CROSS_SITE: Final = "A session cookie is accepted from this server's own pages only"
NOT_LOCAL: Final = "Metrics are served to local addresses only"


def form_text(form: Mapping[str, Any], name: str) -> str:
    """A text field of a posted form ('' when absent or a file)."""
    value = form.get(name)
    return value if isinstance(value, str) else ""


async def _token_user(request: web.Request, admin: bool) -> None:
    """A user (or admin) token route: the token's user on the request, or 401."""
    user = await token_holder(request)
    if admin and not user.admin:
        raise NotAuthenticated(ADMIN_REQUIRED)
    request[user_key] = user
    request[user_id_key] = user.uid


async def _page_session(request: web.Request) -> AdminSession:
    """An admin page: the signed-in admin's session on the request, or SignInRequired."""
    session, is_admin = await current_session(request)
    if session is None:
        raise SignInRequired("expired" if request.cookies.get(SESSION_COOKIE) else None)
    if not is_admin:
        # Admin rights were taken away since sign-in: end this session for good.
        await request.app[store_key].revoke_token(session.jti, session.exp)
        raise SignInRequired("not-admin")
    return session


async def _fetch_session(request: web.Request) -> AdminSession:
    """The page's fetch() calls: a signed-in admin and the CSRF header, else 401/403 JSON."""
    session, is_admin = await current_session(request)
    if session is None or not is_admin:
        raise NotAuthenticated(SESSION_ENDED)
    if not csrf_ok(request.app[secret_key], session.jti, request.headers.get(CSRF_HEADER)):
        raise NotPermitted(FORM_EXPIRED)
    return session


async def _socket_upgrade(request: web.Request) -> None:
    """A socket route: the caller of a token on the upgrade or of the session cookie, noted;
    with neither, the handler authenticates the first message through socket_caller()."""
    if "Authorization" in request.headers or not request.app[config_key].authorization:
        await _token_user(request, admin=False)
        return
    if not request.cookies.get(SESSION_COOKIE):
        return
    origin = request.headers.get("Origin")
    # A browser sends the cookie whoever's page opens the socket: only our own pages may.
    # (The host only: behind a TLS proxy the scheme seen here is not the browser's.)
    if origin is not None and urlsplit(origin).netloc != request.host:
        raise NotPermitted(CROSS_SITE)
    session, is_admin = await current_session(request)
    if session is None or not is_admin:
        raise NotAuthenticated(SESSION_ENDED)
    request[admin_session_key] = session
    request[user_key] = User(uid=session.uid, admin=True)
    request[user_id_key] = session.uid


async def socket_caller(request: web.Request,
                        first_token: Callable[[], Awaitable[str]]) -> User:
    """The caller of a socket route: noted at the upgrade, else the user of the token that
    first_token() reads from the socket (it bounds its own wait); NotAuthenticated if none."""
    user = request.get(user_key)
    if user is not None:
        return user
    request[token_key] = verified(request.app[verifier_key], await first_token())
    await _token_user(request, admin=False)
    return request[user_key]


async def _enforce(request: web.Request, access: Access) -> None:
    """Raise unless the request may call a route of this access; note who it is."""
    if access == "public":
        return
    if access == "socket":
        await _socket_upgrade(request)
        return
    if access in ("user", "admin"):
        await _token_user(request, admin=access == "admin")
        return
    if access == "local":
        if request.app[config_key].metrics_local_only and not is_local(request):
            raise NotPermitted(NOT_LOCAL)
        return
    if access == "fetch":
        session = await _fetch_session(request)
        # The session stands in for a token: the handler sees the same keys as on the API.
        request[token_key] = session.claims()
    else:
        session = await _page_session(request)
        if access == "form":
            form = await request.post()  # kept by aiohttp: the handler's post() reads no more
            if not csrf_ok(request.app[secret_key], session.jti, form_text(form, CSRF_FIELD)):
                raise NotPermitted(FORM_EXPIRED)
    request[admin_session_key] = session
    # current_session found the session's user existing and an admin.
    request[user_key] = User(uid=session.uid, admin=True)
    request[user_id_key] = session.uid


@web.middleware
async def guard_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Enforce the matched route's declared access (unmatched requests reach their 404/405)."""
    access = request.app[access_key].get(request.match_info.route, "public")
    await _enforce(request, access)
    return await handler(request)
