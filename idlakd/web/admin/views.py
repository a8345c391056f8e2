"""The admin page's handlers: sign-in, status, users, voices and the try-it speech twin."""

from __future__ import annotations

import asyncio
import importlib.util
import inspect
import json
import math
import re
from pathlib import Path
from typing import Any, Final, Mapping

import aiohttp_jinja2
import jinja2
from aiohttp import web

from idlakd.web.admin.session import (
    CSRF_FIELD, CSRF_HEADER, LOGIN_COOKIE, LOGIN_FORM_SECONDS, SESSION_COOKIE, AdminSession,
    Flash, clear_cookie, csrf_ok, csrf_token, current_session, issue_session, login_nonce,
    set_cookie)
from idlakd.web.api import speech as speech_api
from idlakd.web.api.users import (add_user, check_new_user, remove_user, reset_user_password,
                              toggle_user_admin)
from idlakd.web.auth import ADMIN_REQUIRED, token_lifetime_seconds, verify_login
from idlakd.errors import (Forbidden, NotFound, ServiceUnavailable, TooManyRequests,
                           Unauthorized, Unprocessable)
from idlakd.web.keys import (admin_flashes_key, config_key, runtime_key, secret_key,
                         store_key, synth_key, token_key, user_id_key)
from idlakd.models import ENGINES, GENDERS, Voice
from idlakd.synth.transcode import FORMATS
from idlakd.web.validation import Fields
from idlakd.voices.definitions import VoiceDefinitionError, voice_from_entry

FORM_EXPIRED: Final = ("This form has expired or did not come from this page (CSRF check "
                       "failed). Reload the page and try again.")
NOT_ADMIN: Final = (f"{ADMIN_REQUIRED}: this page is for admins only. Other users use the "
                    "API with their own token.")
SESSION_ENDED: Final = "Your session has ended: sign in again."
LOGIN_MESSAGES: Final[Mapping[str, tuple[str, str]]] = {
    "signed-out": ("ok", "You have signed out."),
    "expired": ("error", SESSION_ENDED),
    "not-admin": ("error", NOT_ADMIN),
}
STATIC_FILES: Final = frozenset({"admin.css", "admin.js"})
VOICE_FIELDS: Final = ("id", "name", "gender", "engine", "dir", "lang", "acc", "options")
_NONCE_RE: Final = re.compile(r"^[A-Za-z0-9_-]{16,64}$")


class SignInRequired(Exception):
    """No usable admin session: the middleware redirects to the sign-in page."""

    def __init__(self, reason: str | None) -> None:
        super().__init__(reason or "")
        self.reason = reason


def templates_dir() -> Path:
    """The admin templates: the idlakd.templates package when installed, else ./templates."""
    spec = importlib.util.find_spec("idlakd.templates")
    if spec is not None and spec.submodule_search_locations:
        return Path(list(spec.submodule_search_locations)[0])
    # Running from a source checkout: setup.py maps top-level templates/ onto the package.
    return Path(__file__).resolve().parent.parent.parent / "templates"


def _text(form: Mapping[str, Any], name: str) -> str:
    """A text field of a posted form ('' when absent or a file)."""
    value = form.get(name)
    return value if isinstance(value, str) else ""


def _see_other(location: str) -> web.Response:
    """A 303 redirect after a POST (post/redirect/get)."""
    return web.Response(status=303, headers={"Location": location})


async def admin_session(request: web.Request) -> AdminSession:
    """The signed-in admin's session, or raise SignInRequired."""
    session, is_admin = await current_session(request)
    if session is None:
        raise SignInRequired("expired" if request.cookies.get(SESSION_COOKIE) else None)
    if not is_admin:
        # Admin rights were taken away since sign-in: end this session for good.
        await request.app[store_key].revoke_token(session.jti, session.exp)
        raise SignInRequired("not-admin")
    request[user_id_key] = session.uid
    return session


async def admin_form(request: web.Request) -> tuple[AdminSession, Mapping[str, Any]]:
    """The session and posted form of an admin action, after the CSRF check."""
    session = await admin_session(request)
    form = await request.post()
    if not csrf_ok(request.app[secret_key], session.jti, _text(form, CSRF_FIELD)):
        raise Forbidden(FORM_EXPIRED)
    return session, form


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
        await verify_login(request.app, uid, password, request.remote or "unknown")
    except (TooManyRequests, ServiceUnavailable, Unauthorized) as exc:
        return login_form(request, ("error", exc.message), uid=uid, status=exc.status,
                          headers={k: v for k, v in exc.headers.items() if k == "Retry-After"})
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
            raise Forbidden(FORM_EXPIRED)
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


def _value(value: Any) -> str:
    """One statistic as short text."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.3g}" if math.isfinite(value) else str(value)
    if isinstance(value, (list, tuple)):
        return ", ".join(_value(v) for v in value) or "none"
    if isinstance(value, Mapping):
        return ", ".join(f"{k}: {_value(v)}" for k, v in value.items()) or "none"
    text = "—" if value is None else str(value)
    return text if len(text) <= 200 else text[:199] + "…"


def _label(key: Any) -> str:
    """A statistic's key as a label."""
    text = str(key).replace("_", " ")
    return text[:1].upper() + text[1:]


def describe_stats(stats: Any) -> dict[str, Any]:
    """Whatever the synthesis service reports, as plain rows, groups and tables for the page."""
    view: dict[str, Any] = {"rows": [], "groups": [], "tables": []}
    if not isinstance(stats, Mapping):
        if stats is not None:
            view["rows"].append(("Report", _value(stats)))
        return view
    for key, value in stats.items():
        if isinstance(value, Mapping) and value and all(isinstance(v, Mapping)
                                                         for v in value.values()):
            columns: list[str] = []
            for inner in value.values():
                columns.extend(str(c) for c in inner if str(c) not in columns)
            cells = {str(name): {str(k): v for k, v in inner.items()}
                     for name, inner in value.items()}
            rows = [(name, [_value(row[c]) if c in row else "—" for c in columns])
                    for name, row in cells.items()]
            view["tables"].append((_label(key), [_label(c) for c in columns], rows))
        elif isinstance(value, Mapping) and value:
            view["groups"].append((_label(key), [(_label(k), _value(v)) for k, v in value.items()]))
        else:
            view["rows"].append((_label(key), _value(value)))
    return view


async def synthesis_stats(app: web.Application) -> Any:
    """The synthesis service's stats() (sync or async), or None when it offers none."""
    stats = getattr(app[synth_key], "stats", None)
    if not callable(stats):
        return None
    result = stats()
    return await result if inspect.isawaitable(result) else result


async def status_page(request: web.Request) -> web.Response:
    """GET /admin: uptime, version, users and voices, and the synthesis service's figures."""
    session = await admin_session(request)
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
        "stats": describe_stats(await synthesis_stats(request.app)),
    })


# Users

async def users_page(request: web.Request) -> web.Response:
    """GET /admin/users: every user, the create form and per-user actions."""
    session = await admin_session(request)
    users = await request.app[store_key].list_users()
    return render(request, "users.html", session, {"active": "users", "users": users})


async def create_user(request: web.Request) -> web.Response:
    """POST /admin/users: create a user with the API's rules; its password is shown once."""
    session, form = await admin_form(request)
    try:
        wanted, admin = check_new_user({"uid": _text(form, "uid") or None,
                                        "admin": _text(form, "admin") == "on"})
        uid, password = await add_user(request.app, wanted, admin)
    except Unprocessable as exc:
        flash(request, session, "error", exc.message)
    else:
        kind = "admin" if admin else "user"
        flash(request, session, "ok", f"Created {kind} '{uid}'.", secret=password,
              secret_label=f"Password of '{uid}'")
    return _see_other("/admin/users")


async def reset_password(request: web.Request) -> web.Response:
    """POST /admin/users/password: a new generated password, shown once."""
    session, form = await admin_form(request)
    uid = _text(form, "uid")
    try:
        password = await reset_user_password(request.app, uid)
    except Unprocessable as exc:
        flash(request, session, "error", exc.message)
    else:
        flash(request, session, "ok", f"New password for '{uid}'; the old one no longer works.",
              secret=password, secret_label=f"Password of '{uid}'")
    return _see_other("/admin/users")


async def toggle_admin(request: web.Request) -> web.Response:
    """POST /admin/users/admin: toggle the admin flag (the last admin stays admin)."""
    session, form = await admin_form(request)
    uid = _text(form, "uid")
    try:
        admin = await toggle_user_admin(request.app, uid)
    except Unprocessable as exc:
        flash(request, session, "error", exc.message)
    else:
        flash(request, session, "ok",
              f"'{uid}' is now an admin." if admin else f"'{uid}' is no longer an admin.")
    return _see_other("/admin/users")


async def confirm_delete_user(request: web.Request) -> web.Response:
    """GET /admin/users/delete?uid=: ask before deleting."""
    session = await admin_session(request)
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
    session, form = await admin_form(request)
    uid = _text(form, "uid")
    try:
        await remove_user(request.app, uid)
    except Unprocessable as exc:
        flash(request, session, "error", exc.message)
    else:
        flash(request, session, "ok", f"User '{uid}' has been deleted")
    return _see_other("/admin/users")


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
    session = await admin_session(request)
    voices = await request.app[store_key].list_voices()
    problems = await asyncio.to_thread(_voice_problems, voices, request.app[config_key].idlak_root)
    return render(request, "voices.html", session, {
        "active": "voices", "voices": voices, "problems": problems, "formats": FORMATS,
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
    session, posted = await admin_form(request)
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
    session = await admin_session(request)
    voice = await _voice_or_404(request)
    problems = await asyncio.to_thread(_voice_problems, [voice],
                                       request.app[config_key].idlak_root)
    return render(request, "voice.html", session, {
        "active": "voices", "voice": voice, "problem": problems[voice.id],
        "options": json.dumps(voice.options, sort_keys=True), "voices": [voice],
        "formats": FORMATS})


async def confirm_remove_voice(request: web.Request) -> web.Response:
    """GET /admin/voices/{voice_id}/remove: ask before removing."""
    session = await admin_session(request)
    voice = await _voice_or_404(request)
    return render(request, "confirm.html", session, {
        "active": "voices", "title": f"Remove voice '{voice.id}'?",
        "question": f"Remove voice '{voice.id}' ({voice.name})? Its files stay on disk; "
                    "clients can no longer use it.",
        "action": f"/admin/voices/{voice.id}/remove", "field": "voice_id", "value": voice.id,
        "confirm_label": f"Remove voice '{voice.id}'", "cancel": "/admin/voices"})


async def remove_voice(request: web.Request) -> web.Response:
    """POST /admin/voices/{voice_id}/remove: remove a voice (like `idlakd voice remove`)."""
    session, _ = await admin_form(request)
    voice_id = request.match_info["voice_id"]
    if await request.app[store_key].delete_voice(voice_id):
        request.app[synth_key].retire(voice_id)  # its warm workers go now, not when idle
        flash(request, session, "ok", f"Voice '{voice_id}' removed")
    else:
        flash(request, session, "error", speech_api.VOICE_NOT_FOUND)
    return _see_other("/admin/voices")


# Try it

async def speech(request: web.Request) -> web.StreamResponse:
    """POST /admin/speech: /speech for the signed-in admin (session cookie + CSRF header)."""
    session, is_admin = await current_session(request)
    if session is None or not is_admin:
        raise Unauthorized(SESSION_ENDED)
    if not csrf_ok(request.app[secret_key], session.jti, request.headers.get(CSRF_HEADER)):
        raise Forbidden(FORM_EXPIRED)
    # The session stands in for a token: /speech then checks revocation and the user as usual.
    request[token_key] = session.claims()
    return await speech_api.speech(request)


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
