"""docs/api.md, GET /openapi.json and the app's router agree; GET /docs renders it with nothing from outside."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from idlakd.accounts import logins, passwords, tokens, uids, users
from idlakd.accounts.throttle import THROTTLED, TOO_MANY_ATTEMPTS
from idlakd.errors import Busy, DatabaseUnwritable
from idlakd.synth.document import DocumentError, parse
from idlakd.synth.synthesizer import SYNTHESIS_FAILED
from idlakd.web import validation
from idlakd.web.api import speech as speech_api
from idlakd.web.api import voices as voices_api
from idlakd.web.http import HTTP_MESSAGES
from idlakd.web.ops.docs_page import DOCS_SCRIPT
from idlakd.web.ops.openapi import spec

REPO = Path(__file__).resolve().parent.parent
API_MD = REPO / "docs" / "api.md"
METHODS = ("get", "post", "put", "patch", "delete")
# The admin page is HTML for browsers (forms, redirects), not part of the JSON API.
ADMIN_PREFIX = "/admin"
# Statuses docs/api.md states once for every route instead of in each table.
EVERY_ROUTE = {"500"}
ACCESS = {"public", "user", "admin", "local", "socket"}


@dataclasses.dataclass(frozen=True)
class DocRoute:
    """One `### METHOD /path` section of docs/api.md."""

    access: str
    statuses: frozenset[str]


def api_md() -> str:
    """docs/api.md with table-escaped bars unescaped, so messages read as sent."""
    return API_MD.read_text().replace("\\|", "|")


def table_after(body: str, header: str) -> list[list[str]]:
    """The cells of the first markdown table whose header row starts with `| header |`."""
    lines = body.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {header} |"))
    rows = []
    for line in lines[start + 2:]:  # past the header and its |---| line
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in re.split(r"(?<!\\)\|", line)[1:-1]])
    return rows


def doc_routes() -> dict[tuple[str, str], DocRoute]:
    """(method, path) -> access and statuses, from docs/api.md's route sections."""
    found: dict[tuple[str, str], DocRoute] = {}
    for section in re.split(r"^### ", API_MD.read_text(), flags=re.MULTILINE)[1:]:
        heading, _, body = section.partition("\n")
        match = re.fullmatch(r"(GET|POST|PUT|PATCH|DELETE) (/\S*)", heading.strip())
        if match is None:
            continue  # a section of the common rules
        key = (match.group(1).lower(), match.group(2))
        assert key not in found, f"{heading} is documented twice"
        access = re.search(r"^\*\*Access:\*\* (\w+)\.", body, re.MULTILINE)
        assert access, f"{heading}: no **Access:** line"
        statuses = frozenset(row[0] for row in table_after(body, "status"))
        assert all(re.fullmatch(r"[1-5]\d\d", s) for s in statuses), (heading, statuses)
        found[key] = DocRoute(access.group(1), statuses)
    return found


def doc_admin_routes() -> set[tuple[str, str]]:
    """(method, path) of the admin page's table in docs/api.md."""
    return {(row[0].lower(), row[1].strip("`")) for row in table_after(API_MD.read_text(), "method")}


def router_routes(app: web.Application) -> set[tuple[str, str]]:
    """(method, path template) of every route the app answers, HEAD twins aside."""
    found = set()
    for route in app.router.routes():
        resource = route.resource
        if resource is None or route.method in ("HEAD", "*"):
            continue
        found.add((route.method.lower(), resource.canonical))
    return found


def api_routes(app: web.Application) -> set[tuple[str, str]]:
    """The router's routes of the JSON API (the admin page aside)."""
    return {(m, p) for m, p in router_routes(app) if not p.startswith(ADMIN_PREFIX)}


def openapi_operations() -> dict[tuple[str, str], dict[str, Any]]:
    """(method, path) -> operation of the OpenAPI document."""
    return {(method, path): item[method] for path, item in spec()["paths"].items()
            for method in METHODS if method in item}


def test_openapi_routes_are_the_routers(app: web.Application) -> None:
    served, described = api_routes(app), set(openapi_operations())
    assert not served - described, f"routes missing from /openapi.json: {sorted(served - described)}"
    assert not described - served, f"/openapi.json has routes the app lacks: {sorted(described - served)}"


def test_api_md_documents_the_openapi_routes() -> None:
    documented, described = set(doc_routes()), set(openapi_operations())
    assert len(documented) >= 19
    assert not described - documented, f"missing from docs/api.md: {sorted(described - documented)}"
    assert not documented - described, f"not in /openapi.json: {sorted(documented - described)}"


def test_api_md_and_openapi_have_the_same_statuses() -> None:
    operations = openapi_operations()
    differ = {}
    for key, route in doc_routes().items():
        described = set(operations[key]["responses"])
        if set(route.statuses) | EVERY_ROUTE != described:
            differ[key] = (sorted(route.statuses), sorted(described))
    assert not differ, f"(docs/api.md, /openapi.json) statuses differ: {differ}"


def test_api_md_access_matches_openapi_security() -> None:
    operations = openapi_operations()
    for key, route in doc_routes().items():
        assert route.access in ACCESS, (key, route.access)
        needs_token = route.access in ("user", "admin", "socket")
        assert bool(operations[key]["security"]) == needs_token, key
        assert "401" in route.statuses or not needs_token, key


def test_api_md_lists_the_admin_page_routes(app: web.Application) -> None:
    served = {(m, p) for m, p in router_routes(app) if p.startswith(ADMIN_PREFIX)}
    assert doc_admin_routes() == served


def test_every_openapi_error_message_is_in_api_md() -> None:
    text = api_md()
    missing = set()
    for key, operation in openapi_operations().items():
        for status, response in operation["responses"].items():
            for example in response.get("content", {}).get("application/json", {}).get(
                    "examples", {}).values():
                if example["value"]["message"] not in text:
                    missing.add((key, status, example["value"]["message"]))
    assert not missing, sorted(missing)


def test_api_md_quotes_the_codes_messages_exactly() -> None:
    text = api_md()
    messages = [
        tokens.MISSING_HEADER, tokens.INVALID_TOKEN, tokens.EXPIRED_TOKEN, tokens.NO_SUCH_USER,
        tokens.ADMIN_REQUIRED, logins.LOGIN_INCORRECT, passwords.LOGINS_BUSY, THROTTLED,
        TOO_MANY_ATTEMPTS, validation.MISSING, validation.NOT_STRING, validation.NOT_BOOLEAN,
        validation.NOT_CHOICE, validation.INVALID_JSON, validation.NOT_OBJECT, f"uid: {uids.UID_RULE}",
        f"Longer than maximum length {validation.MAX_FIELD_LENGTH}.",
        users.USER_EXISTS, users.NO_SUCH_USER, users.ONLY_ADMIN,
        speech_api.VOICE_NOT_FOUND, speech_api.SHUTTING_DOWN, voices_api.ACCENT_NEEDS_LANGUAGE,
        SYNTHESIS_FAILED, Busy().message, DatabaseUnwritable().message, *HTTP_MESSAGES.values(),
    ]
    assert not [m for m in messages if m not in text]


MARKUP_VALUES = {"time": "1s", "strength": "weak", "rate": "fast", "pitch": "+2st",
                 "volume": "+3dB", "level": "strong", "interpret-as": "characters", "name": "m",
                 "xml:lang": "en-GB"}
# Attributes an element cannot go without.
MARKUP_REQUIRED = {"say-as": "interpret-as", "mark": "name"}


def test_api_md_markup_allowlist_is_what_the_parser_accepts() -> None:
    rows = table_after(API_MD.read_text(), "element")
    assert len(rows) >= 10
    for elements_cell, attributes_cell in rows:
        for element in re.findall(r"`([\w-]+)`", elements_cell):
            for attribute in re.findall(r"`([\w:-]+)`", attributes_cell) or [""]:
                names = {attribute, MARKUP_REQUIRED.get(element, "")} - {""}
                extra = "".join(f' {name}="{MARKUP_VALUES.get(name, "x")}"' for name in names)
                document = parse(f"<speak><{element}{extra}>Hello there.</{element}></speak>")
                assert document.chunks, (element, attribute)
    for refused in ("<speak><audio src='x'/>Hi.</speak>", "<speak><p style='x'>Hi.</p></speak>"):
        with pytest.raises(DocumentError):
            parse(refused)


def _resolve(document: dict[str, Any], ref: str) -> Any:
    """Follow a local $ref."""
    node: Any = document
    for part in ref.removeprefix("#/").split("/"):
        node = node[part]
    return node


def test_document_is_well_formed() -> None:
    document = spec()
    assert document["openapi"].startswith("3.1")
    refs = re.findall(r'"\$ref": "([^"]+)"', json.dumps(document))
    assert refs and all(_resolve(document, ref) for ref in refs)
    for path, item in document["paths"].items():
        params = set(re.findall(r"{(\w+)}", path))
        for method in METHODS:
            if method not in item:
                continue
            op = item[method]
            assert op["summary"] and op["responses"], (method, path)
            assert "500" in op["responses"]
            declared = {p["name"] for p in op.get("parameters", []) if p["in"] == "path"}
            assert declared == params, (method, path)
            for status, response in op["responses"].items():
                assert re.fullmatch(r"[1-5]\d\d", status) and response["description"]
                if status >= "400":
                    schema = response["content"]["application/json"]["schema"]
                    # OpenAI's door answers its errors in OpenAI's shape.
                    shape = "OpenAIError" if path.startswith("/v1/") else "Error"
                    assert schema == {"$ref": f"#/components/schemas/{shape}"}, (method, path, status)
            if op["security"]:
                assert "401" in op["responses"], (method, path)


async def test_openapi_json_is_served(client: TestClient[Any, Any]) -> None:
    resp = await client.get("/openapi.json")
    assert resp.status == 200 and resp.headers["Content-Type"] == "application/json"
    assert await resp.json() == spec()


async def test_docs_page_loads_nothing_from_outside(client: TestClient[Any, Any]) -> None:
    resp = await client.get("/docs")
    assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/html")
    html = await resp.text()
    csp = resp.headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "connect-src 'self'" in csp
    digest = base64.b64encode(hashlib.sha256(DOCS_SCRIPT.encode()).digest()).decode()
    assert f"'sha256-{digest}'" in csp, "the inline script must be the one the policy allows"
    assert not re.search(r"(?:src|href)\s*=\s*[\"']?(?:https?:)?//", html, re.IGNORECASE)
    assert not re.search(r"https?://", html)
    assert "innerHTML" not in html  # rendered with textContent only
    assert 'fetch("openapi.json"' in html


@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium not installed")
async def test_docs_page_renders_in_a_browser(client: TestClient[Any, Any], tmp_path: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        "chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=10000", "--dump-dom",
        str(client.make_url("/docs")),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout=60)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    dom = out.decode()
    main = dom[dom.index('<main id="api">'):dom.index("</main>")]
    assert "Could not load" not in main and "Loading" not in main, main[:500]
    dom = main
    assert "/users/{uid}/password" in dom and "Server is busy, try again later" in dom
    assert dom.count('class="op ') == len(openapi_operations())
