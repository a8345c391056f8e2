"""The route table: every verb, path and who may call it, on one screen."""

from __future__ import annotations

from aiohttp import web

from idlakd.web.ops import health, metrics, openapi
from idlakd.web.api import auth, speech, users, voices
from idlakd.web.http import Handler

# path                                 handler                  access
ROUTES: tuple[tuple[str, str, Handler, str], ...] = (
    ("POST",   "/auth",                      auth.login,            "public"),
    ("POST",   "/auth/expire",               auth.expire,           "user"),
    ("POST",   "/auth/password",             auth.change_password,  "user"),
    ("GET",    "/users",                     users.list_users,      "admin"),
    ("POST",   "/users",                     users.create_user,     "admin"),
    ("POST",   "/users/{uid}/password",      users.reset_password,  "admin"),
    ("DELETE", "/users/{uid}",               users.delete_user,     "admin"),
    ("POST",   "/users/{uid}/admin",         users.toggle_admin,    "admin"),
    ("GET",    "/languages",                 voices.languages,      "public"),
    ("GET",    "/languages/{iso}/accents",   voices.accents,        "public"),
    ("GET",    "/voices",                    voices.list_voices,    "public"),
    ("POST",   "/voices",                    voices.query_voices,   "public"),
    ("GET",    "/voices/{voice_id}",         voices.get_voice,      "public"),
    ("POST",   "/speech",                    speech.speech,         "user"),
    ("GET",    "/healthz",                   health.healthz,        "public"),
    ("GET",    "/readyz",                    health.readyz,         "public"),
    ("GET",    "/metrics",                   metrics.metrics_handler, "local"),
    ("GET",    "/openapi.json",              openapi.openapi_json,  "public"),
    ("GET",    "/docs",                      openapi.docs_page,     "public"),
)


def setup_routes(app: web.Application) -> None:
    """Register the API routes (the access column is enforced inside each handler)."""
    app.add_routes([web.route(method, path, handler) for method, path, handler, _ in ROUTES])
