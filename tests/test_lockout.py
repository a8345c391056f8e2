"""A lockout that cannot be turned against users, from outside: an attacker's failures do not
stop the owner's correct login from an address they logged in from before; `idlakd user
unlock` reaches a running daemon."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import AsyncIterator

import aiohttp
import pytest

from tests.helpers.daemon import REPO, Daemon, start_daemon, wait_listening
from tests.helpers.postgres import state_env

OWNER = "127.0.0.1"
ATTACKER = "127.0.0.2"
ELSEWHERE = "127.0.0.3"  # the owner on a new network, or a second attacker


def session_from(address: str) -> aiohttp.ClientSession:
    """A client whose connections leave from this loopback address."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(address, 0)))


async def status(address: str, daemon: Daemon, uid: str, password: str,
                 headers: dict[str, str] | None = None) -> int:
    """POST /auth from address; the status."""
    async with session_from(address) as session:
        async with session.post(daemon.url + "/auth", headers=headers,
                                json={"uid": uid, "password": password}) as resp:
            await resp.read()
            return resp.status


def idlakd(state: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The real command line on the daemon's state directory."""
    env = os.environ | {**state_env(state), "IDLAKD_BCRYPT_ROUNDS": "4"}
    return subprocess.run([sys.executable, "-m", "idlakd", *args], capture_output=True,
                          text=True, env=env, timeout=60, cwd=REPO)


@pytest.fixture
async def daemon(tmp_path: Path) -> AsyncIterator[Daemon]:
    """`idlakd serve` with 10 failures per uid, trusting 127.0.0.1 as a proxy (127.0.0.2 and
    127.0.0.3 are direct clients)."""
    started = start_daemon(tmp_path, login_max_failures="10", trusted_proxies=OWNER)
    try:
        await wait_listening(started)
        yield started
    finally:
        started.kill()


def new_user(daemon: Daemon, state: Path, uid: str) -> str:
    """Create uid from the shell; its password."""
    proc = idlakd(state, "user", "add", uid)
    assert proc.returncode == 0, proc.stderr
    match = re.search(rf"<User {uid}:([^:]+):False>", proc.stdout)
    assert match, proc.stdout
    return match.group(1)


async def test_an_attackers_failures_do_not_stop_the_owner(daemon: Daemon, tmp_path: Path) -> None:
    password = new_user(daemon, tmp_path / "state", "olive")
    assert await status(OWNER, daemon, "olive", password) == 200  # the owner's address is known
    attempts = [await status(ATTACKER, daemon, "olive", f"guess-{n}") for n in range(20)]
    assert attempts == [401] * 10 + [429] * 10, attempts
    # The owner, from the address they logged in from before: not refused.
    assert await status(OWNER, daemon, "olive", password) == 200
    # From an address never used for olive the uid is locked, even with the right password.
    assert await status(ELSEWHERE, daemon, "olive", password) == 429
    # The known address has a window of its own: guesses from it are bounded too.
    attempts = [await status(OWNER, daemon, "olive", f"typo-{n}") for n in range(11)]
    assert attempts == [401] * 10 + [429], attempts
    assert await status(OWNER, daemon, "olive", password) == 429


async def test_behind_a_trusted_proxy_each_client_is_its_own_address(
        daemon: Daemon, tmp_path: Path) -> None:
    """Owner and attacker behind the same proxy (127.0.0.1): the forwarded client decides."""
    password = new_user(daemon, tmp_path / "state", "pat")
    owner, attacker = {"X-Forwarded-For": "203.0.113.5"}, {"X-Forwarded-For": "198.51.100.66"}
    assert await status(OWNER, daemon, "pat", password, owner) == 200
    attempts = [await status(OWNER, daemon, "pat", f"guess-{n}", attacker) for n in range(20)]
    assert attempts.count(429) == 10, attempts
    assert await status(OWNER, daemon, "pat", password, owner) == 200
    assert await status(OWNER, daemon, "pat", password, attacker) == 429


async def test_known_addresses_survive_a_restart(tmp_path: Path) -> None:
    """Known addresses live in the store: a restart does not reopen the lockout."""
    state = tmp_path / "state"
    first = start_daemon(tmp_path, login_max_failures="3")
    try:
        await wait_listening(first)
        password = new_user(first, state, "quinn")
        assert await status(OWNER, first, "quinn", password) == 200
    finally:
        first.kill()
    second = start_daemon(tmp_path, login_max_failures="3")
    try:
        await wait_listening(second)
        assert [await status(ATTACKER, second, "quinn", "x") for _ in range(4)][-1] == 429
        assert await status(OWNER, second, "quinn", password) == 200
    finally:
        second.kill()


async def test_unlock_from_the_shell_reaches_the_running_daemon(
        daemon: Daemon, tmp_path: Path) -> None:
    state = tmp_path / "state"
    password = new_user(daemon, state, "rita")
    for n in range(10):
        assert await status(ATTACKER, daemon, "rita", f"guess-{n}") == 401
    assert await status(ELSEWHERE, daemon, "rita", password) == 429
    proc = idlakd(state, "user", "unlock", "rita")
    assert proc.returncode == 0, proc.stderr
    assert "unlocked" in proc.stdout
    # The daemon keeps failures in memory, and reads the unlock on its next check.
    assert await status(ELSEWHERE, daemon, "rita", password) == 200
    # Failures after the unlock count again.
    for n in range(10):
        assert await status(ATTACKER, daemon, "rita", f"again-{n}") == 401
    assert await status(ATTACKER, daemon, "rita", "once-more") == 429
    missing = idlakd(state, "user", "unlock", "nobody")
    assert missing.returncode == 1 and "does not exist" in missing.stderr


async def test_a_password_reset_also_unlocks(daemon: Daemon, tmp_path: Path) -> None:
    """`idlakd user passwd` on a locked user: the new password works at once."""
    state = tmp_path / "state"
    new_user(daemon, state, "sam")
    for n in range(10):
        assert await status(ATTACKER, daemon, "sam", f"guess-{n}") == 401
    proc = idlakd(state, "user", "passwd", "sam")
    assert proc.returncode == 0, proc.stderr
    match = re.search(r"<User sam:([^:]+):False>", proc.stdout)
    assert match
    assert await status(ELSEWHERE, daemon, "sam", match.group(1)) == 200
