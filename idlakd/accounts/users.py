"""The user operations that the API, the admin page, the CLI and the first start all call."""

from __future__ import annotations

import dataclasses
import logging
import os
import secrets
from pathlib import Path
from typing import Final

from idlakd.accounts.passwords import Passwords, generate_password
from idlakd.accounts.uids import UID_RULE, normalise_uid
from idlakd.errors import InvalidRequest
from idlakd.store.factory import Store

log = logging.getLogger(__name__)

FIRST_ADMIN_UID: Final = "admin"
# Where the first start also writes the first admin's password (0600, never overwritten).
INITIAL_PASSWORD_FILE: Final = "initial-admin-password"
USER_EXISTS: Final = "User id already exists"
NO_SUCH_USER: Final = "User does not exist"
ONLY_ADMIN: Final = "User is the only admin, there must be at least one admin in the system"


class UserError(InvalidRequest):
    """A user operation broke a rule; uid names the user it was about."""

    def __init__(self, message: str, uid: str) -> None:
        super().__init__(message)
        self.uid = uid


class BadUid(UserError):
    """The uid of a new user breaks UID_RULE."""

    def __init__(self, uid: str) -> None:
        super().__init__(f"uid: {UID_RULE}", uid)


class UserExists(UserError):
    """A new user's uid is taken."""

    def __init__(self, uid: str) -> None:
        super().__init__(USER_EXISTS, uid)


class NoSuchUser(UserError):
    """The user does not exist."""

    def __init__(self, uid: str) -> None:
        super().__init__(NO_SUCH_USER, uid)


class LastAdmin(UserError):
    """The change would leave no admin."""

    def __init__(self, uid: str) -> None:
        super().__init__(ONLY_ADMIN, uid)


@dataclasses.dataclass(frozen=True)
class NewCredentials:
    """A user's uid and generated password, shown once to whoever created or reset it."""

    uid: str
    password: str
    admin: bool


async def create_user(store: Store, passwords: Passwords, uid: str | None,
                      admin: bool) -> NewCredentials:
    """Create a user with a generated password (and a generated uid when None).

    The uid is stored normalised (look-alike spellings collide as UserExists); a uid that
    breaks the rule is refused before any hashing.
    """
    if uid is None:
        uid = secrets.token_hex(6)
    else:
        normalised = normalise_uid(uid)
        if normalised is None:
            raise BadUid(uid)
        uid = normalised
    password = generate_password()
    if not await store.add_user(uid, await passwords.hash(password), admin):
        raise UserExists(uid)
    return NewCredentials(uid, password, admin)


async def reset_password(store: Store, passwords: Passwords, uid: str) -> str:
    """Give a user a new generated password and return it."""
    password = generate_password()
    if not await store.set_password_hash(uid, await passwords.hash(password)):
        raise NoSuchUser(uid)
    return password


async def unlock_user(store: Store, uid: str) -> None:
    """Forgive a user's failed logins (every daemon applies it on its next check of uid)."""
    if not await store.unlock_user(uid):
        raise NoSuchUser(uid)


def _raise_for(outcome: str, uid: str) -> None:
    """Turn a store outcome ('missing', 'last_admin') into its error."""
    if outcome == "missing":
        raise NoSuchUser(uid)
    if outcome == "last_admin":
        raise LastAdmin(uid)


async def delete_user(store: Store, uid: str) -> None:
    """Delete a user; never the last admin."""
    _raise_for(await store.delete_user(uid), uid)


async def toggle_admin(store: Store, uid: str) -> bool:
    """Toggle a user's admin flag and return it; the last admin stays admin."""
    outcome, admin = await store.set_admin(uid, None)
    _raise_for(outcome, uid)
    return admin


async def set_admin(store: Store, uid: str, admin: bool) -> None:
    """Make a user an admin (admin=True) or not; the last admin stays admin."""
    outcome, _ = await store.set_admin(uid, admin)
    _raise_for(outcome, uid)


async def ensure_first_admin(store: Store, passwords: Passwords) -> NewCredentials | None:
    """On an empty database create FIRST_ADMIN_UID with a generated password (else None)."""
    if await store.count_users() > 0:
        return None
    try:
        return await create_user(store, passwords, FIRST_ADMIN_UID, admin=True)
    except UserExists:
        return None  # another process (the CLI) created it first


def write_initial_password(state_dir: Path, credentials: NewCredentials) -> Path | None:
    """Write the first admin's password to a new owner-only file in state_dir (blocking I/O).

    Returns its path, or None when the file exists already: it is never overwritten (it may be
    an operator's note, or a password another start wrote).
    """
    path = state_dir / INITIAL_PASSWORD_FILE
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        log.warning("%s exists already; the first admin's password is only on the console", path)
        return None
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(credentials.password + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    return path
