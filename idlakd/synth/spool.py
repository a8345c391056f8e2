"""A write-once, read-back byte spool: in memory up to a size, then an unlinked temporary file."""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path
from typing import AsyncGenerator, Final

# Writes are gathered into pieces of about this size before a thread writes them:
# few thread hops per second of audio, and little held outside the spool.
_BATCH_BYTES: Final = 256 * 1024
READ_SIZE: Final = 256 * 1024


class Spool:
    """Bytes appended in order and read back once; memory stays under max_memory plus one batch.

    Past max_memory the content moves to an anonymous temporary file in
    directory (unlinked at once, so nothing is left behind even after a
    crash). Every file operation runs on a thread: the event loop never waits
    for the disk.
    """

    def __init__(self, max_memory: int, directory: Path | None = None) -> None:
        # No I/O here: a SpooledTemporaryFile creates its file only when it rolls over.
        self._file = tempfile.SpooledTemporaryFile(max_size=max_memory, dir=directory)
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self.size = 0

    async def write(self, data: bytes) -> None:
        """Append data (handed to a thread once a batch has gathered)."""
        if not data:
            return
        self._pending.append(data)
        self._pending_bytes += len(data)
        self.size += len(data)
        if self._pending_bytes >= _BATCH_BYTES:
            await self._flush()

    async def _flush(self) -> None:
        """Write the gathered pieces to the spool on a thread."""
        if not self._pending:
            return
        pieces, self._pending, self._pending_bytes = self._pending, [], 0
        await asyncio.to_thread(self._file.writelines, pieces)

    async def blocks(self, size: int = READ_SIZE) -> AsyncGenerator[bytes, None]:
        """Everything written, from the start, in blocks of at most size bytes."""
        await self._flush()
        await asyncio.to_thread(self._file.seek, 0)
        while block := await asyncio.to_thread(self._file.read, size):
            yield block

    async def aclose(self) -> None:
        """Drop the content (memory freed, file closed and so gone); safe to call twice."""
        self._pending = []
        await asyncio.to_thread(self._file.close)
