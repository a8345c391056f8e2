"""systemd's notify protocol (READY=1, STOPPING=1, WATCHDOG=1) over $NOTIFY_SOCKET, without libsystemd."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Mapping
from typing import Final

log = logging.getLogger(__name__)

# systemd recommends pinging at half the watchdog interval, so one late ping is not fatal.
WATCHDOG_FRACTION: Final = 0.5


class Notifier:
    """Sends state lines to the service manager; does nothing when not started by systemd."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        self.address = _socket_address(env.get("NOTIFY_SOCKET", ""))
        self.watchdog_seconds = _watchdog_seconds(env)
        self._sock: socket.socket | None = None

    @property
    def enabled(self) -> bool:
        """Whether a NOTIFY_SOCKET was given."""
        return self.address is not None

    def notify(self, *states: str) -> bool:
        """Send one datagram of KEY=VALUE lines; False (with a warning) when it could not go."""
        if self.address is None:
            return False
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                # A datagram to a local socket either goes at once or fails; never wait on the loop.
                self._sock.setblocking(False)
            self._sock.sendto("\n".join(states).encode(), self.address)
        except OSError as exc:
            log.warning("Could not notify systemd (%s): %s", states[0] if states else "", exc)
            return False
        return True

    def close(self) -> None:
        """Close the socket (idempotent)."""
        if self._sock is not None:
            sock, self._sock = self._sock, None
            sock.close()

    async def watchdog(self) -> None:
        """Send WATCHDOG=1 every half interval until cancelled; a stalled loop stops the pings."""
        if self.watchdog_seconds is None or not self.enabled:
            return
        interval = self.watchdog_seconds * WATCHDOG_FRACTION
        log.info("systemd watchdog: pinging every %.1f s", interval)
        while True:
            self.notify("WATCHDOG=1")
            await asyncio.sleep(interval)


def _socket_address(raw: str) -> str | bytes | None:
    """The socket path; a leading '@' names a Linux abstract socket (a NUL byte on the wire)."""
    if not raw:
        return None
    if raw.startswith("@"):
        return b"\0" + raw[1:].encode()
    if raw.startswith("/"):
        return raw
    # vsock: addresses and the like are for VMs; not supported, so stay silent rather than fail.
    log.warning("NOTIFY_SOCKET %r is not a unix socket path; not notifying systemd", raw)
    return None


def _watchdog_seconds(env: Mapping[str, str]) -> float | None:
    """The watchdog interval from WATCHDOG_USEC, if it is meant for this process."""
    usec = env.get("WATCHDOG_USEC", "")
    if not usec:
        return None
    pid = env.get("WATCHDOG_PID", "")
    # WATCHDOG_PID names the process systemd watches; a child that inherited the variable must not ping.
    if pid and pid != str(os.getpid()):
        return None
    try:
        value = int(usec)
    except ValueError:
        log.warning("WATCHDOG_USEC %r is not a number; watchdog pings disabled", usec)
        return None
    return value / 1_000_000 if value > 0 else None
