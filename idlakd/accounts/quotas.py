"""Per-user quotas (characters per minute and per UTC day, syntheses at once) and usage.

Counted in the store, so daemons sharing one database share the counts. Windows are fixed:
the current UTC minute and the current UTC day; a request over a limit is refused with the
seconds until its window ends. Syntheses at once are rows of the store, one per running
stream, named after the daemon that runs it: a daemon removes its own rows when it starts
(those a crash left), and a row older than the longest honest synthesis is not counted.
Each daemon also writes a heartbeat every HEARTBEAT_SECONDS; the rows of a daemon silent for
DEAD_AFTER_HEARTBEATS of them (killed, its host gone) are removed by the next live one, so a
user's syntheses at once are free again within seconds, not after the longest synthesis.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import functools
import logging
import math
import secrets
import socket
import time
from typing import Final, Mapping

from idlakd.accounts.users import NoSuchUser
from idlakd.config import Config
from idlakd.errors import InvalidRequest, RateLimited, StoreError, TooLarge
from idlakd.models import Limits, SynthesisCharge, Usage
from idlakd.store.factory import Store
from idlakd.store.sqlite import LIMIT_FIELDS

__all__ = ["LIMIT_FIELDS", "Quotas", "UsageReport", "check_limits", "utc_day"]

log = logging.getLogger(__name__)

#: Largest limit accepted (far above any use; keeps values inside every integer column).
MAX_LIMIT: Final = 1_000_000_000
BAD_LIMIT: Final = (f"Must be null (the configured default) or a whole number from 0 (no limit) "
                    f"to {MAX_LIMIT}.")
QUOTA_CODE: Final = "quota_exceeded"
#: Retry-After of a refusal for syntheses at once: when one ends is not known.
CONCURRENT_RETRY_SECONDS: Final = 1
#: How often a daemon says it is alive.
HEARTBEAT_SECONDS: Final = 2.0
#: A daemon silent this many heartbeats is dead: its running syntheses stop counting.
DEAD_AFTER_HEARTBEATS: Final = 3


@dataclasses.dataclass(frozen=True)
class UsageReport:
    """A user's usage with the limits in force (0: none) and the stored overrides (None: default)."""

    uid: str
    usage: Usage
    limits: Limits
    overrides: Limits


def utc_day(now: float) -> str:
    """The UTC day of a time, as YYYY-MM-DD."""
    return datetime.datetime.fromtimestamp(now, datetime.timezone.utc).date().isoformat()


def _seconds_to_next_day(now: float) -> int:
    """Whole seconds (at least 1) until the next UTC midnight."""
    return max(1, math.ceil(86400 - now % 86400))


def _seconds_to_next_minute(now: float) -> int:
    """Whole seconds (at least 1) until the next UTC minute."""
    return max(1, math.ceil(60 - now % 60))


def _refusal(limits: Limits, characters: int, now: float, usage: Usage) -> RateLimited | None:
    """Why a request of characters may not start now, given usage; None when it may."""
    if limits.concurrent and usage.running >= limits.concurrent:
        return RateLimited(f"Quota exceeded: {limits.concurrent} concurrent syntheses; try "
                           "again when one has ended", CONCURRENT_RETRY_SECONDS, QUOTA_CODE)
    return _characters_refusal(limits, characters, now, usage)


def _characters_refusal(limits: Limits, characters: int, now: float,
                        usage: Usage) -> RateLimited | None:
    """Why characters more may not be said now, given usage; None when they may."""
    per_minute, per_day = limits.chars_per_minute, limits.chars_per_day
    if per_minute and usage.minute_characters + characters > per_minute:
        wait = _seconds_to_next_minute(now)
        return RateLimited(f"Quota exceeded: {per_minute} characters per minute; try again in "
                           f"{wait} s", wait, QUOTA_CODE)
    if per_day and usage.characters + characters > per_day:
        wait = _seconds_to_next_day(now)
        return RateLimited(f"Quota exceeded: {per_day} characters per day; try again in "
                           f"{wait} s", wait, QUOTA_CODE)
    return None


def check_limits(changes: Mapping[str, object]) -> dict[str, int | None]:
    """Limit changes checked: each a known limit, null or a whole number 0..MAX_LIMIT (one 422)."""
    checked: dict[str, int | None] = {}
    errors: list[str] = []
    for name, value in changes.items():
        if name not in LIMIT_FIELDS:
            errors.append(f"{name}: Unknown field.")
        elif value is None or (isinstance(value, int) and not isinstance(value, bool)
                               and 0 <= value <= MAX_LIMIT):
            checked[name] = value
        else:
            errors.append(f"{name}: {BAD_LIMIT}")
    if errors:
        raise InvalidRequest(", ".join(errors))
    return checked


class Quotas:
    """The quota checks and usage records of one daemon (or one CLI command) on a store."""

    def __init__(self, store: Store, defaults: Limits, stale_seconds: float, daemon: str) -> None:
        self._store = store
        self.defaults = defaults
        # A running row older than this belongs to a synthesis that cannot still be honest.
        self._stale_seconds = stale_seconds
        self.daemon = daemon
        self._finishing: set[asyncio.Task[None]] = set()
        self._heartbeat: asyncio.Task[None] | None = None

    @classmethod
    def from_config(cls, store: Store, config: Config) -> "Quotas":
        """Defaults from the config; this daemon named by host name and port."""
        defaults = Limits(config.quota_chars_per_minute, config.quota_chars_per_day,
                          config.quota_concurrent)
        stale = config.max_audio_seconds + config.synthesis_timeout_seconds
        return cls(store, defaults, stale, f"{socket.gethostname()}:{config.port}")

    async def start(self) -> None:
        """Forget the running syntheses an earlier run of this daemon left (it crashed), say
        this daemon is alive, and keep saying it until close()."""
        left = await self._store.forget_running(self.daemon)
        if left:
            log.info("Forgot %d syntheses a previous run of this daemon left running", left)
        await self._beat()
        self._heartbeat = asyncio.create_task(self._beat_forever())

    async def _beat(self) -> None:
        """One heartbeat: this daemon is alive; the syntheses of dead ones go."""
        now = time.time()
        gone = await self._store.daemon_seen(
            self.daemon, now, now - DEAD_AFTER_HEARTBEATS * HEARTBEAT_SECONDS)
        if gone:
            log.info("Forgot %d running syntheses of daemons silent for %g s", gone,
                     DEAD_AFTER_HEARTBEATS * HEARTBEAT_SECONDS)

    async def _beat_forever(self) -> None:
        """A heartbeat every HEARTBEAT_SECONDS; a failed one is logged (the next may work)."""
        while True:
            await asyncio.sleep(HEARTBEAT_SECONDS)
            try:
                await self._beat()
            except StoreError as exc:
                log.warning("Could not write this daemon's heartbeat: %s", exc)

    async def close(self) -> None:
        """Stop the heartbeat; wait for the usage records still being written (before the
        store closes)."""
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            await asyncio.gather(self._heartbeat, return_exceptions=True)
            self._heartbeat = None
        while self._finishing:
            await asyncio.gather(*self._finishing, return_exceptions=True)

    def _effective(self, overrides: Limits) -> Limits:
        """The limits in force: each override, or the default where there is none."""
        return Limits(*(getattr(overrides, name) if getattr(overrides, name) is not None
                        else getattr(self.defaults, name) for name in LIMIT_FIELDS))

    async def limits(self, uid: str) -> tuple[Limits, Limits]:
        """(limits in force, stored overrides) of a user."""
        overrides = await self._store.get_limits(uid)
        return self._effective(overrides), overrides

    async def set_limits(self, uid: str, changes: Mapping[str, object]) -> tuple[Limits, Limits]:
        """Change some of a user's overrides (None: back to the default); the new limits."""
        overrides = await self._store.set_limits(uid, check_limits(changes))
        if overrides is None:
            raise NoSuchUser(uid)
        return self._effective(overrides), overrides

    async def report(self, uid: str) -> UsageReport:
        """A user's usage today and this minute, running syntheses, and limits."""
        now = time.time()
        usage = await self._store.usage(uid, utc_day(now), int(now // 60),
                                        now - self._stale_seconds)
        effective, overrides = await self.limits(uid)
        return UsageReport(uid, usage, effective, overrides)

    async def reports(self, uids: list[str]) -> dict[str, UsageReport]:
        """The report of every listed user, in two reads (the admin page)."""
        now = time.time()
        day = utc_day(now)
        used = await self._store.usage_by_user(day, int(now // 60), now - self._stale_seconds)
        stored = await self._store.limits_by_user()
        return {uid: UsageReport(uid, used.get(uid, Usage(day=day)),
                                 self._effective(stored.get(uid, Limits())),
                                 stored.get(uid, Limits()))
                for uid in uids}

    async def admit(self, uid: str, characters: int) -> SynthesisCharge:
        """Check a synthesis of characters against uid's limits and count it, in one transaction.

        Raises RateLimited (429) over a limit, TooLarge (413) when the text alone is more than
        a limit allows in a whole window. The caller must finish() the charge.
        """
        limits, _ = await self.limits(uid)
        return await self._admit(uid, characters, limits)

    async def admit_job(self, uid: str, characters: int) -> SynthesisCharge:
        """Like admit, for a job's text: it counts for the day only, and only the per-day limit
        applies (a job is spoken over hours, not at once: it neither uses up the minute's
        characters nor counts as a synthesis at once). finish() it at once."""
        limits, _ = await self.limits(uid)
        return await self._admit(uid, characters, Limits(0, limits.chars_per_day, 0),
                                 per_minute=False)

    async def _admit(self, uid: str, characters: int, limits: Limits,
                     per_minute: bool = True) -> SynthesisCharge:
        """Check characters against limits and count them, in one transaction."""
        for limit, window in ((limits.chars_per_minute, "minute"), (limits.chars_per_day, "day")):
            if limit and characters > limit:
                raise TooLarge(f"Quota exceeded: {limit} characters per {window}, and this text "
                               f"alone has {characters}", code=QUOTA_CODE)
        now = time.time()
        charge = SynthesisCharge(id=secrets.token_hex(12), uid=uid, day=utc_day(now),
                                 minute=int(now // 60), characters=characters,
                                 daemon=self.daemon, started_at=now, per_minute=per_minute)
        refusal = await self._store.charge(charge, now - self._stale_seconds,
                                           functools.partial(_refusal, limits, characters, now))
        if refusal is not None:
            raise refusal
        return charge

    async def spend(self, charge: SynthesisCharge, characters: int) -> None:
        """Count characters more of a running synthesis (a live session says text as it comes).

        Raises RateLimited over the minute or day limit (nothing is counted then). The
        characters are never refunded: they were said.
        """
        limits, _ = await self.limits(charge.uid)
        now = time.time()
        refusal = await self._store.spend(
            charge.uid, utc_day(now), int(now // 60), characters,
            functools.partial(_characters_refusal, limits, characters, now))
        if refusal is not None:
            raise refusal

    async def finish(self, charge: SynthesisCharge, audio_seconds: float | None,
                     served: bool) -> None:
        """The synthesis ended: add its audio seconds, or undo the charge when nothing was served.

        The write finishes even when the caller is cancelled (a client that hung up); a failed
        write is logged, not raised: the answer is already given, and the row goes stale.
        """
        task = asyncio.ensure_future(self._finish(charge, audio_seconds or 0.0, served))
        self._finishing.add(task)
        task.add_done_callback(self._finishing.discard)
        await asyncio.shield(task)

    async def add_audio(self, uid: str, audio_seconds: float) -> None:
        """Count seconds of audio made for uid today (a job's, when it is done)."""
        if audio_seconds > 0:
            await self._store.add_audio_seconds(uid, utc_day(time.time()), audio_seconds)

    async def _finish(self, charge: SynthesisCharge, audio_seconds: float, served: bool) -> None:
        """Write the end of a charged synthesis."""
        try:
            await self._store.finish_charge(charge, audio_seconds, refund=not served)
        except StoreError as exc:
            log.warning("Could not record the end of a synthesis of user %s: %s", charge.uid, exc)
