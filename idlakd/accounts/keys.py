"""API keys: long-lived credentials for programs, made, listed, revoked and checked here.

A key is `idk_` and 256 random bits (URL-safe base64). Only its SHA-256 digest is stored:
a key that random cannot be guessed from its digest, so a slow hash (bcrypt) buys nothing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import hashlib
import hmac
import logging
import re
import secrets
from typing import Final

from idlakd.accounts.tokens import NO_SUCH_USER
from idlakd.accounts.users import NoSuchUser
from idlakd.errors import InvalidRequest, NotAuthenticated, NotFound, StoreError
from idlakd.models import ApiKey, User
from idlakd.store.factory import Store

log = logging.getLogger(__name__)

KEY_PREFIX: Final = "idk_"
KEY_BYTES: Final = 32
# What a key looks like: the prefix, then 43 characters of URL-safe base64 (256 bits).
KEY_PATTERN: Final = re.compile(r"idk_[A-Za-z0-9_-]{43}")
# How much of a key is kept in clear, to tell keys apart in lists ("idk_" + 8 characters).
SHOWN_PREFIX_LENGTH: Final = 12
MAX_NAME_LENGTH: Final = 64
MAX_DAYS: Final = 3650
# A key's last use is written at most this often: a busy key must not cost a write per request.
LAST_USED_EVERY_SECONDS: Final = 60.0

NAME_RULE: Final = f"Must be 1 to {MAX_NAME_LENGTH} printable characters."
DAYS_RULE: Final = f"Must be a whole number of days from 1 to {MAX_DAYS}."
KEY_INVALID: Final = "API key is invalid or has been revoked"
KEY_EXPIRED: Final = "API key has expired"
NO_SUCH_KEY: Final = "API key does not exist"
KEY_ENDED: Final = "API key was ended by a password change; make a new one"


TOO_MANY_KEYS: Final = "Too many API keys: a user may hold at most {limit}; revoke one first"


def too_many_keys(limit: int) -> str:
    """The refusal of a key beyond max_api_keys_per_user."""
    return TOO_MANY_KEYS.format(limit=limit)


@dataclasses.dataclass(frozen=True)
class PresentedKey:
    """A well-formed key from a request, kept only as its digest (the key is not carried on)."""

    digest: bytes


@dataclasses.dataclass(frozen=True)
class NewKey:
    """A key just made: the key itself, shown once to whoever made it, and its record."""

    key: str
    record: ApiKey


def digest_of(key: str) -> bytes:
    """The SHA-256 digest a key is stored and looked up by."""
    return hashlib.sha256(key.encode()).digest()


def looks_like_key(credential: str) -> bool:
    """Whether a bearer credential is meant as an API key (not a JWT): it has the key prefix."""
    return credential.startswith(KEY_PREFIX)


def presented(credential: str) -> PresentedKey:
    """A bearer credential with the key prefix, checked for shape and hashed; else 401."""
    if KEY_PATTERN.fullmatch(credential) is None:
        raise NotAuthenticated(KEY_INVALID)
    return PresentedKey(digest_of(credential))


def field_problems(name: str | None, expires_in_days: object) -> list[tuple[str, str]]:
    """(field, reason) for each rule a new key's name (when given) or lifetime breaks."""
    problems: list[tuple[str, str]] = []
    if name is not None:
        stripped = name.strip()
        if not stripped or len(stripped) > MAX_NAME_LENGTH or not stripped.isprintable():
            problems.append(("name", NAME_RULE))
    if expires_in_days is not None and (
            isinstance(expires_in_days, bool) or not isinstance(expires_in_days, int)
            or not 1 <= expires_in_days <= MAX_DAYS):
        problems.append(("expires_in_days", DAYS_RULE))
    return problems


async def create_key(store: Store, uid: str, name: str, expires_in_days: int | None,
                     limit: int, now: float) -> NewKey:
    """Make a key for an existing user; the key is in the answer and nowhere else."""
    problems = field_problems(name, expires_in_days)
    if problems:
        raise InvalidRequest(", ".join(f"{field}: {reason}" for field, reason in problems))
    key = KEY_PREFIX + secrets.token_urlsafe(KEY_BYTES)
    record = ApiKey(id=secrets.token_hex(8), uid=uid, name=name.strip(),
                    prefix=key[:SHOWN_PREFIX_LENGTH], created_at=now, last_used_at=None,
                    expires_at=None if expires_in_days is None else now + expires_in_days * 86400)
    outcome = await store.add_api_key(record, digest_of(key), limit)
    if outcome == "missing":
        raise NoSuchUser(uid)
    if outcome == "too_many":
        raise InvalidRequest(too_many_keys(limit))
    return NewKey(key, record)


async def list_keys(store: Store, uid: str | None) -> list[ApiKey]:
    """The keys of one existing user (NoSuchUser otherwise), or of everyone when uid is None."""
    if uid is not None and await store.get_user(uid) is None:
        raise NoSuchUser(uid)
    return await store.list_api_keys(uid)


async def revoke_key(store: Store, key_id: str, uid: str | None) -> ApiKey:
    """Delete a key (of this user, when given); NotFound when there is no such key."""
    revoked = await store.delete_api_key(key_id, uid)
    if revoked is None:
        raise NotFound(NO_SUCH_KEY)
    log.info("API key %s of %s revoked", revoked.id, revoked.uid)
    return revoked


async def revoke_presented(store: Store, key: PresentedKey) -> None:
    """Delete the key a request presented (POST /auth/expire with a key), if it still exists."""
    found = await store.api_key_holder(key.digest)
    if found is not None:
        with contextlib.suppress(NotFound):  # revoked meanwhile: what was asked is done
            await revoke_key(store, found.key.id, found.key.uid)


async def key_holder(store: Store, key: PresentedKey, now: float) -> tuple[ApiKey, User]:
    """The key and the user it stands for, or NotAuthenticated (unknown, dead or expired).

    A password change or reset ends the keys made before it, as it ends tokens: a key made
    with a leaked password must not outlive the reset. Its last use is noted at most every
    LAST_USED_EVERY_SECONDS, and never at the price of the request: a database that takes
    no write now still lets the key in.
    """
    found = await store.api_key_holder(key.digest)
    # Found by digest; compared again in constant time, so no answer depends on how much
    # of a digest matched.
    if found is None or not hmac.compare_digest(found.digest, key.digest):
        raise NotAuthenticated(KEY_INVALID)
    record, user = found.key, found.user
    if user is None:
        raise NotAuthenticated(NO_SUCH_USER)
    if record.created_at < found.valid_after:
        raise NotAuthenticated(KEY_ENDED)
    if record.expires_at is not None and now >= record.expires_at:
        raise NotAuthenticated(KEY_EXPIRED)
    if record.last_used_at is None or now - record.last_used_at >= LAST_USED_EVERY_SECONDS:
        try:
            await store.touch_api_key(record.id, now, now - LAST_USED_EVERY_SECONDS)
        except StoreError as exc:
            log.warning("Could not note the use of API key %s: %s", record.id, exc)
    return record, user


def utc_text(at: float | None) -> str | None:
    """An instant as ISO 8601 UTC to the second ('2025-01-31T12:00:00Z'), or None."""
    if at is None:
        return None
    return datetime.datetime.fromtimestamp(at, datetime.timezone.utc).strftime(
        "%Y-%m-%dT%H:%M:%SZ")
