"""The route table: every verb, path and who may call it, on one screen; web.guard enforces it."""

from __future__ import annotations

from typing import Final

from aiohttp import web
from aiohttp.web_urldispatcher import AbstractRoute

from idlakd.web.access import Access, Route
from idlakd.web.admin import views as admin
from idlakd.web.api import (auth, keys, marks, speech, usage, users, v1_job_marks, v1_jobs,
                            v1_lists, v1_speech, v1_stream, voices)
from idlakd.web.keys import access_key
from idlakd.web.ops import health, index, metrics, openapi

# verb      path                          handler                    access
ROUTES: Final[tuple[Route, ...]] = (
    Route("POST",   "/auth",                      auth.login,              "public"),
    Route("POST",   "/auth/expire",               auth.expire,             "user"),
    Route("POST",   "/auth/password",             auth.change_password,    "user"),
    Route("GET",    "/auth/usage",                usage.own_usage,         "user"),
    Route("POST",   "/auth/keys",                 keys.create_key,         "user"),
    Route("GET",    "/auth/keys",                 keys.list_own_keys,      "user"),
    Route("DELETE", "/auth/keys/{key_id}",        keys.revoke_own_key,     "user"),
    Route("GET",    "/users",                     users.list_users,        "admin"),
    Route("POST",   "/users",                     users.create_user,       "admin"),
    Route("POST",   "/users/{uid}/password",      users.reset_password,    "admin"),
    Route("DELETE", "/users/{uid}",               users.delete_user,       "admin"),
    Route("POST",   "/users/{uid}/admin",         users.toggle_admin,      "admin"),
    Route("GET",    "/users/{uid}/usage",         usage.user_usage,        "admin"),
    Route("GET",    "/users/{uid}/limits",        usage.get_limits,        "admin"),
    Route("PUT",    "/users/{uid}/limits",        usage.set_limits,        "admin"),
    Route("GET",    "/users/{uid}/keys",          keys.list_user_keys,     "admin"),
    Route("DELETE", "/users/{uid}/keys/{key_id}", keys.revoke_user_key,    "admin"),
    Route("GET",    "/languages",                 voices.languages,        "public"),
    Route("GET",    "/languages/{iso}/accents",   voices.accents,          "public"),
    Route("GET",    "/voices",                    voices.list_voices,      "public"),
    Route("POST",   "/voices",                    voices.query_voices,     "public"),
    Route("GET",    "/voices/{voice_id}",         voices.get_voice,        "public"),
    Route("POST",   "/speech",                    speech.speech,           "user"),
    Route("POST",   "/speech/marks",              marks.speech_marks,      "user"),
    Route("POST",   "/speech/captions",           marks.speech_captions,   "user"),
    Route("POST",   "/v1/audio/speech",           v1_speech.create_speech, "user"),
    Route("GET",    "/v1/speech/stream",          v1_stream.speech_stream, "socket"),
    Route("GET",    "/v1/audio/voices",           v1_lists.list_voices,    "user"),
    Route("GET",    "/v1/models",                 v1_lists.list_models,    "user"),
    Route("POST",   "/v1/jobs",                   v1_jobs.create_job,      "user"),
    Route("GET",    "/v1/jobs",                   v1_jobs.list_jobs,       "user"),
    Route("GET",    "/v1/jobs/{job_id}",          v1_jobs.get_job,         "user"),
    Route("DELETE", "/v1/jobs/{job_id}",          v1_jobs.delete_job,      "user"),
    Route("GET",    "/v1/jobs/{job_id}/audio",    v1_jobs.job_audio,       "user"),
    Route("GET",    "/v1/jobs/{job_id}/marks",    v1_job_marks.job_marks,  "user"),
    Route("GET",    "/v1/jobs/{job_id}/captions", v1_job_marks.job_captions, "user"),
    Route("GET",    "/",                          index.index,             "public"),
    Route("GET",    "/healthz",                   health.healthz,          "public"),
    Route("GET",    "/readyz",                    health.readyz,           "public"),
    Route("GET",    "/metrics",                   metrics.metrics_handler, "local"),
    Route("GET",    "/openapi.json",              openapi.openapi_json,    "public"),
    Route("GET",    "/docs",                      openapi.docs_page,       "public"),
)

# The admin page (HTML, a session cookie instead of a token). Sign-in checks the CSRF token
# of its own form (bound to a nonce cookie); sign-out ends whatever session the cookie names.
ADMIN_ROUTES: Final[tuple[Route, ...]] = (
    Route("GET",  "/admin",                          admin.status_page,          "page"),
    Route("GET",  "/admin/",                         admin.status_page,          "page"),
    Route("GET",  "/admin/login",                    admin.login_page,           "public"),
    Route("POST", "/admin/login",                    admin.login,                "public"),
    Route("POST", "/admin/logout",                   admin.logout,               "public"),
    Route("GET",  "/admin/users",                    admin.users_page,           "page"),
    Route("POST", "/admin/users",                    admin.create_user,          "form"),
    Route("POST", "/admin/users/password",           admin.reset_password,       "form"),
    Route("POST", "/admin/users/admin",              admin.toggle_admin,         "form"),
    Route("POST", "/admin/users/unlock",             admin.unlock_user,          "form"),
    Route("GET",  "/admin/users/delete",             admin.confirm_delete_user,  "page"),
    Route("POST", "/admin/users/delete",             admin.delete_user,          "form"),
    Route("POST", "/admin/users/limits",             admin.set_user_limits,      "form"),
    Route("GET",  "/admin/users/keys",               admin.user_keys_page,       "page"),
    Route("POST", "/admin/users/keys",               admin.create_user_key,      "form"),
    Route("POST", "/admin/users/keys/revoke",        admin.revoke_user_key,      "form"),
    Route("GET",  "/admin/jobs",                     admin.jobs_page,            "page"),
    Route("POST", "/admin/jobs/cancel",              admin.cancel_job,           "form"),
    Route("GET",  "/admin/voices",                   admin.voices_page,          "page"),
    Route("POST", "/admin/voices",                   admin.add_voice,            "form"),
    Route("GET",  "/admin/voices/{voice_id}",        admin.voice_page,           "page"),
    Route("GET",  "/admin/voices/{voice_id}/remove", admin.confirm_remove_voice, "page"),
    Route("POST", "/admin/voices/{voice_id}/remove", admin.remove_voice,         "form"),
    Route("POST", "/admin/speech",                   admin.speech,               "fetch"),
    # The text socket, where the session cookie (path /admin) reaches it.
    Route("GET",  "/admin/speech/stream",            v1_stream.speech_stream,    "socket"),
    Route("GET",  "/admin/static/{name}",            admin.static,               "public"),
)


def setup_routes(app: web.Application) -> None:
    """Register every route and remember its access for the guard."""
    access: dict[AbstractRoute, Access] = {}
    for route in ROUTES + ADMIN_ROUTES:
        access[app.router.add_route(route.method, route.path, route.handler)] = route.access
    app[access_key] = access
