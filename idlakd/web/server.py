"""Run the daemon: start, listen, tell systemd, and on SIGTERM/SIGINT drain, then stop gracefully."""

from __future__ import annotations

import asyncio
import gc
import contextlib
import logging
import os
import signal
from typing import Final

from aiohttp import web

from idlakd.web.app import create_app
from idlakd.config import Config
from idlakd.web.connections import (
    AcceptErrorLog,
    ConnectionLimits,
    ConnectionRunner,
    ensure_descriptors,
)
from idlakd.web.http import AccessLogger
from idlakd.web.keys import metrics_key, runtime_key
from idlakd.web.systemd import Notifier

log = logging.getLogger(__name__)

STOP_SIGNALS: Final = (signal.SIGTERM, signal.SIGINT)
# Read once by the Notifier, then removed so worker subprocesses do not inherit them.
SYSTEMD_VARIABLES: Final = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


async def _abort_connections_after(runner: web.AppRunner, seconds: float) -> None:
    """At the end of the grace period cut every connection still open.

    aiohttp waits shutdown_timeout for handlers, then cancels them and waits as long again;
    a handler stuck writing to a client that stopped reading ignores that cancellation, so
    without this a stop could take twice the grace period.
    """
    await asyncio.sleep(seconds)
    server = runner.server
    for connection in list(server.connections) if server is not None else []:
        if connection.transport is not None:
            connection.transport.abort()


async def _drain(cut_short: asyncio.Event, seconds: float) -> None:
    """Keep serving (while /readyz fails) for seconds, or until cut_short is set."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(cut_short.wait(), seconds)


async def run_daemon(config: Config) -> None:
    """Serve until SIGTERM/SIGINT; drain for drain_seconds, then let running requests finish
    within shutdown_grace_seconds (docs/operations.md, Stopping)."""
    notifier = Notifier()
    for name in SYSTEMD_VARIABLES:
        os.environ.pop(name, None)
    app = create_app(config)
    ensure_descriptors(config.max_connections)
    # Header timeout, connection cap and quiet malformed requests (idlakd.web.connections).
    runner = ConnectionRunner(
        app, ConnectionLimits.from_config(config), handle_signals=False,
        access_log_class=AccessLogger, access_log=logging.getLogger("idlakd.access"),
        # A client that disconnects cancels its handler at once: a /speech door stops its
        # workers and ffmpeg then, not at its next write (stream:false writes only at the end).
        handler_cancellation=True,
        # aiohttp waits this long for running handlers (streams included), then cancels them.
        shutdown_timeout=config.shutdown_grace_seconds)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    drained = asyncio.Event()  # a second signal ends draining early

    def on_signal(signum: signal.Signals) -> None:
        """First signal: start draining; a second ends draining; later ones only log."""
        if stop.is_set():
            if not drained.is_set():
                log.warning("%s received again: draining cut short", signum.name)
                drained.set()
            else:
                log.warning("%s received again; still finishing running requests", signum.name)
            return
        log.info("%s received: draining for %g s (/readyz fails, requests still served), "
                 "then running requests get up to %g s", signum.name, config.drain_seconds,
                 config.shutdown_grace_seconds)
        app[runtime_key].draining = True
        stop.set()

    for signum in STOP_SIGNALS:
        loop.add_signal_handler(signum, on_signal, signum)
    watchdog: asyncio.Task[None] | None = None
    accept_errors = AcceptErrorLog(app[metrics_key])
    accept_errors.install(loop)
    try:
        await runner.setup()  # cleanup_ctx: database, voices, synthesis service
        # Everything made by imports and start-up lives as long as the process: out of the
        # collector's sight, a full collection no longer walks it (14-43 ms pauses otherwise,
        # once every few thousand requests; see bench/RESULTS.md, section 3).
        gc.freeze()
        site = web.TCPSite(runner, config.host, config.port)
        await site.start()
        log.info("Listening on http://%s:%d", config.host, config.port)
        if not stop.is_set():  # a signal during start-up: go straight to stopping
            notifier.notify("READY=1", f"STATUS=Listening on {config.host}:{config.port}",
                            f"MAINPID={os.getpid()}")
            watchdog = asyncio.create_task(notifier.watchdog(), name="systemd-watchdog")
            await stop.wait()
            # Not ready, still serving: a balancer that has not yet probed /readyz since the
            # signal may still send requests here, and they must not fail.
            notifier.notify("STOPPING=1", "STATUS=Draining")
            await _drain(drained, config.drain_seconds)
        notifier.notify("STOPPING=1", "STATUS=Finishing running requests")
    finally:
        # Before listening stops (on_shutdown sets it too, later): a /speech arriving on a
        # kept-alive connection from now on gets 503.
        app[runtime_key].stopping = True
        deadline = asyncio.create_task(
            _abort_connections_after(runner, config.shutdown_grace_seconds))
        # Stops listening, runs on_shutdown, waits for running handlers, then the cleanup_ctx
        # teardown stops the workers and closes the database.
        await runner.cleanup()
        deadline.cancel()
        if watchdog is not None:
            watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watchdog
        for signum in STOP_SIGNALS:
            loop.remove_signal_handler(signum)
        notifier.close()
        accept_errors.uninstall(loop)
    log.info("idlakd stopped")
