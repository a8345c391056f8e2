"""GET /openapi.json stays true to the app and the contract; GET /docs renders it with nothing from outside."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from idlakd.web.ops.docs_page import DOCS_SCRIPT
from idlakd.web.ops.openapi import spec

CONTRACT = Path("/work/shared/api-contract.md")
REPO = Path(__file__).resolve().parent.parent
if not CONTRACT.exists():
    CONTRACT = REPO.parent / "shared" / "api-contract.md"
METHODS = ("get", "post", "put", "patch", "delete")
# The admin page is HTML for browsers (forms, redirects), not part of the JSON API.
NOT_API_PREFIXES = ("/admin",)


def normalise(path: str) -> str:
    """'/users/<uid>' and '/users/{uid}' both become '/users/{}'."""
    return re.sub(r"[<{][^>}]*[>}]", "{}", path.split("?")[0])


def registered_routes(app: web.Application) -> set[tuple[str, str]]:
    """(method, path template) of every route the app answers, HEAD twins and the admin page aside."""
    found = set()
    for route in app.router.routes():
        resource = route.resource
        if resource is None or route.method in ("HEAD", "*"):
            continue
        path = resource.canonical
        if path.startswith(NOT_API_PREFIXES):
            continue
        found.add((route.method.lower(), path))
    return found


def documented_routes() -> set[tuple[str, str]]:
    """(method, path) of every operation in the OpenAPI document."""
    return {(method, path) for path, item in spec()["paths"].items()
            for method in METHODS if method in item}


def contract_routes() -> set[tuple[str, str]]:
    """(method, normalised path) of every route api-contract.md names."""
    text = CONTRACT.read_text()
    return {(m.lower(), normalise(p))
            for m, p in re.findall(r"`(GET|POST|PUT|PATCH|DELETE) (/[^`\s]*)`", text)}


def contract_messages() -> set[str]:
    """Every fixed message text the contract quotes."""
    text = CONTRACT.read_text()
    found = set(re.findall(r"`([A-Z][^`{}<>/:]* [^`{}<>/:]*)`", text))
    found |= set(re.findall(r'\{"message": "([^"<]+)"\}', text))
    found |= set(re.findall(r"`((?:gender|audio_format|admin): Not a valid [^`]+)`", text))
    return found


def test_every_registered_route_is_documented(app: web.Application) -> None:
    missing = registered_routes(app) - documented_routes()
    assert not missing, f"routes missing from /openapi.json: {sorted(missing)}"


def test_every_documented_route_exists(app: web.Application) -> None:
    extra = documented_routes() - registered_routes(app)
    assert not extra, f"/openapi.json documents routes the app does not have: {sorted(extra)}"


@pytest.mark.skipif(not CONTRACT.exists(), reason="api-contract.md not found")
def test_every_contract_route_and_message_is_documented(app: web.Application) -> None:
    documented = {(m, normalise(p)) for m, p in documented_routes()}
    routes = contract_routes()
    assert len(routes) >= 14
    assert routes <= documented, sorted(routes - documented)
    assert routes <= {(m, normalise(p)) for m, p in registered_routes(app)}
    text = json.dumps(spec())
    messages = contract_messages()
    assert len(messages) >= 18
    assert not [m for m in messages if m not in text], "messages of the contract not in the document"


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
                    assert schema == {"$ref": "#/components/schemas/Error"}, (method, path, status)
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
    assert dom.count('class="op ') == len(documented_routes())
