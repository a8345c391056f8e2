"""The admin page in a real browser: Debian's chromium driven by Playwright, against `idlakd serve`.

These tests fail (never skip) when chromium or Playwright is missing: CI installs both.
Screenshots of every page go to test-output/screenshots/.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import re
import select
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import aiohttp
import pytest

from idlakd.accounts.users import ONLY_ADMIN

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parent.parent
SCREENSHOTS = REPO / "test-output" / "screenshots"
CHROMIUM = Path(os.environ.get("IDLAKD_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
START_TIMEOUT = 20.0
UI_TIMEOUT_MS = 15_000


class Server:
    """A running `idlakd serve` subprocess on a loopback port."""

    def __init__(self, process: subprocess.Popen[bytes], url: str, password: str,
                 log: Path, state: Path) -> None:
        self.process = process
        self.url = url
        self.password = password
        self.log = log
        self.state = state

    def api(self, method: str, path: str, body: Any = None,
            token: str | None = None) -> tuple[int, Any]:
        """Call the JSON API: (status, decoded body or None)."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method)
        request.add_header("Content-Type", "application/json")
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(request, timeout=10) as resp:
                raw = resp.read()
                return resp.status, json.loads(raw) if raw else None
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            return exc.code, json.loads(raw) if raw else None

    def token(self, uid: str, password: str) -> str | None:
        """An access token from POST /auth, or None when refused."""
        status, body = self.api("POST", "/auth", {"uid": uid, "password": password})
        return body["access_token"] if status == 200 else None


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def read_admin_password(process: subprocess.Popen[bytes], deadline: float) -> str:
    """The first admin's password, from the `<User admin:...:True>` line printed on first start."""
    assert process.stdout is not None
    seen = b""
    while time.monotonic() < deadline:
        ready, _, _ = select.select([process.stdout], [], [], 0.2)
        if ready:
            chunk = os.read(process.stdout.fileno(), 4096)
            if not chunk:
                break
            seen += chunk
            match = re.search(rb"<User admin:([^:\s]+):True>", seen)
            if match:
                return match.group(1).decode()
        elif process.poll() is not None:
            break
    raise AssertionError(f"idlakd did not print the admin password: {seen!r}")


def wait_ready(url: str, deadline: float) -> None:
    """Poll /healthz until the server answers."""
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url + "/healthz", timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise AssertionError("idlakd did not become ready")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The real daemon, as deployed: `python -m idlakd serve` on a fresh state directory."""
    state = tmp_path_factory.mktemp("browser-state")
    port = free_port()
    log = state / "idlakd.log"
    command = [sys.executable, "-m", "idlakd", "--set", f"state_dir={state}",
               "--set", "bcrypt_rounds=4", "--set", f"voice_config={REPO / 'voiceconfig.json'}",
               "--set", f"log_file={log}", "--set", "drain_seconds=0",
               "serve", "--host", "127.0.0.1", "--port", str(port)]
    env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
    process = subprocess.Popen(command, cwd=state, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        password = read_admin_password(process, deadline)
        url = f"http://127.0.0.1:{port}"
        wait_ready(url, deadline)
        yield Server(process, url, password, log, state)
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Debian's chromium under Playwright; a missing browser is a failure, not a skip."""
    if not CHROMIUM.is_file():
        pytest.fail(f"{CHROMIUM} is missing: install it with `apt-get install -y chromium`")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("Playwright is missing: pip install -e '.[test]'")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser: Any, server: Server) -> Iterator[Any]:
    """A fresh browser context (no cookies) whose page failed the test on any script error."""
    context = browser.new_context(viewport={"width": 1100, "height": 800})
    context.set_default_timeout(UI_TIMEOUT_MS)
    tab = context.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda exc: errors.append(str(exc)))
    tab.on("dialog", lambda dialog: errors.append(f"unexpected dialog: {dialog.message}"))
    # Nothing outside the server may be loaded.
    tab.on("request", lambda req: None if req.url.startswith((server.url, "blob:", "data:"))
           else errors.append(f"external request: {req.url}"))
    try:
        yield tab
    finally:
        context.close()
    assert not errors, errors


UNLABELLED_JS = """() => [...document.querySelectorAll(
    'input:not([type=hidden]), select, textarea, button, audio, a')]
  .filter(el => !(el.labels && el.labels.length) && !el.getAttribute('aria-label')
                && !el.textContent.trim())
  .map(el => el.outerHTML)"""


def shot(page: Any, name: str) -> None:
    """Save a full-page screenshot (README, CI output); every control there must be labelled."""
    assert page.evaluate(UNLABELLED_JS) == [], f"unlabelled controls on {name}"
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def sign_in(page: Any, server: Server, uid: str = "admin", password: str | None = None) -> None:
    """Sign in through the form."""
    page.goto(server.url + "/admin")
    page.get_by_label("User id").fill(uid)
    page.get_by_label("Password").fill(password or server.password)
    page.get_by_role("button", name="Sign in").click()


def row(page: Any, uid: str) -> Any:
    """The users table row of uid."""
    return page.locator(f"tr[data-uid={json.dumps(uid)}]")  # a JSON string is a CSS string


def flash_text(page: Any) -> str:
    """The text of the page's first message (the voices page has a second status: try-it's)."""
    text = page.locator(".flash > p").first.inner_text()
    assert isinstance(text, str)
    return text


def one_time_password(page: Any) -> str:
    """The password shown once in the page's message."""
    value = page.locator(".secret-value").input_value()
    assert isinstance(value, str) and len(value) >= 22
    return value


def test_sign_in_status_and_sign_out(page: Any, server: Server) -> None:
    page.goto(server.url + "/admin")
    assert page.url.endswith("/admin/login")
    shot(page, "login")
    page.get_by_label("User id").fill("admin")
    page.get_by_label("Password").fill("wrong password")
    page.get_by_role("button", name="Sign in").click()
    assert page.get_by_role("alert").inner_text() == "Login details are incorrect"
    sign_in(page, server)
    page.wait_for_url(server.url + "/admin")
    assert page.get_by_role("heading", name="Status").is_visible()
    assert page.locator("#uptime").inner_text().endswith(" s")
    assert page.get_by_role("heading", name="Synthesis").is_visible()
    shot(page, "status")
    cookie = next(c for c in page.context.cookies() if c["name"] == "idlakd_admin")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    page.get_by_role("button", name="Sign out").click()
    page.wait_for_url(re.compile(r"/admin/login\?m=signed-out$"))
    assert page.get_by_role("status").inner_text() == "You have signed out."


def test_user_lifecycle(page: Any, server: Server) -> None:
    sign_in(page, server)
    page.get_by_role("link", name="Users").click()
    page.get_by_label("User id").fill("carol")
    page.get_by_role("button", name="Create user").click()
    assert "Created user 'carol'." in page.get_by_role("status").inner_text()
    password = one_time_password(page)
    page.get_by_role("button", name="Copy").click()
    page.locator(".copy-result").filter(has_text=re.compile("Cop|Select")).wait_for()
    shot(page, "users-created")
    # The shown password works through the API.
    token = server.token("carol", password)
    assert token is not None
    assert server.api("GET", "/voices/alba", token=token)[0] == 200
    # Shown once: reloading does not show it again.
    page.reload()
    assert page.locator(".secret-value").count() == 0

    row(page, "carol").get_by_role("button", name="Reset password (user carol)").click()
    new_password = one_time_password(page)
    assert new_password != password
    assert server.token("carol", password) is None
    assert server.token("carol", new_password) is not None

    row(page, "carol").get_by_role("button", name="Make admin (user carol)").click()
    assert page.get_by_role("status").inner_text() == "'carol' is now an admin."
    assert row(page, "carol").locator("td.admin").inner_text() == "yes"
    status, users = server.api("GET", "/users", token=server.token("carol", new_password))
    assert status == 200 and {"id": "carol", "admin": True} in users["users"]
    row(page, "carol").get_by_role("button", name="Remove admin (user carol)").click()
    assert row(page, "carol").locator("td.admin").inner_text() == "no"

    row(page, "carol").get_by_role("link", name="Delete… (user carol)").click()
    assert page.get_by_role("heading", name="Delete user 'carol'?").is_visible()
    shot(page, "users-confirm-delete")
    page.get_by_role("button", name="Delete user 'carol'").click()
    assert page.get_by_role("status").inner_text() == "User 'carol' has been deleted"
    assert row(page, "carol").count() == 0
    assert server.token("carol", new_password) is None


def test_last_admin_and_non_admin_are_refused(page: Any, server: Server) -> None:
    sign_in(page, server)
    page.goto(server.url + "/admin/users")
    row(page, "admin").get_by_role("button", name="Remove admin (user admin)").click()
    assert page.get_by_role("alert").inner_text() == ONLY_ADMIN
    row(page, "admin").get_by_role("link", name="Delete… (user admin)").click()
    page.get_by_role("button", name="Delete user 'admin'").click()
    assert page.get_by_role("alert").inner_text() == ONLY_ADMIN
    assert row(page, "admin").locator("td.admin").inner_text() == "yes"
    shot(page, "users-last-admin")

    page.get_by_label("User id").fill("dave")
    page.get_by_role("button", name="Create user").click()
    password = one_time_password(page)
    page.context.clear_cookies()
    sign_in(page, server, "dave", password)
    assert "Admin permissions required" in page.get_by_role("alert").inner_text()
    assert not any(c["name"] == "idlakd_admin" for c in page.context.cookies())


def test_xss_is_shown_as_text(page: Any, server: Server) -> None:
    evil = '<script>alert("xss")'
    sign_in(page, server)
    page.goto(server.url + "/admin/users")
    # New uids cannot hold markup characters any more: the form says so, as text.
    page.get_by_label("User id").fill(evil)
    page.get_by_role("button", name="Create user").click()
    assert "uid" in page.get_by_role("alert").inner_text()
    # A user from before the uid rule (written as an older idlakd did) is shown as text.
    with sqlite3.connect(server.state / "idlakd.db") as db:
        db.execute("INSERT INTO users (uid, password_hash, admin, created_at) VALUES (?, ?, 0, ?)",
                   (evil, b"x", time.time()))
    page.goto(server.url + "/admin/users")
    assert page.locator("td.uid", has_text=evil).inner_text() == evil
    # The page fixture fails the test if a dialog opened or a script error happened.
    row(page, evil).get_by_role("link", name=f"Delete… (user {evil})").click()
    page.get_by_role("button", name=f"Delete user '{evil}'").click()
    assert page.get_by_role("status").inner_text() == f"User '{evil}' has been deleted"


def test_forged_post_is_refused(page: Any, server: Server) -> None:
    sign_in(page, server)
    page.wait_for_url(server.url + "/admin")
    cookies = {c["name"]: c["value"] for c in page.context.cookies()}

    async def forge() -> list[int]:
        # Even holding the victim's cookie, a post without the page's token fails.
        async with aiohttp.ClientSession(cookies=cookies) as session:
            statuses = []
            for data in ({"uid": "mallory", "admin": "on"},
                         {"uid": "mallory", "admin": "on", "csrf_token": "guess"}):
                async with session.post(server.url + "/admin/users", data=data,
                                        allow_redirects=False) as resp:
                    assert "CSRF check failed" in await resp.text()
                    statuses.append(resp.status)
            async with session.post(server.url + "/admin/speech",
                                    json={"voice_id": "alba", "text": "hi"}) as resp:
                statuses.append(resp.status)
            return statuses

    # Playwright's sync API owns this thread's event loop: forge from another thread.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        assert pool.submit(asyncio.run, forge()).result() == [403, 403, 403]
    page.goto(server.url + "/admin/users")
    assert row(page, "mallory").count() == 0
    # Errors are pages with a message, never JSON or a traceback.
    response = page.goto(server.url + "/admin/no-such-page")
    assert response is not None and response.status == 404
    assert "was not found" in page.get_by_role("alert").inner_text()
    shot(page, "error")


def play(page: Any, audio_format: str) -> float:
    """Press play on the try-it box; the <audio> element's duration once it has one."""
    page.get_by_label("Format").select_option(audio_format)
    page.get_by_role("button", name="Play").click()
    page.wait_for_function(
        "() => { const a = document.getElementById('tryit-audio');"
        " return a.duration > 0 && Number.isFinite(a.duration) &&"
        " document.getElementById('tryit-status').textContent.startsWith('Done'); }",
        timeout=UI_TIMEOUT_MS)
    duration = page.evaluate("document.getElementById('tryit-audio').duration")
    assert isinstance(duration, (int, float))
    return float(duration)


def test_play_a_voice(page: Any, server: Server) -> None:
    sign_in(page, server)
    page.goto(server.url + "/admin/voices")
    alba = page.locator('tr[data-voice="alba"]')
    assert alba.locator("td.files").inner_text() == "present"
    page.get_by_label("Voice", exact=True).select_option("alba")
    page.get_by_label("Text").fill("Hello from the admin page. This is a second sentence.")
    assert play(page, "mp3") > 1.0  # streamed through Media Source Extensions
    assert play(page, "wav") > 1.0  # fetched whole
    shot(page, "voices")
    # The status page now counts the syntheses and shows alba's workers.
    page.get_by_role("link", name="Status").click()
    assert page.locator("table").filter(has_text="alba").count() == 1
    shot(page, "status")
    # The page holds no token: only the session cookie (HttpOnly) authenticates it.
    assert "eyJ" not in page.content()


def test_voice_add_details_and_remove(page: Any, server: Server, tmp_path: Path) -> None:
    sign_in(page, server)
    page.goto(server.url + "/admin/voices")
    page.get_by_label("Id", exact=True).fill("abr")
    page.get_by_label("Name").fill("Anastasia")
    page.get_by_label("Gender").select_option("female")
    page.get_by_label("Directory").fill(str(tmp_path / "missing"))
    page.get_by_role("button", name="Save voice").click()
    assert "does not exist" in page.get_by_role("alert").inner_text()
    assert page.get_by_label("Name").input_value() == "Anastasia"
    page.get_by_label("Engine", exact=True).select_option("espeak")
    page.get_by_label("Directory").fill("")
    page.get_by_label("Language").fill("en")
    page.get_by_label("Accent").fill("gb")
    page.get_by_label("Engine options").fill('{"voice": "en-gb", "variant": "f2"}')
    page.get_by_role("button", name="Save voice").click()
    assert flash_text(page) == \
        "Voice 'abr' (Anastasia, en-gb, female, espeak) saved"
    assert server.api("GET", "/voices/abr")[0] == 200
    page.get_by_role("link", name="abr", exact=True).click()
    assert page.get_by_role("heading", name="Voice abr").is_visible()
    shot(page, "voice-details")
    page.get_by_role("link", name="Remove…").click()
    page.get_by_role("button", name="Remove voice 'abr'").click()
    assert flash_text(page) == ("Voice 'abr' removed; voiceconfig.json will not bring it back; "
                                "adding it again (here or with `idlakd voice add`) does")
    assert server.api("GET", "/voices/abr")[0] == 404


def test_phone_width(browser: Any, server: Server) -> None:
    context = browser.new_context(viewport={"width": 375, "height": 740}, is_mobile=True)
    try:
        tab = context.new_page()
        sign_in(tab, server)
        for name, path in (("phone-users", "/admin/users"), ("phone-voices", "/admin/voices")):
            tab.goto(server.url + path)
            # Nothing wider than the screen except inside the scrollable table wrapper.
            overflow = tab.evaluate("document.documentElement.scrollWidth")
            assert overflow <= 375 + 1, f"{path} is {overflow}px wide"
            shot(tab, name)
    finally:
        context.close()



def test_usage_and_limits_on_the_users_page(page: Any, server: Server) -> None:
    """The users page shows each user's usage; its Save limits button sets that user's limits."""
    admin = server.token("admin", server.password)
    status, created = server.api("POST", "/users", {"uid": "erin"}, token=admin)
    assert status == 200
    sign_in(page, server)
    page.goto(server.url + "/admin/users")
    usage = page.locator('tr[data-usage-uid="erin"]')
    assert usage.locator("td.requests").inner_text() == "0"
    usage.get_by_label("Per day").fill("500")
    usage.get_by_label("At once").fill("2")
    usage.get_by_role("button", name="Save limits (user erin)").click()
    assert page.get_by_role("status").inner_text() == "Limits of 'erin' saved."
    status, limits = server.api("GET", "/users/erin/limits", token=admin)
    assert status == 200 and limits["overrides"] == {
        "chars_per_minute": None, "chars_per_day": 500, "concurrent": 2}
    usage = page.locator('tr[data-usage-uid="erin"]')
    assert usage.get_by_label("Per day").input_value() == "500"
    shot(page, "users-limits")
    usage.get_by_label("Per day").fill("")  # blank: back to the default
    usage.get_by_role("button", name="Save limits (user erin)").click()
    assert server.api("GET", "/users/erin/limits", token=admin)[1]["overrides"]["chars_per_day"] is None
    assert created["uid"] == "erin"


def test_speak_as_i_type(page: Any, server: Server) -> None:
    """The try-it box's live mode: typed text goes over /admin/speech/stream, audio comes back."""
    sign_in(page, server)
    page.goto(server.url + "/admin/voices")
    page.get_by_label("Voice", exact=True).select_option("alba")
    text = page.get_by_label("Text")
    text.fill("")
    sockets: list[Any] = []
    sent: list[str] = []
    page.on("websocket", lambda ws: (sockets.append(ws.url),
                                     ws.on("framesent", lambda frame: sent.append(str(frame)))))
    page.get_by_label("Speak as I type").check()
    page.wait_for_function(
        "() => document.getElementById('tryit-status').textContent.startsWith('Listening')",
        timeout=UI_TIMEOUT_MS)
    text.press_sequentially("Hello there. How are you today? ", delay=20)
    page.wait_for_function(
        "() => { const m = document.getElementById('tryit-status').textContent"
        ".match(/Speaking as you type: ([0-9.]+) s/); return m && parseFloat(m[1]) > 2; }",
        timeout=UI_TIMEOUT_MS)
    assert sockets == [server.url.replace("http://", "ws://") + "/admin/speech/stream"]
    deltas = [json.loads(frame)["text"] for frame in sent if '"text"' in frame]
    assert len(deltas) > 5 and "".join(deltas) == "Hello there. How are you today? "
    shot(page, "speak-as-i-type")
    page.get_by_label("Speak as I type").uncheck()


def test_jobs_listed_with_progress_and_cancelled(page: Any, server: Server) -> None:
    token = server.token("admin", server.password)
    text = " ".join(["A long job, listed on the admin page while it runs."] * 600)
    status, body = server.api("POST", "/v1/jobs", {"voice_id": "alba", "text": text}, token)
    assert status == 202, body
    job_id = body["id"]
    sign_in(page, server)
    page.wait_for_url(server.url + "/admin")
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Jobs").click()
    page.wait_for_url(server.url + "/admin/jobs")
    job_row = page.locator(f"tr[data-job={json.dumps(job_id)}]")
    assert job_row.locator(".uid").inner_text() == "admin"
    assert job_row.locator(".status").inner_text() in ("queued", "running")
    assert job_row.locator(".chars").inner_text().endswith(f" / {len(text)}")
    shot(page, "jobs")
    job_row.get_by_role("button", name=f"Cancel (job {job_id})").click()
    page.wait_for_url(server.url + "/admin/jobs")
    assert flash_text(page) == f"Job {job_id} of 'admin' cancelled."
    assert job_row.locator(".status").inner_text() == "cancelled"
    assert job_row.get_by_role("button").count() == 0
    status, body = server.api("GET", f"/v1/jobs/{job_id}", token=token)
    assert status == 200 and body["status"] == "cancelled"
