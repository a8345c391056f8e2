"""The daemon's live state that is not configuration: start time, the draining and stopping flags."""

from __future__ import annotations

import dataclasses
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

    @property
    def uptime_seconds(self) -> float:
        """Seconds since the app started."""
        return time.time() - self.started_at
