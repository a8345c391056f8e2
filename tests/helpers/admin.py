"""Drive the admin page like a browser form would: CSRF tokens, sign-in, one-time secrets."""

from __future__ import annotations

import html
import re
from typing import Any

from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient

CSRF_RE = re.compile(r'name="csrf_token" value="([^"]+)"')


def csrf_of(page: str) -> str:
    """The CSRF token of the first form of a page."""
    match = CSRF_RE.search(page)
    assert match, "no CSRF token in the page"
    return html.unescape(match.group(1))


def secret_of(page: str) -> str:
    """The one-time password shown on a page."""
    match = re.search(r'class="secret-value" type="text" readonly value="([^"]+)"', page)
    assert match, "no one-time password in the page"
    return html.unescape(match.group(1))


async def sign_in(client: TestClient[Any, Any], uid: str, password: str) -> ClientResponse:
    """Fetch the sign-in form, then post it (without following the redirect)."""
    page = await (await client.get("/admin/login")).text()
    return await client.post("/admin/login", allow_redirects=False, data={
        "csrf_token": csrf_of(page), "uid": uid, "password": password})


async def admin_client(client: TestClient[Any, Any], password: str) -> str:
    """Sign the client in as the first admin; return a page's CSRF token."""
    resp = await sign_in(client, "admin", password)
    assert resp.status == 303 and resp.headers["Location"] == "/admin"
    return csrf_of(await (await client.get("/admin/users")).text())
