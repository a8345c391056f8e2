"""Bad input, generated: every route, authenticated or not, never answers 5xx or a non-JSON error.

Hypothesis drives the real app (real SQLite file, real middlewares) through aiohttp's
test client. One app is started per test and reused by that test's examples; tokens are
minted per example so that a fuzzed /auth/expire or a deleted admin cannot blind the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import os
import re
import socket
import string
import time
from pathlib import Path
from typing import Any, Awaitable, Callable, Iterator, Mapping, TypeVar
from urllib.parse import quote

import aiohttp
import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from hypothesis import strategies as st
from yarl import URL

from idlakd.web.app import create_app
from idlakd.accounts.tokens import issue_token
from idlakd.config import Config, DatabaseUrl
from idlakd.web.keys import passwords_key, secret_key, store_key
from idlakd.web.routes import ROUTES
from tests.helpers.app import assert_error, bearer, make_config

T = TypeVar("T")

FUZZ = settings(max_examples=40, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# Every body field any route reads, so generated objects hit the validators, not only "unknown key".
FIELDS = ("uid", "password", "old_password", "new_password", "admin", "language", "accent",
          "gender", "voice_id", "text", "audio_format", "stream")
METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD", "TRACE", "FOO")


class LiveApp:
    """One started app with its own event loop: sync Hypothesis tests drive it example by example."""

    def __init__(self, tmp_path: Path, **overrides: str) -> None:
        self.config: Config = make_config(tmp_path, **overrides)
        self.runner = asyncio.Runner()
        self.client: TestClient[Any, Any] = self.runner.run(self._start())
        self.errors: list[logging.LogRecord] = []
        self._handler = _ListHandler(self.errors)
        logging.getLogger("idlakd").addHandler(self._handler)

    async def _start(self) -> TestClient[Any, Any]:
        """Start the app (its first-start console line is swallowed)."""
        client: TestClient[Any, Any] = TestClient(TestServer(create_app(self.config)))
        with contextlib.redirect_stdout(io.StringIO()):
            await client.start_server()
        return client

    @property
    def app(self) -> Any:
        """The running application."""
        return self.client.app

    def run(self, coro: Awaitable[T]) -> T:
        """Run one coroutine on the app's loop."""
        return self.runner.run(coro)  # type: ignore[arg-type]

    async def tokens(self) -> dict[str, str]:
        """Fresh tokens of an admin and of a plain user, recreating them if a test removed them."""
        store = self.app[store_key]
        passwords = self.app[passwords_key]
        for uid, admin in (("admin", True), ("fuzzuser", False)):
            if not await store.add_user(uid, await passwords.hash("irrelevant-pw"), admin):
                await store.set_admin(uid, admin)
        secret = self.app[secret_key]
        return {"admin": issue_token(secret, "admin", 600),
                "user": issue_token(secret, "fuzzuser", 600)}

    def close(self) -> None:
        """Stop the app and the loop."""
        logging.getLogger("idlakd").removeHandler(self._handler)
        try:
            self.run(self.client.close())
        finally:
            self.runner.close()


class _ListHandler(logging.Handler):
    """Collects ERROR records (an unhandled exception logs one)."""

    def __init__(self, sink: list[logging.LogRecord]) -> None:
        super().__init__(logging.ERROR)
        self.sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        self.sink.append(record)


@pytest.fixture
def live(tmp_path: Path) -> Iterator[LiveApp]:
    """A started app for a sync (Hypothesis) test; afterwards it must still serve and have logged no crash."""
    live_app = LiveApp(tmp_path, max_body_bytes="65536")
    try:
        yield live_app
        assert live_app.run(_still_serving(live_app.client))
        assert not live_app.errors, [r.getMessage() for r in live_app.errors]
    finally:
        live_app.close()


async def _still_serving(client: TestClient[Any, Any]) -> bool:
    """The server answers a plain request correctly."""
    resp = await client.get("/voices/alba")
    if resp.status == 404:
        # The admin-form fuzz can remove alba (POST /admin/voices/alba/remove, signed in).
        return bool((await resp.json())["message"] == "Voice could not be found")
    return resp.status == 200 and (await resp.json())["voice_id"] == "alba"


async def check_answer(resp: ClientResponse, method: str = "GET") -> None:
    """The pass condition: never 5xx; every error is 4xx JSON {"message"} with a request id."""
    body = await resp.read()
    assert resp.status < 500, (resp.status, body[:300])
    if "X-Request-Id" not in resp.headers:
        # Only aiohttp's HTTP parser answers without passing through the app (a body whose
        # Content-Encoding lies, a broken chunk): a plain-text 400 that closes the connection.
        # Known gap: such answers cannot be shaped by idlakd's middleware.
        assert resp.status == 400 and resp.headers.get("Connection") == "close" or \
            resp.headers.get("Content-Type", "").startswith("text/plain"), resp.headers
        return
    if resp.status >= 400 and method != "HEAD":
        assert resp.headers.get("Content-Type") == "application/json", (resp.status, body[:300])
        data = json.loads(body)
        if resp.url.path.startswith("/v1/"):  # OpenAI's door: OpenAI's error shape
            assert isinstance(data, dict) and set(data) == {"error"}, data
            assert set(data["error"]) == {"message", "type", "param", "code"}, data
            data = {"message": data["error"]["message"]}
        assert isinstance(data, dict) and isinstance(data.get("message"), str), data
        assert set(data) <= {"message", "code"}, data
        assert "Traceback" not in data["message"]
        if resp.status == 401:
            assert resp.headers.get("WWW-Authenticate") == "Bearer"


# Strategies

# Unicode edge cases: controls, NUL, lone surrogates are impossible in JSON via aiohttp, so
# escape them ourselves below; BOM, RTL marks, combining marks, astral planes, non-characters.
EDGE_CHARS = st.sampled_from(["\x00", "\x1b", "\u202e", "\ufeff", "\u0301", "\U0001f600",
                              "\uffff", "\ud800", "\udfff", "\u2028", "\r\n", "\t", "'", '"',
                              "\\", "%", "<", ">", "&", "/", "..", ";", "--", "\u0130"])
TEXT = st.one_of(
    st.text(max_size=50),
    st.lists(EDGE_CHARS, max_size=20).map("".join),
    st.text(alphabet=st.characters(codec="utf-8"), max_size=30),
    st.integers(1000, 70_000).map(lambda n: "a" * n),
    st.just(""),
)
JSON_SCALAR = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True),
                        TEXT, st.integers(-(10 ** 30), 10 ** 30))
JSON_VALUE = st.recursive(
    JSON_SCALAR,
    lambda inner: st.one_of(st.lists(inner, max_size=5),
                            st.dictionaries(st.text(max_size=10), inner, max_size=5)),
    max_leaves=20,
)
JSON_OBJECT = st.one_of(
    st.fixed_dictionaries({}, optional={f: JSON_VALUE for f in FIELDS}),
    st.dictionaries(st.text(max_size=20), JSON_VALUE, max_size=6),
    # Plausible bodies, so the fuzzer also reaches what comes after validation.
    st.fixed_dictionaries({"voice_id": st.sampled_from(["alba", "nope", "", "alba\x00"]),
                           "text": TEXT},
                          optional={"audio_format": st.sampled_from(["wav", "ogg", "WAV", "flac"]),
                                    "stream": JSON_SCALAR}),
    st.fixed_dictionaries({"uid": TEXT}, optional={"admin": JSON_SCALAR, "password": TEXT}),
)


def _dump(value: Any) -> bytes:
    """JSON text, with lone surrogates escaped (json.dumps does) and NaN allowed."""
    return json.dumps(value).encode("utf-8")


def _json_body(value: Any) -> io.BytesIO:
    """A JSON request body as a stream (aiohttp warns about large raw bytes bodies)."""
    return io.BytesIO(_dump(value))


@st.composite
def malformed_json(draw: st.DrawFn) -> bytes:
    """Bodies that are not JSON, or are JSON in ways a strict parser might choke on."""
    kind = draw(st.sampled_from(["truncated", "binary", "deep", "latin1", "bom", "big_number",
                                 "dup_keys", "nan", "trailing", "utf16", "huge_string"]))
    if kind == "truncated":
        text = _dump(draw(JSON_OBJECT))
        return text[: draw(st.integers(0, max(0, len(text) - 1)))]
    if kind == "binary":
        return draw(st.binary(max_size=200))
    if kind == "deep":
        depth = draw(st.integers(500, 50_000))
        opener = draw(st.sampled_from(['[', '{"a":']))
        closer = "]" if opener == "[" else "}"
        return (opener * depth + "1" + closer * depth).encode()
    if kind == "latin1":
        return '{"uid": "caf\xe9", "password": "\xff"}'.encode("latin-1")
    if kind == "bom":
        return b"\xef\xbb\xbf" + _dump(draw(JSON_OBJECT))
    if kind == "big_number":
        return b'{"uid": ' + b"9" * draw(st.integers(4000, 20_000)) + b"}"
    if kind == "dup_keys":
        return b'{"uid": "a", "uid": 1, "admin": true, "admin": "x"}'
    if kind == "nan":
        return b'{"uid": NaN, "admin": Infinity, "text": -Infinity}'
    if kind == "trailing":
        return _dump(draw(JSON_OBJECT)) + draw(st.sampled_from([b",", b"}", b"\x00", b" x"]))
    if kind == "utf16":
        return json.dumps(draw(JSON_OBJECT)).encode("utf-16")
    return b'{"text": "' + b"x" * draw(st.integers(10_000, 200_000)) + b'"}'


BODY = st.one_of(JSON_OBJECT.map(_dump), JSON_VALUE.map(_dump), malformed_json(), st.just(b""))
PATH_SEGMENT = st.one_of(
    TEXT.map(lambda s: quote(s[:300].encode("utf-8", "surrogatepass"), safe="")),
    st.sampled_from(["..", "%2e%2e", "%2F", "%00", "%ff%fe", "admin", "alba", "en",
                     "a'%20OR%20'1'%3D'1", "%25", "~", "%c0%af"]),
    st.integers(1000, 10_000).map(lambda n: "x" * n),
)
HEADER_TEXT = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0xFF,
                                             exclude_characters="\x7f"), max_size=200)
CONTENT_TYPES = st.sampled_from(["application/json", "text/plain", "application/json; charset=latin-1",
                                 "application/x-www-form-urlencoded", "multipart/form-data",
                                 "multipart/form-data; boundary=xx", "application/json; charset=utf-16",
                                 "", "*/*", "\u00e9/\u00e9"])


@st.composite
def headers(draw: st.DrawFn, token: str | None) -> dict[str, str]:
    """Odd headers: content types, encodings that lie, junk Authorization, junk request ids."""
    h: dict[str, str] = {}
    if draw(st.booleans()):
        h["Content-Type"] = draw(CONTENT_TYPES)
    if draw(st.integers(0, 4)) == 0:
        h["Content-Encoding"] = draw(st.sampled_from(["gzip", "deflate", "br", "zstd", "x-junk",
                                                      "identity"]))
    if draw(st.integers(0, 4)) == 0:
        h["Accept"] = draw(st.sampled_from(["text/html", "application/xml", "*/*;q=0", ""]))
    if draw(st.integers(0, 4)) == 0:
        h["X-Request-Id"] = draw(HEADER_TEXT)
    if draw(st.integers(0, 4)) == 0:
        h["X-Forwarded-For"] = draw(HEADER_TEXT)
    auth = draw(st.sampled_from(["token", "bearer-token", "junk", "none", "bearer-junk"])
                if token else st.sampled_from(["junk", "none", "bearer-junk"]))
    if auth == "token" and token:
        h["Authorization"] = token
    elif auth == "bearer-token" and token:
        h["Authorization"] = draw(st.sampled_from(["Bearer ", "bearer ", "BEARER  ", " Bearer\t"])) + token
    elif auth == "junk":
        h["Authorization"] = draw(HEADER_TEXT)
    elif auth == "bearer-junk":
        h["Authorization"] = "Bearer " + draw(HEADER_TEXT)
    return h


def _fill(path: str, draw: Callable[[Any], Any]) -> str:
    """A route path with each {placeholder} replaced by a generated, already-quoted segment."""
    out = path
    while "{" in out:
        start, end = out.index("{"), out.index("}")
        out = out[:start] + draw(PATH_SEGMENT) + out[end + 1:]
    return out


async def send(client: TestClient[Any, Any], method: str, path: str, body: bytes | None,
               hdrs: Mapping[str, str], query: Mapping[str, str] | None = None) -> None:
    """Send one request with an already-encoded path and check the answer."""
    url = URL(str(client.make_url("/")).rstrip("/") + path, encoded=True)
    if query:
        url = url.update_query(query)
    data = io.BytesIO(body) if body is not None else None
    try:
        async with client.session.request(method, url, data=data, headers=dict(hdrs),
                                          skip_auto_headers=("Content-Type",)) as resp:
            await check_answer(resp, method)
    except aiohttp.ClientResponseError as exc:
        # aiohttp's parser-level 400 (a URL over 8190 bytes, an undecodable body) carries a
        # body even to HEAD, which the client then rejects. A 400 all the same, and aiohttp's
        # own answer, not idlakd's: the server still serves (checked after every test).
        if not (method == "HEAD" and exc.status == 400):
            raise


def with_tokens(live: LiveApp, action: Callable[[dict[str, str]], Awaitable[None]]) -> None:
    """Run one example with fresh tokens."""
    async def go() -> None:
        await action(await live.tokens())
    live.run(go())


# The tests

ROUTE_LIST = [(m, p, access) for m, p, _, access in ROUTES]


@pytest.mark.parametrize("who", ["anonymous", "user", "admin"])
def test_every_route_with_generated_bodies_and_headers(live: LiveApp, who: str) -> None:
    """Each route of the table, with generated path segments, bodies and headers."""
    @FUZZ
    @given(route=st.sampled_from(ROUTE_LIST), data=st.data())
    def example(route: tuple[str, str, str], data: st.DataObject) -> None:
        method, path, _ = route

        async def action(tokens: dict[str, str]) -> None:
            token = tokens.get(who)
            hdrs = data.draw(headers(token))
            body = data.draw(BODY)
            await send(live.client, method, _fill(path, data.draw), body, hdrs)
        with_tokens(live, action)

    example()


def test_odd_methods_and_paths(live: LiveApp) -> None:
    """Any method on any path (known or not), junk query strings: 404/405 JSON, never 5xx."""
    paths = st.one_of(st.sampled_from([p for _, p, _ in ROUTE_LIST]),
                      st.lists(PATH_SEGMENT, min_size=1, max_size=4).map(lambda s: "/" + "/".join(s)))

    @FUZZ
    @given(method=st.sampled_from(METHODS), path=paths, data=st.data(),
           query=st.dictionaries(HEADER_TEXT.filter(bool), st.text(max_size=50), max_size=4))
    def example(method: str, path: str, data: st.DataObject, query: dict[str, str]) -> None:
        async def action(tokens: dict[str, str]) -> None:
            filled = _fill(path, data.draw)
            body = data.draw(st.one_of(st.none(), BODY))
            await send(live.client, method, filled, body, data.draw(headers(tokens["admin"])),
                       query)
        with_tokens(live, action)

    example()


def test_voice_queries_by_query_string(live: LiveApp) -> None:
    """GET /voices?language=&accent=&gender= with generated values and repeated keys."""
    @FUZZ
    @given(params=st.lists(st.tuples(st.sampled_from(["language", "accent", "gender", "x"]),
                                     TEXT.map(lambda s: s[:200])), max_size=5))
    def example(params: list[tuple[str, str]]) -> None:
        async def action() -> None:
            async with live.client.get("/voices", params=params) as resp:
                await check_answer(resp)
                if resp.status == 200:
                    assert all(set(v) >= {"voice_id", "id", "name", "language", "accent", "gender"}
                               for v in (await resp.json())["voices"])
        live.run(action())

    example()


def test_login_with_generated_credentials(live: LiveApp) -> None:
    """POST /auth never succeeds for a guessed password and never crashes on odd credentials."""
    @FUZZ
    @given(uid=st.one_of(TEXT, JSON_VALUE), password=st.one_of(TEXT, JSON_VALUE))
    def example(uid: Any, password: Any) -> None:
        async def action() -> None:
            async with live.client.post("/auth", data=_json_body({"uid": uid, "password": password}),
                                        headers={"Content-Type": "application/json"}) as resp:
                await check_answer(resp, "POST")
                assert resp.status in (401, 413, 422, 429), resp.status
        live.run(action())

    example()


def test_users_admin_fields(live: LiveApp) -> None:
    """POST /users as admin with generated uids and admin flags: 200 only for a valid uid."""
    @FUZZ
    @given(body=st.fixed_dictionaries({}, optional={"uid": st.one_of(TEXT, JSON_SCALAR),
                                                    "admin": JSON_SCALAR}))
    def example(body: dict[str, Any]) -> None:
        async def action(tokens: dict[str, str]) -> None:
            async with live.client.post("/users", data=_json_body(body), headers={
                    "Authorization": f"Bearer {tokens['admin']}",
                    "Content-Type": "application/json"}) as resp:
                await check_answer(resp, "POST")
                if resp.status == 200:
                    created = await resp.json()
                    uid = created["uid"]
                    assert isinstance(uid, str) and 0 < len(uid) <= 64 and "/" not in uid
                    # The created user is reachable by its own path, whatever its characters.
                    async with live.client.request(
                            "POST", URL(f"/users/{quote(uid, safe='')}/admin", encoded=True),
                            headers={"Authorization": f"Bearer {tokens['admin']}"}) as toggled:
                        await check_answer(toggled, "POST")
                        assert toggled.status == 200, await toggled.text()
        with_tokens(live, action)

    example()


SPEECH_TEXT = st.one_of(
    TEXT,
    st.text(alphabet=string.punctuation, min_size=1, max_size=200),          # only punctuation
    st.integers(100, 5000).map(lambda n: "Supercalifragilistic" * (n // 20)),  # one long word
    st.sampled_from([
        "<speak><s>unclosed",                                                   # malformed markup
        '<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 '
        '"&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">]><speak>&lol2;</speak>',
        '<?xml version="1.0"?><!DOCTYPE x [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>'
        "<speak>&xxe;</speak>",
        "&amp;&lt;&#0;&#xFFFFFFFF;]]>",
        "\x00\x01\x02 hello \x7f",
        "\u202e\u0301\ufeff",
    ]),
)


def test_speech_fields_and_text(live: LiveApp) -> None:
    """POST /speech with generated fields and hostile texts: 4xx JSON, or audio; never 5xx."""
    @settings(FUZZ, max_examples=25)
    @given(voice=st.sampled_from(["alba", "nope", ""]), text=SPEECH_TEXT,
           fmt=st.sampled_from(["wav", "mp3", "flac", None]))
    def example(voice: str, text: str, fmt: str | None) -> None:
        async def action(tokens: dict[str, str]) -> None:
            body: dict[str, Any] = {"voice_id": voice, "text": text[:3000], "stream": False}
            if fmt is not None:
                body["audio_format"] = fmt
            async with live.client.post("/speech", data=_json_body(body), headers={
                    "Authorization": f"Bearer {tokens['user']}",
                    "Content-Type": "application/json"}) as resp:
                await check_answer(resp, "POST")
                if resp.status == 200:
                    assert resp.headers["Content-Type"].startswith("audio/")
                    assert len(await resp.read()) > 0
        with_tokens(live, action)

    example()


def _raw_exchange(port: int, request: bytes) -> bytes:
    """Send raw bytes to the server and return whatever it answers before closing (bounded)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(request)
        sock.shutdown(socket.SHUT_WR)
        chunks: list[bytes] = []
        try:
            while sum(map(len, chunks)) < 1_000_000:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
        except (TimeoutError, ConnectionResetError):
            pass
    return b"".join(chunks)


@pytest.mark.parametrize("raw", [
    b"GARBAGE\r\n\r\n",
    b"GET /voices HTTP/1.1\r\nHost: x\r\nBad Header Without Colon\r\n\r\n",
    b"GET /voices HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n",
    b"GET /" + b"a" * 20_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    b"POST /auth HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"uid\"",
    b"POST /auth HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
    b"POST /auth HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    b"POST /auth HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n",
    b"GET /voices/\xff\xfe HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /voices HTTP/9.9\r\nHost: x\r\n\r\n",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",  # a TLS ClientHello on the plain port
], ids=["garbage", "no-colon", "huge-header", "huge-url", "short-body", "negative-length",
        "bad-chunk", "te-and-cl", "non-utf8-path", "http-9.9", "tls-hello"])
def test_raw_protocol_garbage_is_refused_and_server_keeps_serving(live: LiveApp, raw: bytes) -> None:
    """Malformed HTTP below the app: a 4xx (or a closed connection), never a 5xx; then it serves."""
    port = live.client.port
    assert port is not None
    answer = live.run(asyncio.to_thread(_raw_exchange, port, raw))
    if answer:
        status_line = answer.split(b"\r\n", 1)[0]
        assert re.match(rb"HTTP/1\.[01] 4\d\d ", status_line), status_line
    # Application-level answers (the request line parsed) are the JSON error shape.
    if answer.startswith(b"HTTP/1.1 4") and b"\r\nX-Request-Id" in answer:
        assert b"\r\nContent-Type: application/json" in answer, answer[:500]


# Regressions found by the generated tests above, pinned so they never depend on the draw.

async def test_body_with_lying_content_encoding_is_400_json(client: TestClient[Any, Any]) -> None:
    """Content-Encoding: gzip on plain JSON used to escape as a 500 from request.read()."""
    resp = await client.post("/auth", data=io.BytesIO(b'{"uid": "a", "password": "b"}'),
                             headers={"Content-Type": "application/json", "Content-Encoding": "gzip"})
    await check_answer(resp, "POST")
    assert resp.status == 400


async def test_a_broken_compressed_body_does_not_break_the_next_request(
        client: TestClient[Any, Any]) -> None:
    """A body that does not decompress, answered unread (401) or refused (400), closes its
    connection: the keep-alive client's next request used to die with it (aiohttp drains
    the unread body after the answer, and the decompression error ends that drain)."""
    broken = {"Content-Encoding": "gzip", "Content-Type": "application/json"}
    for method, path in (("POST", "/auth"), ("GET", "/auth/usage"), ("POST", "/speech")):
        resp = await client.request(method, path, data=io.BytesIO(b"{}"), headers=broken)
        await check_answer(resp, method)
        assert resp.headers["Connection"] == "close"
        assert await _still_serving(client)


@pytest.mark.parametrize("bad", ["a\ud800", "a\x00"])
@pytest.mark.parametrize("field", ["uid", "password"])
async def test_lone_surrogate_in_a_string_field_is_422(client: TestClient[Any, Any],
                                                       field: str, bad: str) -> None:
    """JSON may escape a lone surrogate ("\\ud800"), which SQLite cannot bind, or NUL
    ("\\u0000"), which PostgreSQL's text cannot hold: both used to be 500s."""
    body = {"uid": "admin", "password": "x"} | {field: bad}
    resp = await client.post("/auth", data=_json_body(body),
                             headers={"Content-Type": "application/json"})
    await assert_error(resp, 422, f"{field}: Not a valid string.")


async def test_nul_in_a_path_is_404(client: TestClient[Any, Any], admin_token: str) -> None:
    """A NUL ("%00") in a path names nothing on either store (PostgreSQL's text cannot hold
    one: it used to be a 500 there)."""
    for method, path in (("DELETE", "/users/a%00b"), ("GET", "/v1/jobs/a%00b"),
                         ("GET", "/voices/a%00b"), ("GET", "/languages/a%00b/accents"),
                         ("DELETE", "/auth/keys/a%00b"), ("GET", "/users/a%00b/usage")):
        resp = await client.request(method, URL(path, encoded=True), headers=bearer(admin_token))
        if path.startswith("/v1/"):  # OpenAI's error shape there
            assert resp.status == 404 and "error" in await resp.json()
        else:
            await assert_error(resp, 404)


# Schemathesis, driven by the daemon's own /openapi.json (a real `idlakd serve` on loopback)

import schemathesis  # noqa: E402
import schemathesis.checks  # noqa: E402
import urllib.request  # noqa: E402

from tests.helpers.daemon import Daemon, start_daemon  # noqa: E402
from tests.helpers.postgres import run_sql, suite_database  # noqa: E402


@pytest.fixture(scope="module")
def api_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Daemon, bytes]]:
    """A daemon with throttling out of the way (the fuzzer fails many logins); and its secret."""
    tmp = tmp_path_factory.mktemp("schemathesis")
    daemon = start_daemon(tmp, login_max_failures="1000000",
                          login_max_failures_per_address="1000000", max_text_length="300")
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(daemon.url + "/healthz", timeout=1) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            assert daemon.process.poll() is None and time.monotonic() < deadline, daemon.log()
            time.sleep(0.1)
        password = daemon.admin_password()
        request = urllib.request.Request(daemon.url + "/auth", method="POST",
                                         data=json.dumps({"uid": "admin", "password": password}).encode())
        with urllib.request.urlopen(request, timeout=10) as resp:
            token = json.load(resp)["access_token"]
        # A second admin the fuzzer is unlikely to guess, so it cannot delete or demote it.
        request = urllib.request.Request(
            daemon.url + "/users", method="POST", headers={"Authorization": f"Bearer {token}"},
            data=json.dumps({"uid": "fuzz-admin-7f3a", "admin": True}).encode())
        with urllib.request.urlopen(request, timeout=10):
            pass
        # The token secret: its file, or the one the suite's PostgreSQL database keeps.
        url = suite_database(tmp / "state")
        secret = (bytes(run_sql(DatabaseUrl(url), "SELECT secret FROM token_secret")[0][0])
                  if url else (tmp / "state" / "secret.key").read_bytes())
        yield daemon, secret.strip()
        daemon.signal()
        assert daemon.process.wait(30) == 0, daemon.log()[-2000:]
        assert "Unhandled error" not in daemon.log(), daemon.log()[-4000:]
    finally:
        daemon.kill()


@pytest.fixture(scope="module")
def api_schema(api_daemon: tuple[Daemon, bytes]) -> Any:
    """The served OpenAPI document."""
    return schemathesis.openapi.from_url(api_daemon[0].url + "/openapi.json")


def test_openapi_operations_never_fail_and_match_the_document(
        api_schema: Any, api_daemon: tuple[Daemon, bytes]) -> None:
    """Every documented operation, generated from its schema (valid and invalid data), with an
    admin token: no 5xx; status codes, content types and bodies as documented; errors {"message"}.

    (Schemathesis's own pytest plugin does not run under pytest 9 yet, so the operations are
    driven here with its Hypothesis strategies.)
    """
    import jwt
    from schemathesis import GenerationMode

    daemon, secret = api_daemon
    checks = [schemathesis.checks.not_a_server_error, schemathesis.checks.status_code_conformance,
              schemathesis.checks.content_type_conformance,
              schemathesis.checks.response_schema_conformance]
    operations = [result.ok() for result in api_schema.get_all_operations()]
    undocumented = {f"{m} {p}" for m, p, _, _ in ROUTES} - {op.label for op in operations}
    assert undocumented <= {"GET /docs", "GET /openapi.json"}, undocumented
    failures: list[str] = []
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            @settings(max_examples=6, deadline=None, database=None,
                      phases=[Phase.explicit, Phase.generate],  # no shrinking: bounded time
                      suppress_health_check=list(HealthCheck))
            @given(case=operation.as_strategy(generation_mode=mode))
            def example(case: Any) -> None:
                now = int(time.time())
                token = jwt.encode({"sub": "fuzz-admin-7f3a", "iat": now, "nbf": now,
                                    "exp": now + 600, "jti": os.urandom(8).hex()},
                                   secret, algorithm="HS256")
                response = case.call(base_url=daemon.url,
                                     headers={"Authorization": f"Bearer {token}"}, timeout=30)
                case.validate_response(response, checks=checks)
                if response.status_code >= 400:
                    headers = {k.lower(): v for k, v in response.headers.items()}
                    content_type = headers.get("content-type")
                    if isinstance(content_type, list):
                        content_type = content_type[0]
                    assert content_type == "application/json", (response.status_code, headers)
                    body = response.json()
                    if case.path.startswith("/v1/"):  # OpenAI's door: OpenAI's error shape
                        assert set(body) == {"error"}, body
                        body = {"message": body["error"]["message"]}
                    assert isinstance(body.get("message"), str), body
                    assert set(body) <= {"message", "code"}, body

            try:
                example()
            except Unsatisfiable:
                pass  # no parameters to make invalid (e.g. GET /languages): nothing to send
            except Exception as exc:  # collect every operation's finding, then fail once
                failures.append(f"{operation.label} [{mode.value}]: {exc}"[:1500])
    assert not failures, "\n\n".join(failures)


BILLION_LAUGHS = ('<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
                  '<!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">'
                  '<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]>'
                  '<speak>&lol3;</speak>')
EXTERNAL_ENTITY = ('<?xml version="1.0"?><!DOCTYPE speak [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>'
                   '<speak>&xxe;</speak>')


@pytest.mark.parametrize("text", [
    BILLION_LAUGHS, EXTERNAL_ENTITY, "<speak>never closed", "<speak><s>crossed</speak></s>",
    '<!doctype speak><speak>x</speak>', "<speak>&undefined;</speak>", "  <speak>\x00</speak>",
], ids=["billion-laughs", "external-entity", "unclosed", "crossed", "doctype", "undefined-entity",
        "nul"])
async def test_unsafe_or_malformed_markup_is_refused_before_any_engine(
        client: TestClient[Any, Any], user_token: str, text: str) -> None:
    """Markup with declarations or that is not well-formed: 422 "text: ...", nothing synthesised."""
    resp = await client.post("/speech", json={"voice_id": "alba", "text": text},
                             headers={"Authorization": f"Bearer {user_token}"})
    body = await assert_error(resp, 422)
    assert body["message"].startswith("text: "), body


@pytest.mark.parametrize("text", [
    "Read this: " + EXTERNAL_ENTITY,                   # not markup: spoken as plain, escaped text
    "\ufeff" + BILLION_LAUGHS,
    "Pneumonoultramicroscopicsilicovolcanoconiosis" * 40,  # one very long word
    "!?.,;:--...!!!",                                 # only punctuation
    "\u202e\u0627\u0644\u0633\u0644\u0627\u0645 \U0001f600 e\u0301",
])
async def test_hostile_plain_text_is_neutralised_and_spoken(
        client: TestClient[Any, Any], user_token: str, text: str) -> None:
    """Plain text that merely contains markup, or is odd: a complete audio answer, never a 5xx."""
    resp = await client.post("/speech", json={"voice_id": "alba", "text": text, "stream": False},
                             headers={"Authorization": f"Bearer {user_token}"})
    if resp.status != 200:
        body = await assert_error(resp, 422)  # "nothing to say" is a fair answer to punctuation
        assert body["message"].startswith("text: "), body
        return
    assert resp.headers["Content-Type"] == "audio/wav"
    audio = await resp.read()
    assert audio[:4] == b"RIFF" and len(audio) == int(resp.headers["Content-Length"])


# The admin page's routes: HTML pages by design, but never a 5xx either

FORM_TEXT = st.one_of(st.text(alphabet=st.characters(codec="utf-8"), max_size=40),
                      st.lists(EDGE_CHARS.filter(lambda c: "\ud800" > c or c > "\udfff"),
                               max_size=10).map("".join),
                      st.integers(1000, 5000).map(lambda n: "x" * n),
                      st.sampled_from(["on", "off", "true", "admin", "alba", "en", "gb", "male",
                                       "espeak", "tangle", "/etc", "../../etc", "{}", "[]"]))
FORM_FIELDS = ("csrf_token", "uid", "admin", "password", "id", "name", "gender", "engine", "dir",
               "lang", "acc", "options", "voice_id", "text", "audio_format")


def test_admin_page_routes_with_generated_forms(live: LiveApp) -> None:
    """Every admin route, signed in (with the real CSRF token, or a wrong one) or not."""
    from idlakd.web.routes import ADMIN_ROUTES
    from tests.helpers.admin import csrf_of

    async def sign_in() -> str:
        """Make admin's password known, sign in, return a CSRF token of the session."""
        app = live.app
        if not await app[store_key].add_user("admin", await app[passwords_key].hash("pw-admin"), True):
            await app[store_key].set_password_hash("admin", await app[passwords_key].hash("pw-admin"))
            await app[store_key].set_admin("admin", True)
        page = await (await live.client.get("/admin/login")).text()
        resp = await live.client.post("/admin/login", allow_redirects=False, data={
            "csrf_token": csrf_of(page), "uid": "admin", "password": "pw-admin"})
        assert resp.status == 303, await resp.text()
        return csrf_of(await (await live.client.get("/admin/users")).text())

    @FUZZ
    @given(route=st.sampled_from([(m, p) for m, p, _, _ in ADMIN_ROUTES]), data=st.data(),
           signed_in=st.booleans(), right_csrf=st.booleans())
    def example(route: tuple[str, str], data: st.DataObject, signed_in: bool,
                right_csrf: bool) -> None:
        method, path = route

        async def action() -> None:
            live.client.session.cookie_jar.clear()
            csrf = await sign_in() if signed_in else "none"
            form = data.draw(st.fixed_dictionaries({}, optional={f: FORM_TEXT for f in FORM_FIELDS}))
            if right_csrf:
                form["csrf_token"] = csrf
            url = URL(str(live.client.make_url("/")).rstrip("/") + _fill(path, data.draw),
                      encoded=True)
            kwargs: dict[str, Any] = {"allow_redirects": False}
            if method == "POST":
                if path == "/admin/speech":
                    kwargs |= {"data": io.BytesIO(_dump(form)),
                               "headers": {"X-CSRF-Token": csrf if right_csrf else "x",
                                           "Content-Type": "application/json"}}
                else:
                    kwargs["data"] = form
            async with live.client.session.request(method, url, **kwargs) as resp:
                body = await resp.read()
                assert resp.status < 500, (resp.status, body[:500])
                if path in ("/admin/speech",) and resp.status >= 400:
                    assert resp.headers["Content-Type"] == "application/json"
        live.run(action())

    example()
