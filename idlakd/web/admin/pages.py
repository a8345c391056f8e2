"""The admin page's frame: templates, security headers, the error page and the sign-in redirect."""

from __future__ import annotations

import asyncio
import importlib.util
from pathlib import Path
from typing import Final

import aiohttp_jinja2
import jinja2
from aiohttp import web

from idlakd.web.admin.flashes import Flashes
from idlakd.web.admin.session import SESSION_COOKIE, clear_cookie
from idlakd.web.keys import admin_flashes_key, runtime_key

PREFIX: Final = "/admin"

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


def templates_dir() -> Path:
    """The admin templates: the idlakd.templates package when installed, else ./templates."""
    spec = importlib.util.find_spec("idlakd.templates")
    if spec is not None and spec.submodule_search_locations:
        return Path(list(spec.submodule_search_locations)[0])
    # Running from a source checkout: setup.py maps top-level templates/ onto the package.
    return Path(__file__).resolve().parents[3] / "templates"


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
    """Give the app the admin page's templates (autoescaped), messages and headers."""
    # auto_reload off: templates are read once at startup, never stat()ed per request.
    aiohttp_jinja2.setup(
        app, loader=jinja2.FileSystemLoader(str(templates_dir())), autoescape=True,
        undefined=jinja2.StrictUndefined, default_helpers=False, auto_reload=False)
    app.on_startup.append(load_templates)
    app[admin_flashes_key] = Flashes()
    app.on_response_prepare.append(add_security_headers)
