"""A client that stops reading mid-stream is let go after synthesis_timeout_seconds."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from idlakd.keys import synth_key
from tests.conftest import make_config


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
            if service.stats()["disconnects"] >= 1:
                break
            await asyncio.sleep(0.05)
        assert service.stats()["disconnects"] == 1
        for _ in range(100):
            if not service.busy_pids():
                break
            await asyncio.sleep(0.05)
        assert service.busy_pids() == []
    finally:
        writer.close()
