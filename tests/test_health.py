"""GET /healthz and GET /readyz: liveness, and readiness (database, voices, synthesis)."""

from __future__ import annotations

import json
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient
from tests.helpers.app import REPO, assert_error, make_config

from idlakd.config import Config
from idlakd.web.keys import store_key, synth_key

StartApp = Callable[[Config], Awaitable[TestClient[Any, Any]]]


async def test_healthz(client: TestClient[Any, Any]) -> None:
    resp = await client.get("/healthz")
    assert resp.status == 200 and resp.headers["Content-Type"] == "application/json"
    body = await resp.json()
    assert body["status"] == "ok" and body["version"] and body["uptime_seconds"] >= 0
    assert resp.headers["X-Request-Id"]


async def test_readyz_when_ready(client: TestClient[Any, Any]) -> None:
    synthesizer = client.app[synth_key]
    assert synthesizer.worker_pids() == []
    resp = await client.get("/readyz")
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    # Every voice of the repository's list (its piper voice too: the test extra installs piper).
    listed = len(json.loads((REPO / "voiceconfig.json").read_text(encoding="utf-8")))
    assert body == {"status": "ready", "database": "ok", "voices": listed, "synthesis": "ok"}
    # A word was really synthesised, through the limiter like any request; its worker
    # stays warm, and proves readiness next time without another process.
    stats = synthesizer.stats()
    assert stats.requests == 1 and stats.syntheses == 1
    pids = synthesizer.worker_pids()
    assert len(pids) == 1
    assert (await client.get("/readyz")).status == 200
    assert synthesizer.worker_pids() == pids and synthesizer.stats().requests == 1


async def test_readyz_when_no_worker_can_start(tmp_path: Path, started_app_factory: StartApp) -> None:
    broken = tmp_path / "voices.json"
    broken.write_text(json.dumps([{
        "vid": "mute", "name": "Mute", "gender": "male", "lang": "en", "acc": "gb",
        "engine": "command", "options": {"argv": [sys.executable, "-c", "import sys; sys.exit(3)"]}}]))
    client = await started_app_factory(make_config(tmp_path, voice_config=str(broken)))
    await assert_error(await client.get("/readyz"), 503, "Not ready: synthesis workers cannot start")


async def test_readyz_without_voices(tmp_path: Path, started_app_factory: StartApp) -> None:
    empty = tmp_path / "voices.json"
    empty.write_text("[]")
    client = await started_app_factory(make_config(tmp_path, voice_config=str(empty)))
    resp = await client.get("/readyz")
    await assert_error(resp, 503, "Not ready: no voices loaded")
    assert resp.headers["Retry-After"] == "5"
    assert (await client.get("/healthz")).status == 200


async def test_readyz_when_the_database_is_gone(client: TestClient[Any, Any]) -> None:
    await client.app[store_key].close()  # closing again at shutdown is harmless
    await assert_error(await client.get("/readyz"), 503, "Not ready: database unreachable")


async def test_health_routes_need_no_token_even_with_a_bad_one(client: TestClient[Any, Any]) -> None:
    headers = {"Authorization": "Bearer not-a-token"}
    assert (await client.get("/healthz", headers=headers)).status == 200
    assert (await client.get("/readyz", headers=headers)).status == 200
