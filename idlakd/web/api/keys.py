"""/auth/keys and /users/{uid}/keys: API keys, one's own and (for admins) anyone's."""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from idlakd.accounts import keys as api_keys
from idlakd.models import ApiKey
from idlakd.web.http import json_response
from idlakd.web.keys import config_key, store_key, user_key
from idlakd.web.validation import Fields, json_object


def key_json(key: ApiKey) -> dict[str, Any]:
    """A key as clients see it: never the key itself nor its digest."""
    return {"id": key.id, "name": key.name, "prefix": key.prefix,
            "created_at": api_keys.utc_text(key.created_at),
            "last_used_at": api_keys.utc_text(key.last_used_at),
            "expires_at": api_keys.utc_text(key.expires_at)}


def _new_key_fields(body: dict[str, Any]) -> tuple[str, int | None]:
    """(name, expires_in_days) from {name, expires_in_days?}; one 422 names every bad field."""
    fields = Fields(body)
    name = fields.string("name", required=True, max_length=None)
    days = body.get("expires_in_days")
    for field, reason in api_keys.field_problems(name, days):
        fields.error(field, reason)
    fields.check()
    assert name is not None and (days is None or isinstance(days, int))
    return name, days


async def create_key(request: web.Request) -> web.Response:
    """POST /auth/keys {name, expires_in_days?} -> the key (shown only here) and its record."""
    name, days = _new_key_fields(await json_object(request))
    created = await api_keys.create_key(
        request.app[store_key], request[user_key].uid, name, days,
        request.app[config_key].max_api_keys_per_user, time.time())
    return json_response({"key": created.key, **key_json(created.record)})


async def list_own_keys(request: web.Request) -> web.Response:
    """GET /auth/keys -> {keys: [...]}: the caller's keys."""
    found = await api_keys.list_keys(request.app[store_key], request[user_key].uid)
    return json_response({"keys": [key_json(k) for k in found]})


async def revoke_own_key(request: web.Request) -> web.Response:
    """DELETE /auth/keys/{key_id}: revoke one of the caller's keys (404 for anyone else's)."""
    revoked = await api_keys.revoke_key(request.app[store_key], request.match_info["key_id"],
                                        request[user_key].uid)
    return json_response({"message": f"API key '{revoked.id}' has been revoked"})


async def list_user_keys(request: web.Request) -> web.Response:
    """GET /users/{uid}/keys -> {keys: [...]}: a user's keys (admins)."""
    found = await api_keys.list_keys(request.app[store_key], request.match_info["uid"])
    return json_response({"keys": [key_json(k) for k in found]})


async def revoke_user_key(request: web.Request) -> web.Response:
    """DELETE /users/{uid}/keys/{key_id}: revoke a user's key (admins)."""
    revoked = await api_keys.revoke_key(request.app[store_key], request.match_info["key_id"],
                                        request.match_info["uid"])
    return json_response({"message": f"API key '{revoked.id}' has been revoked"})
