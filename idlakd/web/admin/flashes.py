"""One-shot messages for the admin page's next view (post/redirect/get), kept in memory."""

from __future__ import annotations

import dataclasses
import time
from typing import Final


@dataclasses.dataclass(frozen=True)
class Flash:
    """A message shown once on the next page: 'ok' or 'error', maybe with a one-time secret."""

    kind: str
    text: str
    secret: str | None = None
    secret_label: str = ""


class Flashes:
    """Messages waiting for the next page of a session (post/redirect/get), kept in memory.

    A generated password rides here, never in a cookie or a URL, and is gone once shown.
    """

    MAX_SESSIONS: Final = 10_000
    MAX_AGE_SECONDS: Final = 300.0

    def __init__(self) -> None:
        self._pending: dict[str, tuple[float, list[Flash]]] = {}

    def push(self, jti: str, flash: Flash) -> None:
        """Queue a message for the session's next page."""
        now = time.monotonic()
        if len(self._pending) >= self.MAX_SESSIONS:
            # Unread messages of abandoned sessions must not grow without bound.
            for key in [k for k, (t, _) in self._pending.items()
                        if t < now - self.MAX_AGE_SECONDS] or list(self._pending)[:100]:
                del self._pending[key]
        self._pending.setdefault(jti, (now, []))[1].append(flash)

    def pop(self, jti: str) -> list[Flash]:
        """The session's waiting messages (fresh ones only), removed."""
        stamped, flashes = self._pending.pop(jti, (0.0, []))
        return flashes if stamped >= time.monotonic() - self.MAX_AGE_SECONDS else []

    def forget(self, jti: str) -> None:
        """Drop a session's messages (on sign-out)."""
        self._pending.pop(jti, None)
