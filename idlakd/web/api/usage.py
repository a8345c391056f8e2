"""/auth/usage and /users/{uid}/usage|limits: quotas and usage over HTTP (logic in accounts.quotas)."""

from __future__ import annotations

import dataclasses
from typing import Any

from aiohttp import web

from idlakd.accounts.quotas import UsageReport
from idlakd.accounts.users import NoSuchUser
from idlakd.models import Limits
from idlakd.web.http import json_response
from idlakd.web.keys import quotas_key, store_key, user_key
from idlakd.web.validation import json_object


def usage_json(report: UsageReport) -> dict[str, Any]:
    """A usage report as the API shows it."""
    usage = report.usage
    return {"uid": report.uid, "day": usage.day, "requests": usage.requests,
            "characters": usage.characters, "audio_seconds": round(usage.audio_seconds, 3),
            "minute_characters": usage.minute_characters, "running": usage.running,
            "limits": dataclasses.asdict(report.limits)}


def limits_json(uid: str, limits: Limits, overrides: Limits, defaults: Limits) -> dict[str, Any]:
    """A user's limits in force, their overrides (null: the default) and the defaults."""
    return {"uid": uid, "limits": dataclasses.asdict(limits),
            "overrides": dataclasses.asdict(overrides), "defaults": dataclasses.asdict(defaults)}


async def _existing_uid(request: web.Request) -> str:
    """The {uid} of the path, which must name a user (else 422 like the other /users routes)."""
    uid = request.match_info["uid"]
    if await request.app[store_key].get_user(uid) is None:
        raise NoSuchUser(uid)
    return uid


async def own_usage(request: web.Request) -> web.Response:
    """GET /auth/usage: the caller's usage today and this minute, and the limits in force."""
    report = await request.app[quotas_key].report(request[user_key].uid)
    return json_response(usage_json(report))


async def user_usage(request: web.Request) -> web.Response:
    """GET /users/{uid}/usage: a user's usage (admins)."""
    report = await request.app[quotas_key].report(await _existing_uid(request))
    return json_response(usage_json(report))


async def get_limits(request: web.Request) -> web.Response:
    """GET /users/{uid}/limits: a user's limits, overrides and the defaults (admins)."""
    uid = await _existing_uid(request)
    quotas = request.app[quotas_key]
    limits, overrides = await quotas.limits(uid)
    return json_response(limits_json(uid, limits, overrides, quotas.defaults))


async def set_limits(request: web.Request) -> web.Response:
    """PUT /users/{uid}/limits {chars_per_minute?, chars_per_day?, concurrent?}: int >= 0 or null."""
    uid = request.match_info["uid"]
    quotas = request.app[quotas_key]
    limits, overrides = await quotas.set_limits(uid, await json_object(request))
    return json_response(limits_json(uid, limits, overrides, quotas.defaults))
