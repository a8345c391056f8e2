"""The one password check of a login (API, password change, admin page): throttled, same cost for all."""

from __future__ import annotations

from typing import Final

from idlakd.accounts.passwords import Passwords
from idlakd.accounts.throttle import LoginThrottle
from idlakd.errors import NotAuthenticated
from idlakd.store.sqlite import Store

LOGIN_INCORRECT: Final = "Login details are incorrect"


async def verify_login(throttle: LoginThrottle, store: Store, passwords: Passwords,
                       uid: str, password: str, address: str) -> None:
    """Check uid's password, or raise.

    Raises RateLimited while uid or address is throttled or the address used its attempts,
    Busy when too many checks wait already, NotAuthenticated when wrong. An unknown uid
    costs the same bcrypt check as a wrong password.
    """
    async with throttle.attempt(uid, address):
        stored_hash = await store.get_password_hash(uid)
        if not await passwords.check(password, stored_hash, key=address):
            throttle.failed(uid, address)
            raise NotAuthenticated(LOGIN_INCORRECT)
        throttle.succeeded(uid)
