"""The admin page's API keys panel in Debian's chromium (Playwright), against `idlakd serve`."""

from __future__ import annotations

import re
from typing import Any

import pytest

from idlakd.accounts import keys as api_keys
from tests.test_admin_browser import (Server, browser, flash_text, one_time_password, page, row,
                                      server, shot, sign_in)

pytestmark = pytest.mark.browser
# The fixtures come from the admin page's browser tests: one daemon and one chromium here too.
__all__ = ["browser", "page", "server"]


def key_row(page: Any, name: str) -> Any:
    """The keys table row of the key with this name."""
    return page.locator("table.keys tbody tr").filter(
        has=page.locator("td.name", has_text=re.compile(f"^{re.escape(name)}$")))


def test_make_copy_use_and_revoke_a_key(page: Any, server: Server) -> None:
    sign_in(page, server)
    page.get_by_role("link", name="Users").click()
    page.get_by_label("User id").fill("erin")
    page.get_by_role("button", name="Create user").click()
    row(page, "erin").get_by_role("link", name="API keys (user erin)").click()
    assert page.get_by_role("heading", name="API keys of 'erin'").is_visible()
    assert page.get_by_text("'erin' has no API keys.").is_visible()

    page.get_by_label("Key name").fill("ci bot")
    page.get_by_label("Expires in days").fill("30")
    page.get_by_role("button", name="Make key").click()
    assert flash_text(page) == "Made API key 'ci bot' for 'erin'."
    key = one_time_password(page)
    assert api_keys.KEY_PATTERN.fullmatch(key)
    page.get_by_role("button", name="Copy").click()
    page.locator(".copy-result").filter(has_text=re.compile("Cop|Select")).wait_for()
    shot(page, "user-keys-made")
    # The key shown works through the API, as erin.
    status, body = server.api("GET", "/auth/keys", token=key)
    assert status == 200 and [k["name"] for k in body["keys"]] == ["ci bot"]
    # Shown once: the reloaded page lists it by prefix only, with its use noted.
    page.reload()
    assert page.locator(".secret-value").count() == 0
    assert key not in page.content()
    ci = key_row(page, "ci bot")
    assert ci.locator("td.prefix").inner_text() == key[:12] + "…"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", ci.locator("td.last-used").inner_text())
    shot(page, "user-keys")

    # A revoke without the page's CSRF token is refused, even with the session cookie.
    forged = page.request.post(server.url + "/admin/users/keys/revoke",
                               form={"uid": "erin", "id": body["keys"][0]["id"]},
                               max_redirects=0)
    assert forged.status == 403
    assert server.api("GET", "/auth/keys", token=key)[0] == 200

    ci.get_by_role("button", name="Revoke (key ci bot)").click()
    assert flash_text(page) == f"API key 'ci bot' ({key[:12]}…) of 'erin' revoked; it no longer works."
    assert key_row(page, "ci bot").count() == 0
    status, body = server.api("GET", "/auth/keys", token=key)
    assert status == 401 and body["message"] == api_keys.KEY_INVALID


def test_bad_fields_are_shown_and_nothing_is_made(page: Any, server: Server) -> None:
    sign_in(page, server)
    page.goto(server.url + "/admin/users/keys?uid=admin")
    page.get_by_label("Key name").fill("   ")
    page.get_by_role("button", name="Make key").click()
    assert page.get_by_role("alert").inner_text() == f"name: {api_keys.NAME_RULE}"
    assert page.locator(".secret-value").count() == 0
    page.goto(server.url + "/admin/users/keys?uid=nobody")
    assert page.url.endswith("/admin/users")
    assert page.get_by_role("alert").inner_text() == "User does not exist"
