"""Logs: one access line per request, nothing secret anywhere in them; stderr or a rotating file."""

from __future__ import annotations

import asyncio
import logging
import logging.handlers
import re
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from tests.helpers.app import bearer, login, make_config

from idlakd.cli.log_repeats import RepeatFilter
from idlakd.cli.main import LOG_FORMAT, setup_logging
from idlakd.web.http import AccessLogger

ClientFactory = Callable[..., Awaitable[TestClient[Any, Any]]]


class Collect(logging.Handler):
    """Keeps every record, formatted exactly as the daemon's handler would write it."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter(LOG_FORMAT))
        self.lines: list[str] = []
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        """Format and keep the record."""
        self.records.append(record)
        self.lines.append(self.format(record))


@pytest.fixture
def collected() -> Iterator[Collect]:
    """Everything logged at any level while the test runs (also by aiohttp and asyncio)."""
    root = logging.getLogger()
    handler = Collect()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    yield handler
    root.removeHandler(handler)
    root.setLevel(old_level)


@pytest.fixture
async def logged_client(collected: Collect, aiohttp_client: ClientFactory, app: web.Application,
                        capsys: pytest.CaptureFixture[str]) -> TestClient[Any, Any]:
    """The app served with the daemon's access logger, while everything is collected."""
    server = TestServer(app)
    # start_server's arguments reach the AppRunner, like the daemon's own (see idlakd.web.server).
    await server.start_server(access_log_class=AccessLogger,
                              access_log=logging.getLogger("idlakd.access"))
    return await aiohttp_client(server)


async def test_nothing_secret_is_ever_logged(logged_client: TestClient[Any, Any], collected: Collect,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    client = logged_client
    secrets: list[str] = []
    requests = 0

    async def call(method: str, path: str, expect: int, **kwargs: Any) -> Any:
        nonlocal requests
        requests += 1
        resp = await client.request(method, path, **kwargs)
        body = await resp.read()
        assert resp.status == expect, body[:300]
        return await resp.json() if resp.content_type == "application/json" else body

    async def login(uid: str, password: str) -> str:
        token: str = (await call("POST", "/auth", 200, json={"uid": uid, "password": password}))["access_token"]
        secrets.append(token)
        return token

    admin_password = re.search(r"<User admin:([^:]+):True>", capsys.readouterr().out)
    assert admin_password
    secrets.append(admin_password.group(1))
    admin = await login("admin", admin_password.group(1))

    bob_password = (await call("POST", "/users", 200, json={"uid": "bob"}, headers=bearer(admin)))["password"]
    other = await call("POST", "/users", 200, json={"admin": True}, headers=bearer(admin))
    secrets += [bob_password, other["password"]]
    await login("bob", bob_password)
    await login(other["uid"], other["password"])
    reset = (await call("POST", "/users/bob/password", 200, headers=bearer(admin)))["password"]
    secrets.append(reset)
    await call("POST", "/auth", 401, json={"uid": "bob", "password": bob_password})
    bob = await login("bob", reset)
    chosen = "Correct-Horse-Battery-Staple-42"
    secrets.append(chosen)
    await call("POST", "/auth/password", 200, headers=bearer(bob),
               json={"old_password": reset, "new_password": chosen})
    bob = await login("bob", chosen)  # the change ended every token issued before it
    await call("POST", "/auth/password", 422, headers=bearer(bob),
               json={"old_password": "Not-Bobs-0ld-Password", "new_password": "Another-Long-0ne"})
    secrets += ["Not-Bobs-0ld-Password", "Another-Long-0ne"]
    bob = await login("bob", chosen)

    # Failures must not leak either: wrong password, broken JSON around a password, forged tokens.
    secrets += ["Wr0ng-Pa55word-for-grep", "BrokenJsonSecret-77", "forged.token.value-xyz"]
    await call("POST", "/auth", 401, json={"uid": "admin", "password": "Wr0ng-Pa55word-for-grep"})
    await call("POST", "/auth", 401, json={"uid": "nobody", "password": "Wr0ng-Pa55word-for-grep"})
    await call("POST", "/auth", 400, data=b'{"uid": "admin", "password": "BrokenJsonSecret-77"',
               headers={"Content-Type": "application/json"})
    await call("GET", "/users", 401, headers=bearer("forged.token.value-xyz"))
    await call("GET", "/users", 401, headers={"Authorization": "forged.token.value-xyz"})
    await call("GET", f"/voices?access_token={admin}&password={chosen}", 200)

    # Speech: the text is private too, also when it is refused.
    text = "Quixotic zephyrs whisper confidential syllables."
    secrets.append(text)
    audio = await call("POST", "/speech", 200, headers=bearer(bob), json={"voice_id": "alba", "text": text})
    assert audio[:4] == b"RIFF"
    await call("POST", "/speech", 400, headers=bearer(bob),
               json={"voice_id": "nobody", "text": "Unknown voice secret sentence."})
    await call("POST", "/speech", 422, headers=bearer(bob),
               json={"voice_id": "alba", "text": "Bad format secret sentence.", "audio_format": "speex"})
    secrets += ["Unknown voice secret sentence.", "Bad format secret sentence."]

    await call("POST", "/auth/expire", 200, headers=bearer(admin))
    await call("GET", "/users", 401, headers=bearer(admin))
    await call("DELETE", "/users/bob", 200, headers=bearer(await login("admin", admin_password.group(1))))

    await asyncio.sleep(0.2)  # the last access line is written after its response
    everything = "\n".join(collected.lines)
    assert len(everything) > 1000
    for secret in secrets:
        assert secret not in everything, f"a secret was logged: {secret[:12]}..."
        if secret.count(".") == 2 and secret.startswith("ey"):  # a JWT: no part of it either
            for part in secret.split("."):
                assert part not in everything
    access = [r for r in collected.records if r.name == "idlakd.access"]
    assert len(access) == requests, "exactly one access line per request"


async def test_access_line_fields(logged_client: TestClient[Any, Any], collected: Collect,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    password = re.search(r"<User admin:([^:]+):True>", capsys.readouterr().out)
    assert password
    admin_token = await login(logged_client, "admin", password.group(1))
    collected.lines.clear()
    collected.records.clear()
    resp = await logged_client.get("/users", headers={**bearer(admin_token), "X-Request-Id": "req-42"})
    assert resp.status == 200
    await resp.read()
    await asyncio.sleep(0.1)
    [line] = [r.getMessage() for r in collected.records if r.name == "idlakd.access"]
    assert re.fullmatch(r'127\.0\.0\.1 "GET /users" 200 \d+B \d+\.\dms rid=req-42 uid=admin', line), line


def test_logging_to_stderr_by_default(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        listener = setup_logging(make_config(tmp_path, log_level="WARNING"))
        [handler] = root.handlers
        assert isinstance(handler, logging.handlers.QueueHandler)
        [target] = listener.handlers
        assert isinstance(target, logging.StreamHandler) and target.stream is sys.stderr
        assert root.level == logging.WARNING
        assert logging.getLogger("aiohttp.access").getEffectiveLevel() >= logging.WARNING
        listener.stop()
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)


def test_logging_to_a_rotating_file(tmp_path: Path) -> None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    log_file = tmp_path / "logs" / "idlakd.log"
    try:
        listener = setup_logging(make_config(tmp_path, log_file=str(log_file), log_level="DEBUG"))
        [target] = listener.handlers
        assert isinstance(target, logging.handlers.RotatingFileHandler)
        assert target.maxBytes > 0 and target.backupCount > 0
        try:
            raise ValueError("a failure")
        except ValueError:
            logging.getLogger("idlakd.test").exception("a line for %s", "the file")
        listener.stop()  # the listener thread has written everything queued
        target.close()
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
    text = log_file.read_text()
    assert "ERROR idlakd.test: a line for the file\nTraceback" in text
    assert "ValueError: a failure" in text


async def test_the_loop_only_queues_log_records(tmp_path: Path) -> None:
    """With a log file, the loop's thread hands records to a queue; another thread writes them."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    log_file = tmp_path / "idlakd.log"
    writers: list[str] = []

    class Spy(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            writers.append(threading.current_thread().name)

    try:
        listener = setup_logging(make_config(tmp_path, log_file=str(log_file)))
        [on_loop] = root.handlers
        assert isinstance(on_loop, logging.handlers.QueueHandler)
        listener.handlers = (*listener.handlers, Spy())
        logging.getLogger("idlakd.access").info("a request line")
        listener.stop()
        for handler in listener.handlers:
            handler.close()
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
    assert writers and threading.current_thread().name not in writers
    assert "idlakd.access: a request line" in log_file.read_text()


async def test_a_url_cannot_forge_a_log_line(logged_client: TestClient[Any, Any],
                                             collected: Collect) -> None:
    resp = await logged_client.get("/voices/x%0A2026-01-01%20INFO%20idlakd%20forged%0D")
    assert resp.status == 404
    await resp.read()
    await asyncio.sleep(0.1)
    [line] = [r.getMessage() for r in collected.records if r.name == "idlakd.access"]
    assert "\n" not in line and "\r" not in line and "%0A" in line


async def test_probes_are_debug_lines(logged_client: TestClient[Any, Any],
                                      collected: Collect) -> None:
    """A balancer probes /readyz every few seconds for ever: DEBUG, not an INFO line each."""
    for path in ("/healthz", "/readyz", "/voices"):
        resp = await logged_client.get(path)
        await resp.read()
    await asyncio.sleep(0.1)
    levels = {re.search(r'"GET (\S+)"', r.getMessage()).group(1): r.levelname  # type: ignore[union-attr]
              for r in collected.records if r.name == "idlakd.access"}
    assert levels == {"/healthz": "DEBUG", "/readyz": "DEBUG", "/voices": "INFO"}


def test_a_repeated_warning_is_written_a_few_times_a_minute(tmp_path: Path) -> None:
    """The same warning from a retry loop (the database down) 50 times: 3 lines, then one
    saying how many were left out once the minute is over; other warnings and access lines
    are not held back."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    log_file = tmp_path / "idlakd.log"
    try:
        listener = setup_logging(make_config(tmp_path, log_file=str(log_file)))
        jobs, access = logging.getLogger("idlakd.synth.jobs"), logging.getLogger("idlakd.access")
        for n in range(50):
            jobs.warning("Could not look for jobs: %s", f"connection refused #{n}")
            access.info("a request line %d", n)
        jobs.warning("Could not delete old jobs: %s", "connection refused")
        listener.stop()
        for handler in listener.handlers:
            handler.close()
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
    text = log_file.read_text()
    assert re.findall(r"Could not look for jobs: connection refused #(\d+)", text) == ["0", "1", "2"]
    assert "Could not delete old jobs" in text
    assert len(re.findall(r"a request line \d+", text)) == 50


def test_the_line_after_a_quiet_window_counts_what_was_left_out() -> None:
    limiter = RepeatFilter(window=0.2, burst=2)
    log = logging.getLogger("idlakd.test.repeats")

    def passes(n: int) -> list[str]:
        records = [log.makeRecord(log.name, logging.WARNING, __file__, 1, "down: %s", (i,), None)
                   for i in range(n)]
        return [r.getMessage() for r in records if limiter.filter(r)]

    assert passes(10) == ["down: 0", "down: 1"]
    time.sleep(0.25)
    assert passes(3) == ["down: 0 [8 more like this left out]", "down: 1"]
    info = log.makeRecord(log.name, logging.INFO, __file__, 1, "down: %s", (0,), None)
    assert all(limiter.filter(info) for _ in range(10))
