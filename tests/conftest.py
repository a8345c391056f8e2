"""Shared fixtures: a real app on a real SQLite file in a tmp dir, and the error-shape check."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable

import pytest
from aiohttp import ClientResponse, web
from aiohttp.test_utils import TestClient

from idlakd.web.app import create_app
from idlakd.config import Config, load_config

REPO = Path(__file__).resolve().parent.parent

ClientFactory = Callable[..., Awaitable[TestClient[Any, Any]]]

# Every password and token the suite handles, and every log line the in-process apps wrote:
# tests/test_secrets_never_logged.py (moved to the end of the run) checks none holds another.
# Both live on the one handler on the root logger, because this file is imported under two
# names (conftest and tests.conftest) and module globals would be two different sets.


class LogRecorder(logging.Handler):
    """Keeps each formatted record (with any traceback) of the whole run, and the secrets."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []
        self.secrets: set[str] = set()
        self.setFormatter(logging.Formatter("%(name)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


def log_recorder() -> LogRecorder:
    """The run's recorder (installed by pytest_configure)."""
    for handler in logging.getLogger().handlers:
        if type(handler).__name__ == "LogRecorder":
            return handler  # type: ignore[return-value]
    raise RuntimeError("the log recorder is not installed")


def remember_secret(value: str) -> str:
    """Record a password or token that must never appear in a log line."""
    log_recorder().secrets.add(value)
    return value


def pytest_configure(config: pytest.Config) -> None:
    """Record every INFO+ log line of idlakd and aiohttp during the run."""
    logging.getLogger().addHandler(LogRecorder())
    for name in ("idlakd", "aiohttp"):
        logging.getLogger(name).setLevel(logging.INFO)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run the log check last, after every other test produced its lines."""
    last = [i for i in items if i.nodeid.startswith("tests/test_secrets_never_logged.py")]
    items[:] = [i for i in items if i not in last] + last


def make_config(tmp_path: Path, **overrides: str) -> Config:
    """A config on tmp_path with fast bcrypt and the repository's voiceconfig.json."""
    values = {
        "state_dir": str(tmp_path / "state"),
        "voice_config": str(REPO / "voiceconfig.json"),
        "bcrypt_rounds": "4",
        "worker_idle_seconds": "30",
        "synthesis_timeout_seconds": "20",
    }
    values.update(overrides)
    return load_config(path=None, env={}, overrides=values)


@pytest.fixture
def config(tmp_path: Path) -> Config:
    """The default test configuration."""
    return make_config(tmp_path)


@pytest.fixture
def app(config: Config) -> web.Application:
    """The real application (not started yet)."""
    return create_app(config)


@pytest.fixture
async def client(aiohttp_client: ClientFactory, app: web.Application,
                 capsys: pytest.CaptureFixture[str]) -> TestClient[Any, Any]:
    """A client of the started application (capsys is active first, to catch the console)."""
    return await aiohttp_client(app)


@pytest.fixture
def admin_password(client: TestClient[Any, Any], capsys: pytest.CaptureFixture[str]) -> str:
    """The first admin's password, read from what the daemon printed on first start."""
    out = capsys.readouterr().out
    match = re.search(r"<User admin:([^:]+):True>", out)
    assert match, f"first start did not print the admin password: {out!r}"
    return remember_secret(match.group(1))


async def login(client: TestClient[Any, Any], uid: str, password: str) -> str:
    """POST /auth and return the access token."""
    remember_secret(password)
    resp = await client.post("/auth", json={"uid": uid, "password": password})
    assert resp.status == 200, await resp.text()
    token = (await resp.json())["access_token"]
    assert isinstance(token, str)
    return remember_secret(token)


@pytest.fixture
async def admin_token(client: TestClient[Any, Any], admin_password: str) -> str:
    """A valid token of the first admin."""
    return await login(client, "admin", admin_password)


def bearer(token: str) -> dict[str, str]:
    """Authorization header for a token."""
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
async def user_token(client: TestClient[Any, Any], admin_token: str) -> str:
    """A valid token of a fresh non-admin user 'alice'."""
    resp = await client.post("/users", json={"uid": "alice"}, headers=bearer(admin_token))
    assert resp.status == 200
    return await login(client, "alice", (await resp.json())["password"])


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


@pytest.fixture
async def started_app_factory(
        aiohttp_client: ClientFactory) -> AsyncIterator[Callable[[Config], Awaitable[TestClient[Any, Any]]]]:
    """Start (and later stop) further apps on a given config, e.g. to test restarts."""
    clients: list[TestClient[Any, Any]] = []

    async def start(cfg: Config) -> TestClient[Any, Any]:
        c = await aiohttp_client(create_app(cfg))
        clients.append(c)
        return c

    yield start
    for c in clients:
        await c.close()
