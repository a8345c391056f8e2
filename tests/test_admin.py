"""The admin page over the aiohttp test client: sign-in, session, CSRF, escaping, every action."""

from __future__ import annotations

import html
import re
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient

from idlakd.web.admin.session import LOGIN_COOKIE, SESSION_COOKIE
from idlakd.web.admin.signing import issue_session
from idlakd.accounts.users import ONLY_ADMIN
from idlakd.accounts.logins import LOGIN_INCORRECT
from idlakd.accounts.tokens import ADMIN_REQUIRED
from idlakd.web.keys import passwords_key, secret_key, store_key, synth_key
from tests.helpers.app import assert_error, bearer, login, make_config
from tests.helpers.admin import csrf_of, secret_of, sign_in, admin_client

async def test_sign_in_sets_a_strict_cookie(client: TestClient[Any, Any],
                                            admin_password: str) -> None:
    resp = await client.get("/admin", allow_redirects=False)
    assert resp.status == 303 and resp.headers["Location"] == "/admin/login"
    resp = await client.get("/admin/login")
    page = await resp.text()
    assert resp.status == 200 and 'autocomplete="current-password"' in page
    assert "default-src 'none'" in resp.headers["Content-Security-Policy"]
    assert resp.headers["Cache-Control"] == "no-store"
    resp = await sign_in(client, "admin", admin_password)
    assert resp.status == 303
    cookie = resp.cookies[SESSION_COOKIE]
    assert cookie["httponly"] and cookie["samesite"] == "Strict" and cookie["path"] == "/admin"
    assert cookie["max-age"] == str(30 * 60) and not cookie["secure"]
    page = await (await client.get("/admin")).text()
    assert "Uptime" in page and "Signed in as" in page
    # Neither the signing secret nor the cookie's value appears in a page.
    secret = client.app[secret_key].decode()
    for path in ("/admin", "/admin/users", "/admin/voices", "/admin/voices/alba"):
        body = await (await client.get(path)).text()
        assert secret not in body and cookie.value not in body


async def test_cookie_secure_when_configured(aiohttp_client: Any, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    from idlakd.web.app import create_app

    client = await aiohttp_client(create_app(make_config(tmp_path, cookie_secure="true")))
    password = re.search(r"<User admin:([^:]+):True>", capsys.readouterr().out)
    assert password
    resp = await client.get("/admin/login")
    nonce = resp.cookies[LOGIN_COOKIE]
    assert nonce["secure"]
    # The client's jar keeps Secure cookies from plain HTTP: send it by hand.
    resp = await client.post("/admin/login", allow_redirects=False,
                             headers={"Cookie": f"{LOGIN_COOKIE}={nonce.value}"},
                             data={"csrf_token": csrf_of(await resp.text()), "uid": "admin",
                                   "password": password.group(1)})
    assert resp.status == 303 and resp.cookies[SESSION_COOKIE]["secure"]


async def test_wrong_password_and_throttle(aiohttp_client: Any, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    from idlakd.web.app import create_app

    client = await aiohttp_client(create_app(make_config(tmp_path, login_max_failures="2")))
    for _ in range(2):
        resp = await sign_in(client, "admin", "wrong")
        assert resp.status == 401 and LOGIN_INCORRECT in await resp.text()
    resp = await sign_in(client, "admin", "wrong")
    assert resp.status == 429 and int(resp.headers["Retry-After"]) > 0
    assert "Too many failed login attempts" in await resp.text()
    # The same throttle guards /auth.
    await assert_error(await client.post("/auth", json={"uid": "admin", "password": "x"}), 429)
    resp = await sign_in(client, "", "")
    assert resp.status == 422 and "uid: Missing data for required field." in await resp.text()


async def test_non_admin_is_refused(client: TestClient[Any, Any], admin_token: str) -> None:
    body = await (await client.post("/users", json={"uid": "alice"},
                                    headers=bearer(admin_token))).json()
    resp = await sign_in(client, "alice", body["password"])
    page = await resp.text()
    assert resp.status == 403 and ADMIN_REQUIRED in page and "admins only" in page
    assert SESSION_COOKIE not in resp.cookies


async def test_losing_admin_rights_ends_the_session(client: TestClient[Any, Any],
                                                    admin_password: str,
                                                    admin_token: str) -> None:
    body = await (await client.post("/users", json={"uid": "boss", "admin": True},
                                    headers=bearer(admin_token))).json()
    assert (await sign_in(client, "boss", body["password"])).status == 303
    assert (await client.get("/admin/users")).status == 200
    await client.post("/users/boss/admin", headers=bearer(admin_token))
    resp = await client.get("/admin/users", allow_redirects=False)
    assert resp.status == 303 and resp.headers["Location"] == "/admin/login?m=not-admin"
    page = await (await client.get("/admin/login?m=not-admin")).text()
    assert ADMIN_REQUIRED in page


async def test_session_expiry_and_forged_cookies(client: TestClient[Any, Any],
                                                 admin_password: str,
                                                 admin_token: str) -> None:
    secret = client.app[secret_key]
    expired, _, _ = issue_session(secret, "admin", 60, now=0)
    client.session.cookie_jar.update_cookies({SESSION_COOKIE: expired})
    resp = await client.get("/admin/users", allow_redirects=False)
    assert resp.status == 303 and resp.headers["Location"] == "/admin/login?m=expired"
    assert "Your session has ended" in await (await client.get("/admin/login?m=expired")).text()
    # An API token is not a session (different key), nor is a session cookie signed elsewhere.
    for forged in (admin_token, issue_session(b"x" * 64, "admin", 600)[0], "garbage"):
        client.session.cookie_jar.update_cookies({SESSION_COOKIE: forged})
        resp = await client.get("/admin/users", allow_redirects=False)
        assert resp.status == 303 and resp.headers["Location"].startswith("/admin/login")
    # A session cookie is not an API token either.
    valid, _, _ = issue_session(secret, "admin", 600)
    await assert_error(await client.get("/users", headers=bearer(valid)), 401,
                       "Access token is invalid")


async def test_sign_out_revokes_the_session(client: TestClient[Any, Any],
                                            admin_password: str) -> None:
    csrf = await admin_client(client, admin_password)
    cookie = client.session.cookie_jar.filter_cookies(client.make_url("/admin"))[SESSION_COOKIE]
    resp = await client.post("/admin/logout", data={"csrf_token": csrf}, allow_redirects=False)
    assert resp.status == 303 and resp.headers["Location"] == "/admin/login?m=signed-out"
    # Replaying the old cookie after sign-out fails: the session id is revoked like a token.
    client.session.cookie_jar.update_cookies({SESSION_COOKIE: cookie.value})
    resp = await client.get("/admin", allow_redirects=False)
    assert resp.status == 303


async def test_csrf_is_checked_on_every_form(client: TestClient[Any, Any],
                                             admin_password: str) -> None:
    csrf = await admin_client(client, admin_password)
    for path, data in (("/admin/users", {"uid": "mallory"}),
                       ("/admin/users/password", {"uid": "admin"}),
                       ("/admin/users/admin", {"uid": "admin"}),
                       ("/admin/users/delete", {"uid": "admin"}),
                       ("/admin/voices", {"id": "x"}),
                       ("/admin/voices/alba/remove", {}),
                       ("/admin/logout", {})):
        for token in (None, "forged", csrf + "x"):
            form = dict(data, **({"csrf_token": token} if token else {}))
            resp = await client.post(path, data=form, allow_redirects=False)
            page = await resp.text()
            assert resp.status == 403, (path, token)
            assert "CSRF check failed" in page and "Traceback" not in page
    users = [u.uid for u in await client.app[store_key].list_users()]
    assert users == ["admin"]
    # The sign-in form is protected too (its token is bound to a cookie nonce).
    client.session.cookie_jar.clear()
    resp = await client.post("/admin/login", data={"uid": "admin", "password": admin_password},
                             allow_redirects=False)
    assert resp.status == 403 and SESSION_COOKIE not in resp.cookies
    await client.get("/admin/login")
    assert LOGIN_COOKIE in {c.key for c in client.session.cookie_jar}
    resp = await client.post("/admin/login", allow_redirects=False, data={
        "uid": "admin", "password": admin_password, "csrf_token": csrf})
    assert resp.status == 403


async def test_values_are_escaped(client: TestClient[Any, Any], admin_password: str,
                                  admin_token: str) -> None:
    evil = '<script>alert("x&y")'  # refused for new users: a user from before the uid rule
    app = client.app
    assert await app[store_key].add_user(evil, await app[passwords_key].hash("x-password"), False)
    await admin_client(client, admin_password)
    page = await (await client.get("/admin/users")).text()
    assert "<script>alert" not in page
    assert "&lt;script&gt;alert(&#34;x&amp;y&#34;)" in page
    # The delete link quotes the uid for its query string.
    assert "/admin/users/delete?uid=%3Cscript%3Ealert%28%22x%26y%22%29" in page
    page = await (await client.get("/admin/users/delete", params={"uid": evil})).text()
    assert "<script>alert" not in page and "&lt;script&gt;" in page


async def test_user_actions_follow_the_api_rules(client: TestClient[Any, Any],
                                                 admin_password: str) -> None:
    csrf = await admin_client(client, admin_password)
    resp = await client.post("/admin/users", data={"csrf_token": csrf, "uid": "bob"})
    page = await resp.text()
    assert resp.status == 200 and "Created user &#39;bob&#39;." in page
    password = secret_of(page)
    await login(client, "bob", password)
    # Shown once: the next page no longer carries it.
    assert password not in await (await client.get("/admin/users")).text()
    page = await (await client.post("/admin/users", data={"csrf_token": csrf,
                                                          "uid": "bob"})).text()
    assert "User id already exists" in page
    page = await (await client.post("/admin/users", data={"csrf_token": csrf,
                                                          "uid": "a b"})).text()
    assert "uid: Must be 1 to 64 characters" in page
    page = await (await client.post("/admin/users", data={"csrf_token": csrf,
                                                          "admin": "on"})).text()
    assert "Created admin" in page and secret_of(page)
    page = await (await client.post("/admin/users/password",
                                    data={"csrf_token": csrf, "uid": "bob"})).text()
    new_password = secret_of(page)
    assert new_password != password
    await assert_error(await client.post("/auth", json={"uid": "bob", "password": password}),
                       401)
    await login(client, "bob", new_password)
    page = await (await client.post("/admin/users/admin",
                                    data={"csrf_token": csrf, "uid": "bob"})).text()
    assert "&#39;bob&#39; is now an admin." in page
    page = await (await client.get("/admin/users/delete", params={"uid": "bob"})).text()
    assert "Delete user &#39;bob&#39;?" in page
    page = await (await client.post("/admin/users/delete",
                                    data={"csrf_token": csrf, "uid": "bob"})).text()
    assert "User &#39;bob&#39; has been deleted" in page
    page = await (await client.post("/admin/users/delete",
                                    data={"csrf_token": csrf, "uid": "bob"})).text()
    assert "User does not exist" in page


async def test_last_admin_is_protected(client: TestClient[Any, Any],
                                       admin_password: str) -> None:
    csrf = await admin_client(client, admin_password)
    await client.post("/admin/users", data={"csrf_token": csrf, "uid": "helper", "admin": "on"})
    await client.post("/admin/users/delete", data={"csrf_token": csrf, "uid": "helper"})
    for path in ("/admin/users/delete", "/admin/users/admin"):
        page = await (await client.post(path, data={"csrf_token": csrf, "uid": "admin"})).text()
        assert html.escape(ONLY_ADMIN) in page
    page = await (await client.get("/admin/users")).text()
    assert 'data-uid="admin"' in page


async def test_voices_add_and_remove(client: TestClient[Any, Any], admin_password: str,
                                     tmp_path: Path) -> None:
    csrf = await admin_client(client, admin_password)
    page = await (await client.get("/admin/voices")).text()
    assert 'data-voice="alba"' in page and "present" in page
    base = {"csrf_token": csrf, "id": "abr", "name": "Anastasia", "gender": "female",
            "engine": "tangle", "lang": "", "acc": "", "options": ""}
    resp = await client.post("/admin/voices", data=dict(base, dir=str(tmp_path / "nowhere")))
    page = await resp.text()
    assert resp.status == 422 and "does not exist" in page and 'value="Anastasia"' in page
    resp = await client.post("/admin/voices", data=dict(base, dir="relative/dir"))
    assert resp.status == 422 and "absolute path" in await resp.text()
    (tmp_path / "abr").mkdir()
    resp = await client.post("/admin/voices", data=dict(base, dir=str(tmp_path / "abr")))
    assert resp.status == 422 and "voice.conf" in await resp.text()
    resp = await client.post("/admin/voices", data=dict(
        base, engine="command", dir="", lang="en", acc="gb",
        options='{"argv": ["/bin/sh", "-c", "id > /tmp/pwned"]}'))
    assert resp.status == 422 and "only be added from the shell" in await resp.text()
    resp = await client.post("/admin/voices", data=dict(base, engine="espeak", options="{"))
    assert resp.status == 422 and "options: not valid JSON" in await resp.text()
    resp = await client.post("/admin/voices", data=dict(
        base, engine="espeak", dir="", lang="en", acc="gb",
        options='{"voice": "en-gb", "variant": "f3"}'))
    page = await resp.text()
    assert resp.status == 200 and "Voice &#39;abr&#39; (Anastasia, en-gb, female, espeak) saved" in page
    voice = await (await client.get("/voices/abr")).json()
    assert voice["name"] == "Anastasia" and voice["engine"] == "espeak"
    page = await (await client.get("/admin/voices/abr")).text()
    assert "Anastasia" in page and 'id="tryit"' in page
    page = await (await client.get("/admin/voices/abr/remove")).text()
    assert "Remove voice &#39;abr&#39;?" in page
    page = await (await client.post("/admin/voices/abr/remove", data={"csrf_token": csrf})).text()
    assert "Voice &#39;abr&#39; removed" in page
    await assert_error(await client.get("/voices/abr"), 404)
    resp = await client.get("/admin/voices/abr")
    assert resp.status == 404 and "Voice could not be found" in await resp.text()


async def test_status_shows_the_synthesizers_figures(client: TestClient[Any, Any],
                                                     admin_password: str, user_token: str) -> None:
    await admin_client(client, admin_password)
    resp = await client.post("/speech", headers=bearer(user_token),
                             json={"voice_id": "alba", "text": "Hello there."})
    assert resp.status == 200 and len(await resp.read()) > 1000
    page = await (await client.get("/admin")).text()
    stats = client.app[synth_key].stats()
    assert "<dt>Requests</dt><dd>1</dd>" in page and "Max streams" in page
    assert '<th scope="col">Busy</th>' in page and ">alba<" in page
    assert f"<dd>{stats.syntheses}</dd>" in page


async def test_admin_speech_needs_session_and_csrf(client: TestClient[Any, Any],
                                                   admin_password: str,
                                                   admin_token: str) -> None:
    body = {"voice_id": "alba", "text": "Hello."}
    await assert_error(await client.post("/admin/speech", json=body), 401)
    # A bearer token does not open the session-only twin.
    await assert_error(await client.post("/admin/speech", json=body,
                                         headers=bearer(admin_token)), 401)
    csrf = await admin_client(client, admin_password)
    await assert_error(await client.post("/admin/speech", json=body), 403)
    await assert_error(await client.post("/admin/speech", json=body,
                                         headers={"X-CSRF-Token": "nope"}), 403)
    headers = {"X-CSRF-Token": csrf}
    # The same validation as /speech.
    await assert_error(await client.post("/admin/speech", json={"text": "x"}, headers=headers),
                       422, contains="voice_id: Missing data")
    await assert_error(await client.post("/admin/speech", json={"voice_id": "nope", "text": "x"},
                                         headers=headers), 400, "Voice could not be found")
    await assert_error(await client.post(
        "/admin/speech", json=dict(body, audio_format="speex"), headers=headers), 422,
        contains="audio_format: Not a valid choice.")


async def test_admin_speech_streams_audio(client: TestClient[Any, Any],
                                          admin_password: str) -> None:
    csrf = await admin_client(client, admin_password)
    resp = await client.post("/admin/speech", headers={"X-CSRF-Token": csrf},
                             json={"voice_id": "alba", "text": "Hello there.", "stream": False})
    audio = await resp.read()
    assert resp.status == 200, audio[:200]
    assert resp.headers["Content-Type"] == "audio/wav" and audio[:4] == b"RIFF"
    assert len(audio) > 1000


async def test_errors_are_pages_not_json(client: TestClient[Any, Any],
                                         admin_password: str) -> None:
    browser = {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}
    resp = await client.get("/admin/nowhere", headers=browser)
    page = await resp.text()
    assert resp.status == 404 and resp.content_type == "text/html" and "was not found" in page
    resp = await client.delete("/admin/users", headers=browser)
    assert resp.status == 405 and resp.content_type == "text/html" and "POST" in resp.headers["Allow"]
    resp = await client.get("/admin/static/admin.css")
    assert resp.status == 200 and resp.content_type == "text/css"
    resp = await client.get("/admin/static/../app.py")
    assert resp.status in (403, 404)
    resp = await client.get("/admin/static/base.html")
    assert resp.status == 404
    # The JSON API keeps its JSON errors.
    await assert_error(await client.get("/nowhere"), 404)


def test_templates_dir_holds_every_template() -> None:
    from idlakd.web.admin.pages import templates_dir

    names = {p.name for p in templates_dir().iterdir()}
    assert {"base.html", "login.html", "admin.css", "admin.js", "__init__.py"} <= names


async def test_handler_crash_is_a_page_without_traceback(
        client: TestClient[Any, Any], admin_password: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    await admin_client(client, admin_password)

    def boom() -> None:
        raise RuntimeError("secret detail")

    monkeypatch.setattr(client.app[synth_key], "stats", boom)
    resp = await client.get("/admin")
    page = await resp.text()
    assert resp.status == 500 and "internal error" in page
    assert "secret detail" not in page and "Traceback" not in page



async def test_unknown_admin_paths_are_json_for_api_clients_and_pages_for_browsers(
        client: TestClient[Any, Any]) -> None:
    await assert_error(await client.get("/admin/nope"), 404)
    await assert_error(await client.delete("/admin"), 405)
    resp = await client.get("/admin/nope", headers={"Accept": "text/html,application/xhtml+xml"})
    assert resp.status == 404 and resp.content_type == "text/html"
