"""The admin web page at /admin: route table, templates, HTML errors and security headers."""

from __future__ import annotations

import asyncio
import logging
from typing import Final

import aiohttp_jinja2
import jinja2
from aiohttp import web

from idlakd.web.admin import views
from idlakd.web.admin.session import SESSION_COOKIE, Flashes, clear_cookie
from idlakd.errors import APIError
from idlakd.web.http import HTTP_MESSAGES, Handler, http_exception_message
from idlakd.web.keys import admin_flashes_key, request_id_key, runtime_key

log = logging.getLogger(__name__)

PREFIX: Final = "/admin"
# The try-it endpoint answers fetch() from the page: its errors stay JSON {"message"}.
JSON_PATHS: Final = frozenset({"/admin/speech"})

# verb     path                                   handler                       access
ROUTES: Final[tuple[tuple[str, str, Handler, str], ...]] = (
    ("GET",  "/admin",                             views.status_page,            "admin"),
    ("GET",  "/admin/",                            views.status_page,            "admin"),
    ("GET",  "/admin/login",                       views.login_page,             "public"),
    ("POST", "/admin/login",                       views.login,                  "public+csrf"),
    ("POST", "/admin/logout",                      views.logout,                 "admin+csrf"),
    ("GET",  "/admin/users",                       views.users_page,             "admin"),
    ("POST", "/admin/users",                       views.create_user,            "admin+csrf"),
    ("POST", "/admin/users/password",              views.reset_password,         "admin+csrf"),
    ("POST", "/admin/users/admin",                 views.toggle_admin,           "admin+csrf"),
    ("GET",  "/admin/users/delete",                views.confirm_delete_user,    "admin"),
    ("POST", "/admin/users/delete",                views.delete_user,            "admin+csrf"),
    ("GET",  "/admin/voices",                      views.voices_page,            "admin"),
    ("POST", "/admin/voices",                      views.add_voice,              "admin+csrf"),
    ("GET",  "/admin/voices/{voice_id}",           views.voice_page,             "admin"),
    ("GET",  "/admin/voices/{voice_id}/remove",    views.confirm_remove_voice,   "admin"),
    ("POST", "/admin/voices/{voice_id}/remove",    views.remove_voice,           "admin+csrf"),
    ("POST", "/admin/speech",                      views.speech,                 "admin+csrf"),
    ("GET",  "/admin/static/{name}",               views.static,                 "public"),
)

# Nothing outside the server is loaded; no inline script can run even if escaping failed.
SECURITY_HEADERS: Final = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "connect-src 'self'; media-src 'self' blob:; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}


def is_admin_path(path: str) -> bool:
    """True for /admin and everything under it."""
    return path == PREFIX or path.startswith(PREFIX + "/")


def error_page(request: web.Request, status: int, message: str) -> web.Response:
    """An HTML page carrying an error message (never a traceback)."""
    return aiohttp_jinja2.render_template(
        "error.html", request, {"status": status, "message": message, "session": None,
                                "flashes": [], "csrf": None,
                                "version": request.app[runtime_key].version}, status=status)


def sign_in_redirect(request: web.Request, reason: str | None) -> web.Response:
    """To the sign-in page, dropping a cookie that no longer works."""
    location = f"{PREFIX}/login" + (f"?m={reason}" if reason else "")
    response = web.Response(status=303, headers={"Location": location})
    if reason:
        clear_cookie(request, response, SESSION_COOKIE)
    return response


@web.middleware
async def admin_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """For /admin pages: errors become HTML pages with the message; no session -> sign-in."""
    if not is_admin_path(request.path) or request.path in JSON_PATHS:
        return await handler(request)
    try:
        return await handler(request)
    except views.SignInRequired as exc:
        return sign_in_redirect(request, exc.reason)
    except APIError as exc:
        response = error_page(request, exc.status, exc.message)
        response.headers.update(exc.headers)
        return response
    except web.HTTPException as exc:
        if exc.status < 400 or "text/html" not in request.headers.get("Accept", ""):
            raise  # 404/405/413 for an API client stay the contract's JSON
        response = error_page(request, exc.status, http_exception_message(exc, request))
        for name in ("Allow", "Retry-After"):
            if name in exc.headers:
                response.headers[name] = exc.headers[name]
        return response
    except (asyncio.CancelledError, ConnectionError):
        raise
    except Exception:
        # The HTML twin of error_middleware's one broad except: a browser gets a page, not
        # JSON; the traceback goes to the log with the request id and never to the page.
        log.exception("Unhandled error in %s %s [request %s]",
                      request.method, request.path, request.get(request_id_key, "-"))
        return error_page(request, 500, HTTP_MESSAGES[500])


async def add_security_headers(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: strict headers on every /admin response; pages are never cached."""
    if not is_admin_path(request.path):
        return
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    # Pages may show a one-time password: no cache may keep them.
    response.headers.setdefault("Cache-Control", "no-store")


async def load_templates(app: web.Application) -> None:
    """on_startup: compile every template once, in a thread (no file reads on the loop later)."""
    env = aiohttp_jinja2.get_env(app)
    await asyncio.to_thread(lambda: [env.get_template(name) for name in env.list_templates(
        filter_func=lambda name: name.endswith(".html"))])


def setup_admin(app: web.Application) -> None:
    """Register the admin page: templates (autoescaped), routes, middleware, headers."""
    # auto_reload off: templates are read once at startup, never stat()ed per request.
    aiohttp_jinja2.setup(
        app, loader=jinja2.FileSystemLoader(str(views.templates_dir())), autoescape=True,
        undefined=jinja2.StrictUndefined, default_helpers=False, auto_reload=False)
    app.on_startup.append(load_templates)
    app[admin_flashes_key] = Flashes()
    # Innermost: runs after error_middleware and auth_middleware have seen the request.
    app.middlewares.append(admin_middleware)
    app.on_response_prepare.append(add_security_headers)
    app.add_routes([web.route(method, path, handler) for method, path, handler, _ in ROUTES])
