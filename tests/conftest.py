"""Shared fixtures: a real app on a real SQLite file in a tmp dir (or a PostgreSQL database
with --store=postgresql), and the error-shape check."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable, Iterator

import pytest
from aiohttp import ClientResponse, web
from aiohttp.test_utils import TestClient

from idlakd.web.app import create_app
from idlakd.config import Config, DatabaseUrl
from tests.helpers.app import ClientFactory, bearer, login, make_config
from tests.helpers.postgres import PostgresServer, running_postgres, use_for_suite


def pytest_addoption(parser: pytest.Parser) -> None:
    """--store=postgresql: the whole suite's apps and daemons on PostgreSQL, not SQLite."""
    parser.addoption("--store", choices=["sqlite", "postgresql"], default="sqlite",
                     help="the store of every config the tests make (default sqlite)")


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One throwaway PostgreSQL server for the whole session (started on first use)."""
    with running_postgres() as server:
        yield server


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """With --store=postgresql, skip the tests of SQLite's own files (their reason says which)."""
    if config.getoption("--store") != "postgresql":
        return
    for item in items:
        marker = item.get_closest_marker("sqlite_only")
        if marker is not None:
            why = marker.kwargs.get("reason") or (marker.args[0] if marker.args else "")
            item.add_marker(pytest.mark.skip(reason=f"SQLite only: {why}"))


@pytest.fixture(scope="session", autouse=True)
def suite_store(request: pytest.FixtureRequest) -> Iterator[str]:
    """The --store of this run; with postgresql every config gets a fresh database."""
    kind = str(request.config.getoption("--store"))
    if kind == "postgresql":
        use_for_suite(request.getfixturevalue("postgres_server"))
    yield kind
    use_for_suite(None)


@pytest.fixture(params=["sqlite", "postgresql"])
async def database(request: pytest.FixtureRequest, tmp_path: Path) -> Path | DatabaseUrl:
    """Each store in turn: a fresh SQLite file, or a fresh database on the session's server."""
    if request.param == "sqlite":
        return tmp_path / "x.db"
    server: PostgresServer = request.getfixturevalue("postgres_server")
    return DatabaseUrl(await server.create_database())


@pytest.fixture
def store_kind(suite_store: str) -> str:
    """The store of the app's config: the run's --store, unless the test is marked both_stores."""
    return suite_store


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Run the tests marked both_stores once on SQLite and once on PostgreSQL."""
    if (metafunc.definition.get_closest_marker("both_stores") is not None
            and "store_kind" in metafunc.fixturenames
            and metafunc.config.getoption("--store") == "sqlite"):
        metafunc.parametrize("store_kind", ["sqlite", "postgresql"])


@pytest.fixture
async def config(tmp_path: Path, store_kind: str, request: pytest.FixtureRequest) -> Config:
    """The default test configuration (on a fresh PostgreSQL database for that store kind)."""
    if store_kind == request.config.getoption("--store"):
        return make_config(tmp_path)  # the run's store (make_config knows it)
    server: PostgresServer = request.getfixturevalue("postgres_server")
    return make_config(tmp_path, database=await server.create_database())


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
    return match.group(1)


@pytest.fixture
async def admin_token(client: TestClient[Any, Any], admin_password: str) -> str:
    """A valid token of the first admin."""
    return await login(client, "admin", admin_password)


@pytest.fixture
async def user_token(client: TestClient[Any, Any], admin_token: str) -> str:
    """A valid token of a fresh non-admin user 'alice'."""
    resp = await client.post("/users", json={"uid": "alice"}, headers=bearer(admin_token))
    assert resp.status == 200
    return await login(client, "alice", (await resp.json())["password"])


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
