"""GET /healthz and GET /readyz: liveness, and readiness (database, voices, synthesis)."""

from __future__ import annotations

import json
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from conftest import assert_error, make_config

from idlakd.config import Config
from idlakd.web.keys import store_key, synth_key
from idlakd.models import Voice
from idlakd.synth.pool import Worker

StartApp = Callable[[Config], Awaitable[TestClient[Any, Any]]]


async def test_healthz(client: TestClient[Any, Any]) -> None:
    resp = await client.get("/healthz")
    assert resp.status == 200 and resp.headers["Content-Type"] == "application/json"
    body = await resp.json()
    assert body["status"] == "ok" and body["version"] and body["uptime_seconds"] >= 0
    assert resp.headers["X-Request-Id"]


async def test_readyz_when_ready(client: TestClient[Any, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    spawned: list[str] = []
    real_spawn = Worker.spawn

    async def counting_spawn(voice: Voice, config: Config, name: str) -> Worker:
        spawned.append(voice.id)
        return await real_spawn(voice, config, name)

    monkeypatch.setattr(Worker, "spawn", counting_spawn)
    resp = await client.get("/readyz")
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert body == {"status": "ready", "database": "ok", "voices": 7, "synthesis": "ok"}
    # A real worker was started (and stopped again) to prove it; the result is then reused.
    assert len(spawned) == 1
    assert (await client.get("/readyz")).status == 200
    assert len(spawned) == 1
    assert client.app[synth_key].worker_pids() == []


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


@pytest.mark.parametrize("answer,status", [(True, 200), (None, 200), (False, 503)])
async def test_readyz_asks_the_synthesis_service_when_it_can(
        client: TestClient[Any, Any], monkeypatch: pytest.MonkeyPatch,
        answer: bool | None, status: int) -> None:
    async def check() -> bool | None:
        return answer

    monkeypatch.setattr(client.app[synth_key], "check", check, raising=False)
    resp = await client.get("/readyz")
    assert resp.status == status, await resp.text()
    if status == 200:
        assert (await resp.json())["synthesis"] == "ok"
    else:
        await assert_error(resp, 503, "Not ready: synthesis workers cannot start")


async def test_readyz_survives_a_failing_synthesis_check(
        client: TestClient[Any, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    def check() -> None:
        raise OSError("cannot fork")

    monkeypatch.setattr(client.app[synth_key], "check", check, raising=False)
    await assert_error(await client.get("/readyz"), 503, "Not ready: synthesis workers cannot start")


async def test_health_routes_need_no_token_even_with_a_bad_one(client: TestClient[Any, Any]) -> None:
    headers = {"Authorization": "Bearer not-a-token"}
    assert (await client.get("/healthz", headers=headers)).status == 200
    assert (await client.get("/readyz", headers=headers)).status == 200
