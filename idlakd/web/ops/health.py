"""GET /healthz (the process answers) and GET /readyz (it can serve speech now)."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from typing import Final

from aiohttp import web

from idlakd.errors import Busy, DatabaseBusy, IdlakdError, StoreError
from idlakd.models import Voice
from idlakd.web.http import json_response
from idlakd.web.keys import runtime_key, store_key, synth_key

log = logging.getLogger(__name__)

# A readiness probe that hangs is worse than one that fails: bound every check.
CHECK_TIMEOUT_SECONDS: Final = 5.0


async def healthz(request: web.Request) -> web.Response:
    """GET /healthz: 200 while the process and its loop answer (liveness)."""
    runtime = request.app[runtime_key]
    return json_response({"status": "ok", "version": runtime.version,
                          "uptime_seconds": round(runtime.uptime_seconds, 3)})


async def readyz(request: web.Request) -> web.Response:
    """GET /readyz: 200 when the database reads and writes, voices load and synthesis works."""
    app = request.app
    runtime = app[runtime_key]
    if runtime.stopping:
        raise Busy("Not ready: the server is shutting down")
    if runtime.draining:
        # Fails first, while requests are still served: a balancer stops sending new ones here.
        raise Busy("Not ready: the server is draining before it shuts down", retry_after=5)
    failures: list[str] = []
    voices: list[Voice] = []
    try:
        store = app[store_key]
        await asyncio.wait_for(store.ping(), CHECK_TIMEOUT_SECONDS)
        voices = await asyncio.wait_for(store.list_voices(), CHECK_TIMEOUT_SECONDS)
    except (TimeoutError, StoreError, sqlite3.Error, KeyError) as exc:
        log.warning("Readiness: database check failed: %s", exc or type(exc).__name__)
        failures.append("database unreachable")
    else:
        try:
            # A real write, at most once a second: a full disk or read-only file is not ready.
            await asyncio.wait_for(store.check_writable(), CHECK_TIMEOUT_SECONDS)
        except (TimeoutError, StoreError, sqlite3.Error) as exc:
            log.warning("Readiness: database write check failed: %s", exc or type(exc).__name__)
            failures.append("database busy" if isinstance(exc, (DatabaseBusy, TimeoutError))
                            else "database not writable")
        if not voices:
            failures.append("no voices loaded")
    synthesis = "not checked"
    if voices:
        try:
            # The synthesizer speaks a word through its limiter (or has a worker running);
            # a first voice load slower than this keeps going for the next probe.
            await asyncio.wait_for(app[synth_key].check(voices), CHECK_TIMEOUT_SECONDS)
            synthesis = "ok"
        except TimeoutError:
            failures.append("a synthesis worker is still starting")
        except IdlakdError as exc:
            log.warning("Readiness: synthesis check failed: %s", exc.message)
            failures.append("synthesis workers cannot start")
    if failures:
        raise Busy("Not ready: " + ", ".join(failures), retry_after=5)
    return json_response({"status": "ready", "database": "ok", "voices": len(voices),
                          "synthesis": synthesis})
