"""What a route table row is: verb, path, handler and who may call it (enforced by web.guard)."""

from __future__ import annotations

from typing import Awaitable, Callable, Literal, NamedTuple

from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# public: anyone. user: a valid token of an existing user. admin: such a token of an admin.
# local: a loopback client when metrics_local_only. The admin page's own kinds (a session
# cookie, not a token): page: a signed-in admin, else the sign-in page; form: page and the
# posted form's CSRF field; fetch: a signed-in admin and the X-CSRF-Token header, refused
# with JSON errors (for fetch() from the page). socket: a WebSocket whose caller is a user
# by a token on the upgrade or the admin session cookie, else by its first message: the
# handler must get its caller from web.guard.socket_caller, which enforces that rule.
Access = Literal["public", "user", "admin", "local", "page", "form", "fetch", "socket"]


class Route(NamedTuple):
    """One row of a route table."""

    method: str
    path: str
    handler: Handler
    access: Access
