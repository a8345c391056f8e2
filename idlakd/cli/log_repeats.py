"""A logging filter that lets a repeated warning through a few times a minute, not every time."""

from __future__ import annotations

import logging
import threading
import time
from typing import Final

# While a dependency is down (the database), loops that retry every second (job polling, the
# change listener, readiness probes) would each log the same warning every time: ~20 lines a
# second with PostgreSQL stopped. Per message template, BURST lines pass in each WINDOW; the
# rest are counted and the next line that passes says how many were left out.
WINDOW_SECONDS: Final = 60.0
BURST: Final = 3


class RepeatFilter(logging.Filter):
    """Pass at most `burst` records of one (logger, level, template) per `window` seconds.

    Only WARNING and above are limited: access lines and DEBUG detail are not repeats of a
    fault. Called in the logging thread (a dict lookup under a lock; nothing is written).
    """

    def __init__(self, window: float = WINDOW_SECONDS, burst: int = BURST) -> None:
        super().__init__()
        self._window = window
        self._burst = burst
        self._lock = threading.Lock()
        # (logger, level, template) -> [window start, passed in it, left out since last passed]
        self._seen: dict[tuple[str, int, str], list[float]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        key = (record.name, record.levelno, str(record.msg))
        now = time.monotonic()
        with self._lock:
            state = self._seen.get(key)
            if state is None or now - state[0] >= self._window:
                left_out = int(state[2]) if state is not None else 0
                self._seen[key] = [now, 1, 0]
                if len(self._seen) > 10_000:  # templates are few; this bounds a pathological set
                    self._seen = {key: self._seen[key]}
            elif state[1] < self._burst:
                state[1] += 1
                left_out, state[2] = int(state[2]), 0
            else:
                state[2] += 1
                return False
        if left_out:
            record.msg = f"{record.msg} [{left_out} more like this left out]"
        return True
