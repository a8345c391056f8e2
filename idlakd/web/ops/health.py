"""GET /healthz (the process answers) and GET /readyz (it can serve speech now)."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import sqlite3
import time
from collections.abc import Mapping, Sequence
from typing import Any, Final

from aiohttp import web

from idlakd.config import Config
from idlakd.errors import DatabaseBusy, ServiceUnavailable, StoreError
from idlakd.web.http import json_response
from idlakd.web.keys import config_key, health_key, runtime_key, store_key, synth_key
from idlakd.models import Voice
from idlakd.synth.pool import SynthesisError, Worker

log = logging.getLogger(__name__)

# A readiness probe that hangs is worse than one that fails: bound every check.
CHECK_TIMEOUT_SECONDS: Final = 5.0
# Methods the synthesis service may offer to prove a worker can start; the first found is used.
SYNTH_CHECKS: Final = ("check", "ready", "readiness")
# Starting a worker costs a process and a voice load: a success is trusted for a while,
# a failure is retried soon.
PROBE_OK_SECONDS: Final = 600.0
PROBE_FAILED_SECONDS: Final = 10.0


class WorkerProbe:
    """Proves that a synthesis worker can start by starting (and stopping) one, at most now and then."""

    def __init__(self) -> None:
        self._task: asyncio.Task[bool] | None = None
        self._result: bool | None = None
        self._checked_at = 0.0

    def _fresh(self) -> bool:
        """Whether the last result may still be trusted."""
        if self._result is None:
            return False
        ttl = PROBE_OK_SECONDS if self._result else PROBE_FAILED_SECONDS
        return time.monotonic() - self._checked_at < ttl

    async def check(self, voices: Sequence[Voice], config: Config) -> str:
        """'ok', or raise RuntimeError; a slow probe keeps running for the next call."""
        if self._fresh():
            if not self._result:
                raise RuntimeError("a synthesis worker cannot start")
            return "ok"
        if self._task is None:
            self._task = asyncio.create_task(self._probe(voices, config), name="readyz-worker-probe")
        # shield: a readiness call that times out must not kill a slow Idlak voice load.
        ok = await asyncio.wait_for(asyncio.shield(self._task), CHECK_TIMEOUT_SECONDS)
        if not ok:
            raise RuntimeError("a synthesis worker cannot start")
        return "ok"

    async def _probe(self, voices: Sequence[Voice], config: Config) -> bool:
        """Start one worker for the cheapest voice (eSpeak if any) and stop it again."""
        voice = min(voices, key=lambda v: v.engine != "espeak")
        ok = False
        try:
            worker = await Worker.spawn(voice, config, f"readyz-{voice.id}")
            await worker.stop()
            ok = True
        except SynthesisError as exc:
            log.warning("Readiness: a worker for voice %s could not start: %s", voice.id, exc)
        finally:
            self._result, self._checked_at, self._task = ok, time.monotonic(), None
        return ok

    async def close(self) -> None:
        """Stop a probe still running (its worker is stopped by Worker.spawn's own cleanup)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


async def healthz(request: web.Request) -> web.Response:
    """GET /healthz: 200 while the process and its loop answer (liveness)."""
    runtime = request.app[runtime_key]
    return json_response({"status": "ok", "version": runtime.version,
                          "uptime_seconds": round(runtime.uptime_seconds, 3)})


def _workers_running(service: Any) -> bool:
    """Whether the synthesis service reports a live worker (then workers evidently start)."""
    stats_method = getattr(service, "stats", None)
    stats = stats_method() if callable(stats_method) else None
    pools = stats.get("voices") if isinstance(stats, Mapping) else None
    if not isinstance(pools, Mapping):
        return False
    return any(isinstance(p, Mapping) and isinstance(p.get("workers"), int) and p["workers"] > 0
               for p in pools.values())


async def _check_synth(app: web.Application, voices: Sequence[Voice]) -> str:
    """The service's own check if it has one; else a running worker, else a probe worker."""
    service = app[synth_key]
    for name in SYNTH_CHECKS:
        method = getattr(service, name, None)
        if callable(method):
            result = method()
            if inspect.isawaitable(result):
                result = await result
            if result is False:
                raise RuntimeError("a synthesis worker cannot start")
            return "ok"
    if _workers_running(service):
        return "ok"
    return await app[health_key].check(voices, app[config_key])


async def readyz(request: web.Request) -> web.Response:
    """GET /readyz: 200 when the database reads and writes, voices load and a worker can start."""
    app = request.app
    if app[runtime_key].stopping:
        raise ServiceUnavailable("Not ready: the server is shutting down")
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
            synthesis = await _check_synth(app, voices)
        except TimeoutError:
            failures.append("a synthesis worker is still starting")
        except Exception as exc:  # noqa: BLE001 - any failure of the check means "not ready" (logged)
            log.warning("Readiness: synthesis check failed: %s", exc or type(exc).__name__)
            failures.append("synthesis workers cannot start")
    if failures:
        raise ServiceUnavailable("Not ready: " + ", ".join(failures), retry_after=5)
    return json_response({"status": "ready", "database": "ok", "voices": len(voices),
                          "synthesis": synthesis})


async def _stop_probe(app: web.Application) -> None:
    """on_shutdown: no probe worker outlives the daemon."""
    await app[health_key].close()


def setup_health(app: web.Application) -> None:
    """Give the app its worker probe, stopped at shutdown."""
    app[health_key] = WorkerProbe()
    app.on_shutdown.append(_stop_probe)
