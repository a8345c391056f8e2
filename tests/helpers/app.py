"""The app-level test helpers: a config on a temp dir, login, the one error-shape check."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Awaitable, Callable

from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient

from idlakd.accounts.tokens import load_secret
from idlakd.config import Config, load_config
from idlakd.store.factory import open_store
from tests.helpers.postgres import suite_database

REPO = Path(__file__).resolve().parents[2]


ClientFactory = Callable[..., Awaitable[TestClient[Any, Any]]]


def make_config(tmp_path: Path, **overrides: str) -> Config:
    """A config on tmp_path with fast bcrypt, no pre-warm and the repository's voiceconfig.json
    (and the suite's PostgreSQL database of its state directory with --store=postgresql)."""
    values = {
        "state_dir": str(tmp_path / "state"),
        "voice_config": str(REPO / "voiceconfig.json"),
        "bcrypt_rounds": "4",
        "worker_idle_seconds": "30",
        "synthesis_timeout_seconds": "20",
        # Off unless a test asks (tests/test_prewarm.py): tests count the workers their
        # requests start, and the suite would otherwise start 7 workers per app it opens.
        "prewarm_workers": "false",
    }
    values.update(overrides)
    if "database" not in overrides:
        url = suite_database(Path(values["state_dir"]))
        if url is not None:
            values["database"] = url
    return load_config(path=None, env={}, overrides=values)




async def token_secret(config: Config) -> bytes:
    """The key the app signs tokens with: its secret file, or the one its PostgreSQL store keeps."""
    async with open_store(config) as store:
        return (await load_secret(config.secret_file, store)).strip()


async def login(client: TestClient[Any, Any], uid: str, password: str) -> str:
    """POST /auth and return the access token."""
    resp = await client.post("/auth", json={"uid": uid, "password": password})
    assert resp.status == 200, await resp.text()
    token = (await resp.json())["access_token"]
    assert isinstance(token, str)
    return token




def bearer(token: str) -> dict[str, str]:
    """Authorization header for a token."""
    return {"Authorization": f"Bearer {token}"}




async def assert_error(resp: ClientResponse, status: int, message: str | None = None,
                       contains: str | None = None) -> dict[str, Any]:
    """The one error shape: status, exact JSON content type, {"message"}, a request id."""
    body_text = await resp.text()
    assert resp.status == status, body_text
    assert resp.headers["Content-Type"] == "application/json", resp.headers["Content-Type"]
    assert resp.headers.get("X-Request-Id")
    body = await resp.json()
    assert set(body) <= {"message", "code"} and isinstance(body["message"], str), body
    assert "Traceback" not in body["message"]
    if message is not None:
        assert body["message"] == message
    if contains is not None:
        assert contains in body["message"]
    if status == 401:
        assert resp.headers.get("WWW-Authenticate") == "Bearer"
    return dict(body)
