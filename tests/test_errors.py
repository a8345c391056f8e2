"""Every failure answers {"message"} JSON with the right code; request ids; no tracebacks."""

from __future__ import annotations

import logging
from typing import Any

import pytest
import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestClient

from idlakd.web.keys import store_key
from tests.helpers.app import assert_error, bearer, make_config


async def test_unknown_route_is_json_404(client: TestClient[Any, Any]) -> None:
    await assert_error(await client.get("/nope"), 404)
    await assert_error(await client.post("/users/a/b/c"), 404)


async def test_wrong_method_is_json_405_with_allow(client: TestClient[Any, Any]) -> None:
    resp = await client.put("/voices")
    await assert_error(resp, 405)
    assert "POST" in resp.headers["Allow"] and "GET" in resp.headers["Allow"]
    await assert_error(await client.get("/auth"), 405)


async def test_oversize_body_is_json_413(tmp_path: Any, started_app_factory: Any) -> None:
    client = await started_app_factory(make_config(tmp_path, max_body_bytes="1000"))
    resp = await client.post("/auth", data=b'{"uid": "' + b"a" * 5000 + b'"}',
                             headers={"Content-Type": "application/json"})
    await assert_error(resp, 413, contains="1000")


async def test_request_id_on_every_response(client: TestClient[Any, Any]) -> None:
    resp = await client.get("/languages")
    assert len(resp.headers["X-Request-Id"]) >= 16
    resp = await client.get("/languages", headers={"X-Request-Id": "abc-123"})
    assert resp.headers["X-Request-Id"] == "abc-123"
    resp = await client.get("/languages", headers={"X-Request-Id": "bad id\twith junk"})
    assert resp.headers["X-Request-Id"] != "bad id\twith junk"
    resp = await client.get("/missing")
    assert resp.headers["X-Request-Id"]


async def test_unexpected_error_is_500_json_and_logged_with_request_id(
        client: TestClient[Any, Any], app: web.Application,
        caplog: pytest.LogCaptureFixture) -> None:
    await app[store_key].close()  # every query now fails inside the store
    with caplog.at_level(logging.ERROR):
        resp = await client.get("/voices", headers={"X-Request-Id": "req-500"})
    body = await assert_error(resp, 500)
    assert "store is not open" not in body["message"]
    logged = [r for r in caplog.records if "req-500" in r.getMessage()]
    assert logged and logged[0].exc_info is not None


async def test_every_route_answers_json_errors_without_token(client: TestClient[Any, Any]) -> None:
    for method, path in (("POST", "/auth/expire"), ("POST", "/auth/password"), ("GET", "/users"),
                         ("POST", "/users"), ("POST", "/users/x/password"),
                         ("DELETE", "/users/x"), ("POST", "/users/x/admin"), ("POST", "/speech")):
        await assert_error(await client.request(method, path), 401, "Missing Authorization Header")


async def test_non_utf8_and_deep_json(client: TestClient[Any, Any], admin_token: str) -> None:
    h = bearer(admin_token) | {"Content-Type": "application/json"}
    await assert_error(await client.post("/users", data=b'{"uid": "\xff\xfe"}', headers=h), 400,
                       "Request body is not valid JSON")
    deep = b"[" * 100_000 + b"]" * 100_000
    await assert_error(await client.post("/users", data=deep, headers=h), 400)
    await assert_error(await client.post("/users", data=b"null", headers=h), 422)
    await assert_error(await client.post("/users", data=b"123", headers=h), 422)


async def test_failure_after_the_stream_started_aborts_instead_of_appending_json(
        aiohttp_client: Any, app: web.Application) -> None:
    """Never a second status line inside a started body, never a clean end: the client sees a cut."""
    async def half_then_crash(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        await response.write(b"RIFF-partial-audio")
        raise RuntimeError("disk full")

    app.router.add_post("/test-half-then-crash", half_then_crash)
    client = await aiohttp_client(app)
    resp = await client.post("/test-half-then-crash")
    assert resp.status == 200
    with pytest.raises(aiohttp.ClientPayloadError):
        await resp.read()
