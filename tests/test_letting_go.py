"""Streams and pools let go of what nobody needs: stalled clients, removed voices."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from idlakd.web.keys import synth_key
from tests.helpers.app import make_config


async def test_stalled_reader_is_dropped_and_its_work_stops(tmp_path: Path,
                                                            started_app_factory: Any) -> None:
    cfg = make_config(tmp_path, authorization="false", synthesis_timeout_seconds="1")
    client = await started_app_factory(cfg)
    service = client.app[synth_key]
    text = "A long sentence about nothing in particular, said again and again. " * 250
    body = json.dumps({"voice_id": "alba", "text": text}).encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
    try:
        writer.write(b"POST /speech HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n" % len(body) + body)
        await writer.drain()
        assert await reader.read(15) == b"HTTP/1.1 200 OK"
        # Read nothing more: the server's writes back up, then it must give up on us.
        for _ in range(200):
            if service.stats().disconnects >= 1:
                break
            await asyncio.sleep(0.05)
        assert service.stats().disconnects == 1
        for _ in range(100):
            if not service.busy_pids():
                break
            await asyncio.sleep(0.05)
        assert service.busy_pids() == []
    finally:
        writer.close()


async def test_voice_removed_from_the_database_retires_its_workers(
        tmp_path: Path, started_app_factory: Any) -> None:
    """`idlakd voice remove` (another process) makes the daemon stop that voice's workers."""
    from idlakd.web.app import retire_stale_pools
    from idlakd.web.keys import store_key

    cfg = make_config(tmp_path, authorization="false")
    client = await started_app_factory(cfg)
    service = client.app[synth_key]
    for voice_id in ("alba", "callum"):
        resp = await client.post("/speech", json={"voice_id": voice_id, "text": "Hello."})
        assert resp.status == 200 and len(await resp.read()) > 1000
    assert set(service.stats().voices) == {"alba", "callum"}
    await client.app[store_key].delete_voice("alba")
    await retire_stale_pools(client.app)
    assert set(service.stats().voices) == {"callum"}
    for _ in range(100):
        if len(service.worker_pids()) == service.stats().voices["callum"].workers:
            break
        await asyncio.sleep(0.05)
    assert len(service.worker_pids()) == service.stats().voices["callum"].workers
