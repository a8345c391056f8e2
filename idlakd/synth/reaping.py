"""Waiting for a child to exit when nobody may be reading its stdout any more."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Final

_DISCARD_SIZE: Final = 65536


async def _discard(stream: asyncio.StreamReader) -> None:
    """Read a stream to EOF and drop what comes."""
    with contextlib.suppress(RuntimeError):  # someone else is reading it: it is not paused
        while await stream.read(_DISCARD_SIZE):
            pass


async def reap(process: asyncio.subprocess.Process) -> int:
    """process.wait() that cannot hang on a paused stdout pipe.

    On Python 3.11 wait() returns only once every pipe is seen closed, and a pipe whose
    transport was paused (its reader stopped taking data, e.g. behind a slow client) is
    never seen closing; so whatever is left on stdout is read away while we wait.
    """
    drain = asyncio.ensure_future(_discard(process.stdout)) if process.stdout else None
    try:
        return await process.wait()
    finally:
        if drain is not None:
            drain.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await drain
