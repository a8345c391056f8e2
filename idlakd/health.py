"""GET /healthz (the process answers) and GET /readyz (it can serve speech now)."""

from __future__ import annotations

import asyncio
import inspect
import logging
import sqlite3
from typing import Any, Final

from aiohttp import web

from idlakd.errors import ServiceUnavailable, StoreError
from idlakd.http import json_response
from idlakd.keys import runtime_key, store_key, synth_key

log = logging.getLogger(__name__)

# A readiness probe that hangs is worse than one that fails: bound every check.
CHECK_TIMEOUT_SECONDS: Final = 5.0
# Methods the synthesis service may offer to prove a worker can start; the first found is used.
SYNTH_CHECKS: Final = ("check", "ready", "readiness")


async def healthz(request: web.Request) -> web.Response:
    """GET /healthz: 200 while the process and its loop answer (liveness)."""
    runtime = request.app[runtime_key]
    return json_response({"status": "ok", "version": runtime.version,
                          "uptime_seconds": round(runtime.uptime_seconds, 3)})


async def _check_synth(service: Any) -> str:
    """Ask the synthesis service whether a worker can start, if it offers a way to."""
    for name in SYNTH_CHECKS:
        method = getattr(service, name, None)
        if callable(method):
            result = method()
            if inspect.isawaitable(result):
                result = await result
            if result is False:
                raise RuntimeError("a synthesis worker cannot start")
            return "ok"
    return "not checked"


async def readyz(request: web.Request) -> web.Response:
    """GET /readyz: 200 when the database answers, voices are loaded and synthesis can start; else 503."""
    app = request.app
    if app[runtime_key].stopping:
        raise ServiceUnavailable("Not ready: the server is shutting down")
    failures: list[str] = []
    voices = 0
    try:
        store = app[store_key]
        await asyncio.wait_for(store.ping(), CHECK_TIMEOUT_SECONDS)
        voices = len(await asyncio.wait_for(store.list_voices(), CHECK_TIMEOUT_SECONDS))
    except (StoreError, sqlite3.Error, asyncio.TimeoutError, KeyError) as exc:
        log.warning("Readiness: database check failed: %s", exc or type(exc).__name__)
        failures.append("database unreachable")
    else:
        if voices == 0:
            failures.append("no voices loaded")
    synthesis = "not checked"
    try:
        synthesis = await asyncio.wait_for(_check_synth(app[synth_key]), CHECK_TIMEOUT_SECONDS)
    except Exception as exc:  # noqa: BLE001 - any failure of the probe means "not ready", logged
        log.warning("Readiness: synthesis check failed: %s", exc or type(exc).__name__)
        failures.append("synthesis workers cannot start")
    if failures:
        raise ServiceUnavailable("Not ready: " + ", ".join(failures), retry_after=5)
    return json_response({"status": "ready", "database": "ok", "voices": voices,
                          "synthesis": synthesis})
