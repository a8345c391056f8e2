"""The one password check of a login (API, password change, admin page): throttled, same cost for all."""

from __future__ import annotations

from typing import Final

from idlakd.accounts.passwords import Passwords
from idlakd.accounts.throttle import LoginThrottle
from idlakd.errors import NotAuthenticated
from idlakd.store.factory import Store

LOGIN_INCORRECT: Final = "Login details are incorrect"


async def verify_login(throttle: LoginThrottle, store: Store, passwords: Passwords,
                       uid: str, password: str, address: str) -> None:
    """Check uid's password from the client address, or raise.

    Raises RateLimited while the attempt is throttled (see LoginThrottle: an address uid logged
    in from before has its own window), Busy when too many checks wait already,
    NotAuthenticated when wrong. An unknown uid costs the same bcrypt check as a wrong password.
    A correct password makes the address known for uid.
    """
    state = await store.login_state(uid, address)
    async with throttle.attempt(store, uid, address, state.known_address, state.unlocked_at):
        if not await passwords.check(password, state.password_hash, key=address):
            # Counted in the store before the answer: a failure the store did not take
            # (busy: 503) is never answered as a mere wrong password.
            await throttle.failed(store, uid, address, state.known_address)
            raise NotAuthenticated(LOGIN_INCORRECT)
        await throttle.succeeded(store, uid, address, state.known_address)
    if not state.known_address:
        await store.remember_login_address(uid, address)
