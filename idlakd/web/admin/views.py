"""The admin page's handlers: sign-in, status, users, jobs, voices and the try-it speech twin."""

from __future__ import annotations

import asyncio
import json
import math
import re
import time
from pathlib import Path
from typing import Any, Final, Mapping
from urllib.parse import urlencode

import aiohttp_jinja2
import jinja2
from aiohttp import web

from idlakd.accounts import keys as api_keys
from idlakd.accounts import users as accounts
from idlakd.accounts.logins import verify_login
from idlakd.accounts.quotas import LIMIT_FIELDS
from idlakd.accounts.tokens import ADMIN_REQUIRED
from idlakd.errors import (Busy, InvalidRequest, NotAuthenticated, NotFound, NotPermitted,
                           RateLimited)
from idlakd.models import ENGINES, GENDERS, JOB_ACTIVE, Voice
from idlakd.synth.stats import SynthStats
from idlakd.synth.formats import PLAYABLE_FORMATS
from idlakd.voices.definitions import VoiceDefinitionError, voice_from_entry
from idlakd.web.admin.flashes import Flash
from idlakd.web.admin.session import (CSRF_FIELD, LOGIN_COOKIE, LOGIN_FORM_SECONDS,
                                      SESSION_COOKIE, clear_cookie, current_session, set_cookie)
from idlakd.web.admin.signing import (AdminSession, csrf_ok, csrf_token, issue_session,
                                      login_nonce, read_session_cookie)
from idlakd.web.api import speech as speech_api
from idlakd.web.audio import answer_speech, read_speech_request
from idlakd.web.auth import token_lifetime_seconds
from idlakd.web.errors import headers_of, status_of
from idlakd.web.guard import FORM_EXPIRED, SESSION_ENDED, form_text as _text
from idlakd.web.keys import (admin_flashes_key, admin_session_key, client_address_key, config_key,
                             jobs_key, passwords_key, quotas_key, runtime_key, secret_key,
                             store_key, synth_key, throttle_key, user_id_key)
from idlakd.web.validation import Fields

NOT_ADMIN: Final = (f"{ADMIN_REQUIRED}: this page is for admins only. Other users use the "
                    "API with their own token.")
LOGIN_MESSAGES: Final[Mapping[str, tuple[str, str]]] = {
    "signed-out": ("ok", "You have signed out."),
    "expired": ("error", SESSION_ENDED),
    "not-admin": ("error", NOT_ADMIN),
}
STATIC_FILES: Final = frozenset({"admin.css", "admin.js"})
VOICE_FIELDS: Final = ("id", "name", "gender", "engine", "dir", "lang", "acc", "options")
_NONCE_RE: Final = re.compile(r"^[A-Za-z0-9_-]{16,64}$")
#: Jobs the jobs page lists (the newest).
MAX_LISTED_JOBS: Final = 200
#: A job id is 22 characters; a longer one is never looked up.
MAX_JOB_ID_LENGTH: Final = 64
JOB_NOT_ACTIVE: Final = "That job is not queued or running (it has ended, or does not exist)"


def _see_other(location: str) -> web.Response:
    """A 303 redirect after a POST (post/redirect/get)."""
    return web.Response(status=303, headers={"Location": location})


def _session(request: web.Request) -> AdminSession:
    """The signed-in admin's session (the guard let only such requests in)."""
    return request[admin_session_key]


def render(request: web.Request, template: str, session: AdminSession | None,
           context: Mapping[str, Any] | None = None, status: int = 200) -> web.Response:
    """Render a page with the common context: who is signed in, CSRF token, waiting messages."""
    flashes = request.app[admin_flashes_key].pop(session.jti) if session else []
    page: dict[str, Any] = {
        "session": session,
        "csrf": session.csrf if session else None,
        "csrf_field": CSRF_FIELD,
        "flashes": flashes,
        "version": request.app[runtime_key].version,
    }
    page.update(context or {})
    return aiohttp_jinja2.render_template(template, request, page, status=status)


def flash(request: web.Request, session: AdminSession, kind: str, text: str,
          secret: str | None = None, secret_label: str = "") -> None:
    """Queue a message for the session's next page."""
    request.app[admin_flashes_key].push(session.jti, Flash(kind, text, secret, secret_label))


# Sign-in and sign-out

def login_form(request: web.Request, message: tuple[str, str] | None = None, uid: str = "",
               status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    """The sign-in page, with a CSRF token bound to a nonce cookie."""
    nonce = request.cookies.get(LOGIN_COOKIE, "")
    if not _NONCE_RE.match(nonce):
        nonce = login_nonce()  # absent, or not one of ours: never echo odd text into a header
    response = render(request, "login.html", None, {
        "login_csrf": csrf_token(request.app[secret_key], f"login:{nonce}"),
        "message": message, "uid": uid}, status=status)
    response.headers.update(headers or {})
    set_cookie(request, response, LOGIN_COOKIE, nonce, LOGIN_FORM_SECONDS)
    return response


async def login_page(request: web.Request) -> web.Response:
    """GET /admin/login: the sign-in form (or straight to the status page when signed in)."""
    session, is_admin = await current_session(request)
    if session is not None and is_admin:
        return _see_other("/admin")
    return login_form(request, LOGIN_MESSAGES.get(request.query.get("m", "")))


async def login(request: web.Request) -> web.Response:
    """POST /admin/login: the /auth password check and throttle, then an admin-only session."""
    form = await request.post()
    nonce = request.cookies.get(LOGIN_COOKIE, "")
    if not nonce or not csrf_ok(request.app[secret_key], f"login:{nonce}",
                                _text(form, CSRF_FIELD)):
        return login_form(request, ("error", FORM_EXPIRED), status=403)
    fields = Fields({"uid": _text(form, "uid") or None,
                     "password": _text(form, "password") or None})
    uid = fields.string("uid", required=True)
    password = fields.string("password", required=True)
    if fields.errors:
        return login_form(request, ("error", ", ".join(fields.errors)), uid=uid or "",
                          status=422)
    assert uid is not None and password is not None
    try:
        await verify_login(request.app[throttle_key], request.app[store_key],
                           request.app[passwords_key], uid, password,
                           request[client_address_key])
    except (RateLimited, Busy, NotAuthenticated) as exc:
        return login_form(request, ("error", exc.message), uid=uid, status=status_of(exc),
                          headers={k: v for k, v in headers_of(exc).items() if k == "Retry-After"})
    request[user_id_key] = uid
    user = await request.app[store_key].get_user(uid)
    if user is None or not user.admin:
        return login_form(request, ("error", NOT_ADMIN), uid=uid, status=403)
    lifetime = token_lifetime_seconds(request)
    value, _, _ = issue_session(request.app[secret_key], uid, lifetime)
    response = _see_other("/admin")
    set_cookie(request, response, SESSION_COOKIE, value, lifetime)
    clear_cookie(request, response, LOGIN_COOKIE)
    return response


async def logout(request: web.Request) -> web.Response:
    """POST /admin/logout: revoke the session (like /auth/expire) and drop the cookie."""
    session, _ = await current_session(request)
    if session is not None:
        form = await request.post()
        if not csrf_ok(request.app[secret_key], session.jti, _text(form, CSRF_FIELD)):
            raise NotPermitted(FORM_EXPIRED)
        await request.app[store_key].revoke_token(session.jti, session.exp)
        request.app[admin_flashes_key].forget(session.jti)
    response = _see_other("/admin/login?m=signed-out")
    clear_cookie(request, response, SESSION_COOKIE)
    return response


# Status

def _duration(seconds: float) -> str:
    """'2 d 3 h 4 min 5 s' from seconds."""
    total = int(seconds)
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if total >= size:
            parts.append(f"{total // size} {unit}")
            total %= size
    parts.append(f"{total} s")
    return " ".join(parts)


def _value(value: float | int | bool | str) -> str:
    """One statistic as short text."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.3g}" if math.isfinite(value) else str(value)
    return str(value)


# (label, field of PoolStats) for the per-voice table, in column order.
_VOICE_COLUMNS: Final = (("Version", "version"), ("Workers", "workers"), ("Busy", "busy"),
                         ("Idle", "idle"), ("Syntheses", "syntheses"), ("Errors", "errors"),
                         ("Synthesis seconds", "synthesis_seconds"),
                         ("Audio seconds", "audio_seconds"), ("Retired", "retired"))


def describe_stats(stats: SynthStats) -> dict[str, Any]:
    """The synthesizer's figures as the page's rows, groups and tables."""
    factor = stats.real_time_factor
    rows = [("Requests", stats.requests), ("Failures", stats.failures),
            ("Disconnects", stats.disconnects), ("Streams open", stats.streams),
            ("Chunks running", stats.running), ("Queue", stats.queue),
            ("Syntheses", stats.syntheses), ("Synthesis seconds", stats.synthesis_seconds),
            ("Audio seconds", stats.audio_seconds),
            ("Real-time factor", "—" if factor is None else factor),
            ("Retired workers", stats.retired_workers), ("Transcoders", stats.transcoders)]
    limits = [("Max concurrent", stats.max_concurrent), ("Max queue", stats.max_queue),
              ("Max streams", stats.max_streams)]
    cache = stats.cache
    groups = [("Limits", [(label, _value(value)) for label, value in limits])]
    if cache.enabled:
        groups.append(("Cache", [(label, _value(value)) for label, value in (
            ("Files", cache.files), ("Bytes", cache.bytes), ("Max bytes", cache.max_bytes),
            ("Hits", cache.hits), ("Misses", cache.misses))]))
    tables = []
    if stats.voices:
        tables.append(("Voices", [label for label, _field in _VOICE_COLUMNS],
                       [(voice_id, [_value(getattr(pool, field)) for _label, field in _VOICE_COLUMNS])
                        for voice_id, pool in stats.voices.items()]))
    return {"rows": [(label, _value(value)) for label, value in rows], "groups": groups,
            "tables": tables}


async def status_page(request: web.Request) -> web.Response:
    """GET /admin: uptime, version, users and voices, and the synthesis service's figures."""
    session = _session(request)
    runtime = request.app[runtime_key]
    store = request.app[store_key]
    users = await store.list_users()
    voices = await store.list_voices()
    return render(request, "status.html", session, {
        "active": "status",
        "uptime": _duration(runtime.uptime_seconds),
        "started_at": runtime.started_at,
        "stopping": runtime.stopping,
        "user_count": len(users),
        "admin_count": sum(1 for u in users if u.admin),
        "voice_count": len(voices),
        "stats": describe_stats(request.app[synth_key].stats()),
    })


# Users

async def users_page(request: web.Request) -> web.Response:
    """GET /admin/users: every user, the create form and per-user actions."""
    session = _session(request)
    users = await request.app[store_key].list_users()
    quotas = request.app[quotas_key]
    reports = await quotas.reports([u.uid for u in users])
    return render(request, "users.html", session, {"active": "users", "users": users,
                                                   "reports": reports, "defaults": quotas.defaults})


async def create_user(request: web.Request) -> web.Response:
    """POST /admin/users: create a user with the API's rules; its password is shown once."""
    session, form = _session(request), await request.post()
    try:
        created = await accounts.create_user(request.app[store_key], request.app[passwords_key],
                                          _text(form, "uid") or None, _text(form, "admin") == "on")
    except accounts.UserError as exc:
        flash(request, session, "error", exc.message)
    else:
        kind = "admin" if created.admin else "user"
        flash(request, session, "ok", f"Created {kind} '{created.uid}'.", secret=created.password,
              secret_label=f"Password of '{created.uid}'")
    return _see_other("/admin/users")


async def reset_password(request: web.Request) -> web.Response:
    """POST /admin/users/password: a new generated password, shown once."""
    session, form = _session(request), await request.post()
    uid = _text(form, "uid")
    response = _see_other("/admin/users")
    try:
        password = await accounts.reset_password(request.app[store_key],
                                              request.app[passwords_key], uid)
    except accounts.UserError as exc:
        flash(request, session, "error", exc.message)
    else:
        if uid == session.uid:
            session = _renew_session(request, response, session)
        flash(request, session, "ok", f"New password for '{uid}'; the old one no longer works "
              "and every token and session issued before it has ended.",
              secret=password, secret_label=f"Password of '{uid}'")
    return response


def _renew_session(request: web.Request, response: web.StreamResponse,
                   session: AdminSession) -> AdminSession:
    """A new session for an admin who reset their own password: the reset ended the old one
    (issued before it), and the page must still show them the new password."""
    secret = request.app[secret_key]
    lifetime = token_lifetime_seconds(request)
    value, _, _ = issue_session(secret, session.uid, lifetime)
    renewed = read_session_cookie(secret, value)
    assert renewed is not None  # just signed with the same secret
    set_cookie(request, response, SESSION_COOKIE, value, lifetime)
    request.app[admin_flashes_key].forget(session.jti)
    return renewed


async def unlock_user(request: web.Request) -> web.Response:
    """POST /admin/users/unlock: forgive a user's failed logins (like `idlakd user unlock`)."""
    session, form = _session(request), await request.post()
    uid = _text(form, "uid")
    try:
        await accounts.unlock_user(request.app[store_key], uid)
    except accounts.UserError as exc:
        flash(request, session, "error", exc.message)
    else:
        flash(request, session, "ok", f"'{uid}' is unlocked: their failed logins are forgotten.")
    return _see_other("/admin/users")


async def toggle_admin(request: web.Request) -> web.Response:
    """POST /admin/users/admin: toggle the admin flag (the last admin stays admin)."""
    session, form = _session(request), await request.post()
    uid = _text(form, "uid")
    try:
        admin = await accounts.toggle_admin(request.app[store_key], uid)
    except accounts.UserError as exc:
        flash(request, session, "error", exc.message)
    else:
        flash(request, session, "ok",
              f"'{uid}' is now an admin." if admin else f"'{uid}' is no longer an admin.")
    return _see_other("/admin/users")


async def confirm_delete_user(request: web.Request) -> web.Response:
    """GET /admin/users/delete?uid=: ask before deleting."""
    session = _session(request)
    uid = request.query.get("uid", "")
    user = await request.app[store_key].get_user(uid)
    if user is None:
        flash(request, session, "error", "User does not exist")
        return _see_other("/admin/users")
    return render(request, "confirm.html", session, {
        "active": "users", "title": f"Delete user '{uid}'?",
        "question": f"Delete user '{uid}'? Their password stops working at once. "
                    "This cannot be undone.",
        "action": "/admin/users/delete", "field": "uid", "value": uid,
        "confirm_label": f"Delete user '{uid}'", "cancel": "/admin/users"})


async def delete_user(request: web.Request) -> web.Response:
    """POST /admin/users/delete: delete a user (never the last admin)."""
    session, form = _session(request), await request.post()
    uid = _text(form, "uid")
    try:
        await accounts.delete_user(request.app[store_key], uid)
    except accounts.UserError as exc:
        flash(request, session, "error", exc.message)
    else:
        flash(request, session, "ok", f"User '{uid}' has been deleted")
    return _see_other("/admin/users")


# API keys

def _keys_url(uid: str) -> str:
    """The keys page of one user."""
    return "/admin/users/keys?" + urlencode({"uid": uid})


async def user_keys_page(request: web.Request) -> web.Response:
    """GET /admin/users/keys?uid=: a user's API keys, the form to make one, revoke buttons."""
    session = _session(request)
    uid = request.query.get("uid", "")
    try:
        found = await api_keys.list_keys(request.app[store_key], uid)
    except accounts.NoSuchUser as exc:
        flash(request, session, "error", exc.message)
        return _see_other("/admin/users")
    now = time.time()
    rows = [{"key": k, "created": api_keys.utc_text(k.created_at),
             "last_used": api_keys.utc_text(k.last_used_at) or "never",
             "expires": api_keys.utc_text(k.expires_at) or "never",
             "expired": k.expires_at is not None and k.expires_at <= now} for k in found]
    return render(request, "user_keys.html", session, {
        "active": "users", "uid": uid, "rows": rows, "max_days": api_keys.MAX_DAYS,
        "max_name": api_keys.MAX_NAME_LENGTH})


async def create_user_key(request: web.Request) -> web.Response:
    """POST /admin/users/keys: make an API key for a user with the API's rules; shown once."""
    session, form = _session(request), await request.post()
    uid, name = _text(form, "uid"), _text(form, "name")
    days_text = _text(form, "expires_in_days").strip()
    try:
        if days_text and not days_text.isdecimal():
            raise InvalidRequest(f"expires_in_days: {api_keys.DAYS_RULE}")
        created = await api_keys.create_key(
            request.app[store_key], uid, name, int(days_text) if days_text else None,
            request.app[config_key].max_api_keys_per_user, time.time())
    except InvalidRequest as exc:
        flash(request, session, "error", exc.message)
    else:
        record = created.record
        flash(request, session, "ok", f"Made API key '{record.name}' for '{uid}'.",
              secret=created.key, secret_label=f"API key '{record.name}' of '{uid}'")
    return _see_other(_keys_url(uid))


async def revoke_user_key(request: web.Request) -> web.Response:
    """POST /admin/users/keys/revoke: revoke a user's API key; it stops working at once."""
    session, form = _session(request), await request.post()
    uid = _text(form, "uid")
    try:
        revoked = await api_keys.revoke_key(request.app[store_key], _text(form, "id"), uid)
    except NotFound as exc:
        flash(request, session, "error", exc.message)
    else:
        flash(request, session, "ok", f"API key '{revoked.name}' ({revoked.prefix}…) of '{uid}' "
              "revoked; it no longer works.")
    return _see_other(_keys_url(uid))


def _limit_changes(form: Mapping[str, Any]) -> dict[str, object]:
    """The limits of the form: blank is the default (None), digits a number, anything else kept for the check."""
    changes: dict[str, object] = {}
    for name in LIMIT_FIELDS:
        text = _text(form, name).strip()
        changes[name] = None if not text else int(text) if text.isascii() and text.isdigit() else text
    return changes


async def set_user_limits(request: web.Request) -> web.Response:
    """POST /admin/users/limits: a user's quota overrides (blank fields: the configured default)."""
    session, form = _session(request), await request.post()
    uid = _text(form, "uid")
    try:
        await request.app[quotas_key].set_limits(uid, _limit_changes(form))
    except InvalidRequest as exc:  # no such user, or a field that is not a limit
        flash(request, session, "error", exc.message)
    else:
        flash(request, session, "ok", f"Limits of '{uid}' saved.")
    return _see_other("/admin/users")


# Jobs

async def jobs_page(request: web.Request) -> web.Response:
    """GET /admin/jobs: every user's jobs, newest first, with progress and a cancel button."""
    session = _session(request)
    jobs = await request.app[store_key].list_jobs(None, MAX_LISTED_JOBS)
    rows = [{"job": job, "active": job.status in JOB_ACTIVE,
             "percent": (100 * job.characters_done // job.characters_total
                         if job.characters_total else 100),
             "created": api_keys.utc_text(job.created_at),
             "started": api_keys.utc_text(job.started_at) or "—",
             "finished": api_keys.utc_text(job.finished_at) or "—"} for job in jobs]
    return render(request, "jobs.html", session, {"active": "jobs", "rows": rows,
                                                  "limit": MAX_LISTED_JOBS})


async def cancel_job(request: web.Request) -> web.Response:
    """POST /admin/jobs/cancel: cancel a queued or running job of any user."""
    session, form = _session(request), await request.post()
    job_id = _text(form, "job_id")
    cancelled = (await request.app[jobs_key].cancel_job(job_id)
                 if 0 < len(job_id) <= MAX_JOB_ID_LENGTH else None)
    if cancelled is None:
        flash(request, session, "error", JOB_NOT_ACTIVE)
    else:
        flash(request, session, "ok", f"Job {cancelled.id} of '{cancelled.uid}' cancelled.")
    return _see_other("/admin/jobs")


# Voices

def _voice_problems(voices: list[Voice], idlak_root: Path | None) -> dict[str, str | None]:
    """Why each voice cannot work here (None: its files are present); touches the disk."""
    # Imported here: the engines package belongs to the synthesis side and may load slowly.
    from idlakd.worker.engines import missing_files

    return {v.id: missing_files(v.engine, v.directory, dict(v.options), idlak_root)
            for v in voices}


async def voices_page(request: web.Request, form: Mapping[str, str] | None = None,
                      error: str | None = None) -> web.Response:
    """GET /admin/voices: voices with their files' state, the add form and the try-it box."""
    session = _session(request)
    voices = await request.app[store_key].list_voices()
    problems = await asyncio.to_thread(_voice_problems, voices, request.app[config_key].idlak_root)
    return render(request, "voices.html", session, {
        "active": "voices", "voices": voices, "problems": problems, "formats": PLAYABLE_FORMATS,
        "engines": ENGINES, "genders": GENDERS,
        "form": form or dict.fromkeys(VOICE_FIELDS, "") | {"engine": "tangle"},
        "error": error}, status=422 if error else 200)


def _voice_entry(form: Mapping[str, str]) -> dict[str, Any]:
    """A voiceconfig.json entry from the add form (the same fields as `idlakd voice add`)."""
    directory = form["dir"].strip()
    if directory and not Path(directory).expanduser().is_absolute():
        # Relative to the daemon's working directory would surprise anyone using a browser.
        raise VoiceDefinitionError("directory: give an absolute path on the server")
    if form["engine"] == "command":
        # A command voice runs any program as the daemon: a web session must not be able to
        # make one; it stays a shell (CLI) or voiceconfig.json decision.
        raise VoiceDefinitionError(
            "engine: 'command' voices can only be added from the shell (idlakd voice add)")
    entry: dict[str, Any] = {
        "vid": form["id"].strip(), "name": form["name"].strip() or None,
        "gender": form["gender"], "engine": form["engine"] or "tangle", "dir": directory,
        "lang": form["lang"].strip() or None, "acc": form["acc"].strip() or None}
    if form["options"].strip():
        try:
            entry["options"] = json.loads(form["options"])
        except ValueError:
            raise VoiceDefinitionError("options: not valid JSON") from None
    return entry


async def add_voice(request: web.Request) -> web.Response:
    """POST /admin/voices: add or update a voice, checked like `idlakd voice add`."""
    session, posted = _session(request), await request.post()
    form = {name: _text(posted, name) for name in VOICE_FIELDS}
    config = request.app[config_key]
    try:
        entry = _voice_entry(form)
        # Reads voice.conf and checks the files: off the loop.
        voice = await asyncio.to_thread(voice_from_entry, entry, config, None)
    except VoiceDefinitionError as exc:
        return await voices_page(request, form=form, error=str(exc))
    await request.app[store_key].upsert_voices([voice])
    flash(request, session, "ok", f"Voice '{voice.id}' ({voice.name}, {voice.language}-"
          f"{voice.accent}, {voice.gender}, {voice.engine}) saved")
    return _see_other("/admin/voices")


async def _voice_or_404(request: web.Request) -> Voice:
    """The voice named in the path, or a 404 page."""
    voice = await request.app[store_key].get_voice(request.match_info["voice_id"])
    if voice is None:
        raise NotFound(speech_api.VOICE_NOT_FOUND)
    return voice


async def voice_page(request: web.Request) -> web.Response:
    """GET /admin/voices/{voice_id}: one voice's details and a try-it box."""
    session = _session(request)
    voice = await _voice_or_404(request)
    problems = await asyncio.to_thread(_voice_problems, [voice],
                                       request.app[config_key].idlak_root)
    return render(request, "voice.html", session, {
        "active": "voices", "voice": voice, "problem": problems[voice.id],
        "options": json.dumps(voice.options, sort_keys=True), "voices": [voice],
        "formats": PLAYABLE_FORMATS})


async def confirm_remove_voice(request: web.Request) -> web.Response:
    """GET /admin/voices/{voice_id}/remove: ask before removing."""
    session = _session(request)
    voice = await _voice_or_404(request)
    return render(request, "confirm.html", session, {
        "active": "voices", "title": f"Remove voice '{voice.id}'?",
        "question": f"Remove voice '{voice.id}' ({voice.name})? Its files stay on disk; "
                    "clients can no longer use it.",
        "action": f"/admin/voices/{voice.id}/remove", "field": "voice_id", "value": voice.id,
        "confirm_label": f"Remove voice '{voice.id}'", "cancel": "/admin/voices"})


async def remove_voice(request: web.Request) -> web.Response:
    """POST /admin/voices/{voice_id}/remove: remove a voice (like `idlakd voice remove`)."""
    session = _session(request)
    voice_id = request.match_info["voice_id"]
    if await request.app[store_key].delete_voice(voice_id):
        request.app[synth_key].retire(voice_id)  # its warm workers go now, not when idle
        flash(request, session, "ok", f"Voice '{voice_id}' removed; voiceconfig.json will not "
              "bring it back; adding it again (here or with `idlakd voice add`) does")
    else:
        flash(request, session, "error", speech_api.VOICE_NOT_FOUND)
    return _see_other("/admin/voices")


# Try it

async def speech(request: web.Request) -> web.StreamResponse:
    """POST /admin/speech: the try-it box, answered like /speech (its route's guard checked
    the admin session and the CSRF header)."""
    return await answer_speech(request, await read_speech_request(request))


# Static files

async def static(request: web.Request) -> web.StreamResponse:
    """GET /admin/static/{name}: the page's one stylesheet and one script."""
    name = request.match_info["name"]
    if name not in STATIC_FILES:
        raise NotFound("No such file")
    loader = aiohttp_jinja2.get_env(request.app).loader
    assert isinstance(loader, jinja2.FileSystemLoader)
    # FileResponse reads the file in the executor, not on the loop.
    return web.FileResponse(Path(loader.searchpath[0]) / name,
                            headers={"Cache-Control": "no-cache"})
