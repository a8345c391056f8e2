"""The admin page's Unlock button in Chromium, against `idlakd serve` (fixtures of
tests/test_admin_browser.py: a daemon and a browser of this module's own)."""

from __future__ import annotations

import asyncio
import concurrent.futures
from typing import Any

import aiohttp
import pytest

from tests.test_admin_browser import (Server, browser, flash_text, page, row, server, shot,
                                      sign_in)

pytestmark = pytest.mark.browser
__all__ = ["browser", "page", "server"]  # fixtures, used by name


def test_unlock_button(page: Any, server: Server) -> None:
    admin = server.token("admin", server.password)
    assert admin is not None
    status, created = server.api("POST", "/users", {"uid": "uma"}, token=admin)
    assert status == 200
    password = created["password"]
    for n in range(10):  # the default login_max_failures
        assert server.api("POST", "/auth", {"uid": "uma", "password": f"guess-{n}"})[0] == 401
    assert server.api("POST", "/auth", {"uid": "uma", "password": password})[0] == 429

    sign_in(page, server)
    page.wait_for_url(server.url + "/admin")
    page.goto(server.url + "/admin/users")
    # The users table's row (the usage table has rows per user too).
    page.locator("table.users").locator(row(page, "uma")).get_by_role(
        "button", name="Unlock (user uma)").click()
    assert flash_text(page) == "'uma' is unlocked: their failed logins are forgotten."
    shot(page, "users-unlocked")
    assert server.token("uma", password) is not None


def test_unlock_without_the_page_token_is_refused(page: Any, server: Server) -> None:
    """Holding the admin's cookie is not enough: the form's CSRF token is needed."""
    sign_in(page, server)
    page.wait_for_url(server.url + "/admin")
    cookies = {c["name"]: c["value"] for c in page.context.cookies()}

    async def forge() -> tuple[int, str]:
        async with aiohttp.ClientSession(cookies=cookies) as session:
            async with session.post(server.url + "/admin/users/unlock", data={"uid": "admin"},
                                    allow_redirects=False) as resp:
                return resp.status, await resp.text()

    # Playwright's sync API owns this thread's event loop: forge from another thread.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        status, text = pool.submit(asyncio.run, forge()).result()
    assert status == 403 and "CSRF check failed" in text
