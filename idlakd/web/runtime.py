"""The daemon's live state that is not configuration: start time, the draining and stopping flags."""

from __future__ import annotations

import dataclasses
import secrets
import time

from idlakd import __version__


@dataclasses.dataclass
class Runtime:
    """Mutable process state, kept on the app (never in a module global)."""

    started_at: float = dataclasses.field(default_factory=time.time)
    # SIGTERM received: /readyz fails so balancers move away, requests are still served.
    draining: bool = False
    # Draining over: no longer listening, new speech refused while running streams finish.
    stopping: bool = False
    version: str = __version__
    # Request ids: this process's random prefix and a count (uuid4 read the kernel's random
    # source for every request; an id must be unique, not unguessable). 32 hex digits.
    id_prefix: str = dataclasses.field(default_factory=lambda: secrets.token_hex(8))
    ids_given: int = 0

    def new_request_id(self) -> str:
        """A request id no other request of any process is given."""
        self.ids_given += 1
        return f"{self.id_prefix}{self.ids_given:016x}"

    @property
    def uptime_seconds(self) -> float:
        """Seconds since the app started."""
        return time.time() - self.started_at
