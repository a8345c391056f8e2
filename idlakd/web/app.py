"""create_app: wiring of middlewares, routes and resources (opened in cleanup_ctx, in order)."""

from __future__ import annotations

import asyncio
import logging
from typing import AsyncIterator

from aiohttp import web

from idlakd.accounts.passwords import Passwords
from idlakd.accounts.quotas import Quotas
from idlakd.accounts.tokens import TokenVerifier, load_secret
from idlakd.accounts.users import ensure_first_admin, write_initial_password
from idlakd.web.admin.pages import setup_admin
from idlakd.web.guard import guard_middleware
from idlakd.config import Config
from idlakd.web.connections import body_deadline_middleware
from idlakd.web.http import error_middleware, on_response_prepare
from idlakd.web.keys import (config_key, jobs_key, passwords_key, quotas_key, runtime_key,
                             secret_key, store_key, synth_key, throttle_key, verifier_key)
from idlakd.web.ops.metrics import metrics_middleware, setup_metrics
from idlakd.web.proxies import TrustedProxies, client_address_middleware
from idlakd.web.routes import setup_routes
from idlakd.web.runtime import Runtime
from idlakd.store.changes import ChangeWatcher
from idlakd.store.factory import open_store
from idlakd.store.shared import VOICES
from idlakd.synth.jobs import JobRunner
from idlakd.synth.synthesizer import Synthesizer
from idlakd.accounts.throttle import LoginThrottle
from idlakd.voices.definitions import load_voice_config

log = logging.getLogger(__name__)


async def passwords_ctx(app: web.Application) -> AsyncIterator[None]:
    """The bcrypt threads live as long as the app (they start on the first hash)."""
    yield
    await app[passwords_key].close()


async def storage_ctx(app: web.Application) -> AsyncIterator[None]:
    """Open the database and secret, create the first admin, load voiceconfig.json."""
    config = app[config_key]
    store = open_store(config)
    await store.open()
    app[store_key] = store
    quotas = app[quotas_key] = Quotas.from_config(store, config)
    try:
        # The secret file, or (PostgreSQL without one) the secret every node shares.
        app[secret_key] = await load_secret(config.secret_file, store)
        app[verifier_key] = TokenVerifier(app[secret_key])
        await quotas.start()
        # Make the dummy hash now, so the first login of an unknown uid costs no more than later ones.
        await app[passwords_key].check("", None)
        first = await ensure_first_admin(store, app[passwords_key])
        if first is not None:
            # Printed once to the console, deliberately not through logging (never in a log file).
            print(f"<User {first.uid}:{first.password}:{first.admin}>", flush=True)
            # The console may be a journal nobody keeps: the password also goes to a 0600 file.
            written = await asyncio.to_thread(write_initial_password, config.state_dir, first)
            if written is not None:
                print(f"The first admin's password is also in {written} (owner-only); "
                      "delete that file once it is kept somewhere safe.", flush=True)
        if config.voice_config is not None:
            voices = await asyncio.to_thread(load_voice_config, config.voice_config, config)
            # Seeds, never resurrects: a voice an operator removed stays removed.
            seeded = await store.seed_voices(voices)
            log.info("Loaded %d voices from %s (%d new or changed)",
                     len(voices) - len(seeded.skipped), config.voice_config, seeded.changed)
            if seeded.skipped:
                log.info("Not loaded, removed by an operator (idlakd voice add brings one "
                         "back): %s", ", ".join(seeded.skipped))
        else:
            log.warning("No voiceconfig.json found; serving only voices already in the database")
        yield
    finally:
        await quotas.close()  # usage of the last streams written before the store closes
        await store.close()


async def retire_stale_pools(app: web.Application) -> None:
    """Stop the workers of voices removed or changed in the store (e.g. by the CLI); warm new ones."""
    voices = await app[store_key].list_voices()
    app[synth_key].sync_voices({v.id: v.version for v in voices})
    app[synth_key].prewarm(voices)  # a voice added or changed gets its worker now


async def synth_ctx(app: web.Application) -> AsyncIterator[None]:
    """Start the synthesizer after storage; stop every worker before storage closes."""
    service = app[synth_key]
    await service.start()
    # In the background: the socket and /healthz answer at once; /readyz waits for it.
    service.prewarm(await app[store_key].list_voices(), startup=True)
    try:
        yield
    finally:
        await service.close()


async def changes_ctx(app: web.Application) -> AsyncIterator[None]:
    """Act on what other nodes and the CLI change: a removed or changed voice's workers stop.

    Only the voices have a per-node copy here (the synthesizer's pools). The SQLite store's
    read cache (store/snapshot.py) checks the file's data version itself, at once; on
    PostgreSQL users, tokens, keys, passwords, limits and login failures are read on every
    request (a NOTIFY arrives after the commit, so a copy could answer from before it).
    """
    watcher = ChangeWatcher(app[store_key], app[config_key].change_check_seconds)
    watcher.subscribe(VOICES, lambda: retire_stale_pools(app))
    await watcher.start()
    try:
        yield
    finally:
        await watcher.close()


async def jobs_ctx(app: web.Application) -> AsyncIterator[None]:
    """Run jobs once storage and the synthesizer are up; stop them before the synthesizer."""
    quotas = app[quotas_key]
    runner = app[jobs_key] = JobRunner(app[store_key], app[synth_key], quotas,
                                       app[config_key], quotas.daemon)
    await runner.start()
    try:
        yield
    finally:
        await runner.close()


async def mark_stopping(app: web.Application) -> None:
    """on_shutdown: new /speech requests get 503 while running streams finish."""
    app[runtime_key].stopping = True


def create_app(config: Config) -> web.Application:
    """Build the application; no I/O happens until the app starts."""
    if not config.authorization:
        log.warning("AUTHORIZATION IS OFF: every route, admin routes included, is open to "
                    "anyone who can reach %s:%d", config.host, config.port)
    proxies = TrustedProxies.parse(config.trusted_proxies, config.forwarded_header)
    app = web.Application(
        # metrics outermost, so it times and counts the final status error_middleware produced.
        # body_deadline inside error_middleware: it answers its own 408, nothing logs a traceback.
        # guard enforces the route's access (authenticating the token only where the route
        # needs one), before any handler reads a body.
        # client_address first: every line and counter after it sees the real client.
        middlewares=[client_address_middleware(proxies), metrics_middleware, error_middleware,
                     body_deadline_middleware, guard_middleware],
        client_max_size=config.max_body_bytes,
    )
    app[config_key] = config
    app[runtime_key] = Runtime()
    app[passwords_key] = Passwords(config.bcrypt_rounds, max_pending=config.login_max_pending)
    app[throttle_key] = LoginThrottle(
        config.login_max_failures, config.login_max_failures_per_address,
        config.login_window_seconds,
        max_attempts_per_address=config.login_max_attempts_per_address)
    app[synth_key] = Synthesizer(config)
    setup_metrics(app)
    setup_routes(app)
    setup_admin(app)
    app.on_response_prepare.append(on_response_prepare)
    app.on_shutdown.append(mark_stopping)
    app.cleanup_ctx.append(passwords_ctx)
    app.cleanup_ctx.append(storage_ctx)
    app.cleanup_ctx.append(synth_ctx)
    app.cleanup_ctx.append(changes_ctx)
    app.cleanup_ctx.append(jobs_ctx)
    return app
