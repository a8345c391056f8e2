"""The daemon's live state that is not configuration: start time and the stopping flag."""

from __future__ import annotations

import dataclasses
import time

from idlakd import __version__


@dataclasses.dataclass
class Runtime:
    """Mutable process state, kept on the app (never in a module global)."""

    started_at: float = dataclasses.field(default_factory=time.time)
    stopping: bool = False
    version: str = __version__

    @property
    def uptime_seconds(self) -> float:
        """Seconds since the app started."""
        return time.time() - self.started_at
