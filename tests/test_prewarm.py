"""Pre-warm (prewarm_workers, on by default): one worker per voice starts in the background at
start, /healthz answers meanwhile, /readyz waits for it, and voices added later get one too."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from idlakd.config import load_config
from idlakd.models import Voice
from idlakd.synth.prewarm import spawns_at_once
from idlakd.web.app import create_app
from idlakd.web.keys import store_key, synth_key
from tests.helpers.app import ClientFactory, make_config
from tests.helpers.daemon import start_daemon, wait_listening
from tests.helpers.processes import child_pids, wait_gone
from tests.helpers.synth import STANDIN_ROOT, make_standin_voice


def test_prewarm_is_on_by_default(tmp_path: Path) -> None:
    assert load_config(env={"STATE_DIRECTORY": str(tmp_path)}).prewarm_workers is True


async def wait_ready(client: TestClient[Any, Any], within: float = 30.0) -> None:
    """Poll /readyz until 200."""
    deadline = time.monotonic() + within
    while (resp := await client.get("/readyz")).status != 200:
        assert time.monotonic() < deadline, await resp.text()
        await asyncio.sleep(0.05)


async def test_one_worker_per_voice_before_the_first_request(
        tmp_path: Path, aiohttp_client: ClientFactory) -> None:
    client = await aiohttp_client(create_app(make_config(tmp_path, prewarm_workers="true",
                                                             authorization="false")))
    synth = client.app[synth_key]
    # Listening and alive while the workers start (every voice of the list, a few at a time).
    assert (await client.get("/healthz")).status == 200
    voices = [voice.id for voice in await client.app[store_key].list_voices()]
    assert len(voices) >= 7  # the repository's voiceconfig.json (joe too with the piper extra)
    assert len(synth.worker_pids()) < len(voices)
    await wait_ready(client)
    stats = synth.stats()
    assert {voice: pool.workers for voice, pool in stats.voices.items()} == {
        voice: 1 for voice in voices}
    # Readiness came from the warm workers: no word was synthesised to prove it.
    assert stats.requests == 0 and stats.syntheses == 0
    pids = set(synth.worker_pids())
    assert pids <= child_pids()
    resp = await client.post("/speech", json={"voice_id": "callum", "text": "Hello there."})
    assert resp.status == 200 and len(await resp.read()) > 1000
    # The first request took the warm worker: no process started for it.
    assert set(synth.worker_pids()) == pids
    await client.close()
    assert await wait_gone(pids) == set()


async def test_starts_are_bounded_and_a_voice_added_later_is_warmed(
        tmp_path: Path, aiohttp_client: ClientFactory) -> None:
    before = child_pids()  # the suite's own (a PostgreSQL server with --store=postgresql)
    client = await aiohttp_client(create_app(make_config(
        tmp_path, prewarm_workers="true", change_check_seconds="0.1")))
    synth = client.app[synth_key]
    voices = len(await client.app[store_key].list_voices())
    most = 0
    deadline = time.monotonic() + 30
    while sum(pool.workers for pool in synth.stats().voices.values()) < voices:
        # Workers alive or starting: children of this process beyond the finished ones.
        starting = len(child_pids() - before) - sum(p.workers for p in synth.stats().voices.values())
        most = max(most, starting)
        assert time.monotonic() < deadline
        await asyncio.sleep(0.005)
    assert 1 <= most <= spawns_at_once()
    await wait_ready(client)
    store = client.app[store_key]
    await store.upsert_voices([Voice(id="extra", name="Extra", language="en", accent="us",
                                   gender="male", options={"voice": "en-us"})])
    deadline = time.monotonic() + 10
    while "extra" not in synth.stats().voices or synth.stats().voices["extra"].workers != 1:
        assert time.monotonic() < deadline, synth.stats().voices.keys()
        await asyncio.sleep(0.05)
    assert synth.stats().voices["extra"].workers == 1 and synth.stats().syntheses == 0


async def test_the_api_answers_at_once_while_a_slow_voice_warms_and_readyz_waits(
        tmp_path: Path, aiohttp_client: ClientFactory) -> None:
    # A stand-in Idlak voice whose load takes 2 s: the daemon's routes do not wait for it,
    # /readyz does, and the first request of the voice then does not pay the load.
    voices = tmp_path / "voices.json"
    voices.write_text(json.dumps([
        {"vid": "heavy", "name": "Heavy", "gender": "male", "lang": "en", "acc": "ga",
         "engine": "tangle", "dir": str(make_standin_voice(tmp_path / "heavy", load_delay=2))}]))
    started = time.monotonic()
    client = await aiohttp_client(create_app(make_config(
        tmp_path, prewarm_workers="true", authorization="false", voice_config=str(voices),
        idlak_root=str(STANDIN_ROOT))))
    synth = client.app[synth_key]
    for path in ("/healthz", "/voices", "/voices/heavy"):
        before = time.monotonic()
        assert (await client.get(path)).status == 200
        assert time.monotonic() - before < 0.5, path
    assert synth.stats().voices["heavy"].workers == 0  # still loading
    resp = await client.get("/readyz")
    assert resp.status == 200, await resp.text()
    assert time.monotonic() - started > 1.5  # it waited for the load
    assert synth.stats().voices["heavy"].workers == 1 and synth.stats().syntheses == 0
    before = time.monotonic()
    resp = await client.post("/speech", json={"voice_id": "heavy", "text": "Hello there."})
    assert resp.status == 200 and len(await resp.read()) > 1000
    assert time.monotonic() - before < 1.5  # no 2 s load: the worker was warm


async def test_a_voice_that_cannot_start_does_not_hold_readiness(
        tmp_path: Path, aiohttp_client: ClientFactory) -> None:
    voices = tmp_path / "voices.json"
    voices.write_text(json.dumps([
        {"vid": "mute", "name": "Mute", "gender": "male", "lang": "en", "acc": "gb",
         "engine": "command", "options": {"argv": [sys.executable, "-c", "import sys; sys.exit(3)"]}},
        {"vid": "alba", "name": "Alba", "gender": "female", "lang": "en", "acc": "gb",
         "engine": "espeak", "options": {"voice": "en-gb"}}]))
    client = await aiohttp_client(create_app(make_config(
        tmp_path, prewarm_workers="true", voice_config=str(voices))))
    await wait_ready(client)
    assert client.app[synth_key].stats().voices["alba"].workers == 1


@pytest.mark.scenario
async def test_daemon_stopped_while_prewarming_leaves_no_worker(tmp_path: Path) -> None:
    daemon = start_daemon(tmp_path, prewarm_workers="true")
    try:
        await wait_listening(daemon)
        deadline = time.monotonic() + 10
        while not (children := set(daemon.children())):
            assert time.monotonic() < deadline, daemon.log()
            await asyncio.sleep(0.01)
        daemon.signal()
        assert await daemon.wait(20) == 0, daemon.log()
        # Every worker pre-warm started (or was starting) is gone with the daemon.
        for pid in children:
            assert not Path(f"/proc/{pid}").exists() or \
                "Z" in Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    finally:
        daemon.kill()
