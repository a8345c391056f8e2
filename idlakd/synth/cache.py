"""Optional on-disk cache of finished audio, LRU-bounded in bytes, written atomically.

An entry is written while its answer streams, and made durable (fsync,
rename) only after the answer's last byte: no client waits for the disk.
Identical requests arriving while one synthesises wait for its entry
instead of synthesising again (single flight).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Final

from idlakd.synth.options import SpeechOptions

log = logging.getLogger(__name__)

_TEMP_PREFIX: Final = ".partial-"
_READ_SIZE: Final = 256 * 1024


def cache_key(voice_id: str, voice_version: str, audio_format: str, text: str,
              options: SpeechOptions = SpeechOptions()) -> str:
    """The file name for one (voice, version, format, text, what shapes the audio): a hash, so any text is safe."""
    # Whether it streams, and which marks are collected, do not change the bytes.
    shape = [options.sample_rate, options.speed, options.pitch, options.volume, options.text_type]
    blob = json.dumps([voice_id, voice_version, audio_format, text, *shape], ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest() + "." + audio_format


class CacheEntryWriter:
    """A cache file being written: a hidden temp file until commit() renames it into place."""

    def __init__(self, cache: "AudioCache", key: str, handle: BinaryIO, temp_path: Path,
                 flight: asyncio.Event) -> None:
        self._cache = cache
        self.key = key
        self._handle = handle
        self._temp_path = temp_path
        self._flight = flight
        self.size = 0
        # No more writes: set by commit() and abort(), which then own the file.
        self._closed = False
        self._commit: asyncio.Task[bool] | None = None
        # Too big for the cache: the rest is not written, and nothing is committed.
        self.overflow = False

    @property
    def closed(self) -> bool:
        """Whether commit() or abort() was called (no more writes)."""
        return self._closed

    async def write(self, data: bytes) -> None:
        """Append data (off the event loop)."""
        if self._closed or self.overflow or not data:
            return
        if self.size + len(data) > self._cache.max_bytes:
            self.overflow = True
            return
        await asyncio.to_thread(self._handle.write, data)
        self.size += len(data)

    async def write_at(self, offset: int, data: bytes) -> None:
        """Overwrite bytes already written (e.g. the WAV header once the sizes are known)."""
        if self._closed or self.overflow:
            return

        def patch() -> None:
            self._handle.seek(offset)
            self._handle.write(data)
            self._handle.seek(0, os.SEEK_END)

        await asyncio.to_thread(patch)

    async def commit(self) -> bool:
        """Make the entry visible (flush, fsync, rename, index); False if it was dropped.

        Once begun the commit runs to its end even if the caller is cancelled:
        a renamed file is always indexed (or removed), never left unknown.
        """
        if self._closed:
            return False
        if self.overflow:
            await self.abort()
            return False
        self._closed = True
        self._commit = asyncio.create_task(self._finish())
        return await asyncio.shield(self._commit)

    async def _finish(self) -> bool:
        """The commit itself: durable file, then the index; the waiting twins are told."""
        final = self._cache.directory / self.key

        def finish() -> None:
            try:
                self._handle.flush()
                os.fsync(self._handle.fileno())
            finally:
                self._handle.close()
            os.replace(self._temp_path, final)

        try:
            await asyncio.to_thread(finish)
        except OSError as exc:
            log.warning("Could not store %s in the audio cache: %s", self.key, exc)
            await asyncio.to_thread(_unlink_quietly, self._temp_path)
            return False
        else:
            await self._cache._added(self.key, self.size)
            return True
        finally:
            self._cache._landed(self.key, self._flight)

    async def abort(self) -> None:
        """Throw the partial entry away; it never becomes visible."""
        if self._closed:
            return
        self._closed = True

        def drop() -> None:
            self._handle.close()
            _unlink_quietly(self._temp_path)

        try:
            await asyncio.to_thread(drop)
        finally:
            self._cache._landed(self.key, self._flight)


def _unlink_quietly(path: Path) -> None:
    """Remove a file that may already be gone."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def _unlink_all(paths: list[Path]) -> None:
    """Remove files that may already be gone."""
    for path in paths:
        _unlink_quietly(path)


class AudioCache:
    """Finished audio files in one directory, evicted least-recently-used beyond max_bytes."""

    def __init__(self, directory: Path, max_bytes: int) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        # key -> size in bytes, least recently used first.
        self._entries: collections.OrderedDict[str, int] = collections.OrderedDict()
        self._total = 0
        self._lock = asyncio.Lock()
        # key -> set once the entry being written for it is committed or dropped.
        self._flights: dict[str, asyncio.Event] = {}
        self.hits = 0
        self.misses = 0

    @property
    def enabled(self) -> bool:
        """Whether caching is on (cache_max_bytes > 0)."""
        return self.max_bytes > 0

    @property
    def total_bytes(self) -> int:
        """Bytes held by committed entries."""
        return self._total

    def __len__(self) -> int:
        return len(self._entries)

    async def open(self) -> None:
        """Create the directory, drop leftovers of interrupted writes, index what is there."""
        if not self.enabled:
            return

        def scan() -> list[tuple[float, str, int]]:
            self.directory.mkdir(parents=True, exist_ok=True)
            found: list[tuple[float, str, int]] = []
            for entry in os.scandir(self.directory):
                if not entry.is_file(follow_symlinks=False):
                    continue
                if entry.name.startswith(_TEMP_PREFIX):
                    _unlink_quietly(Path(entry.path))
                    continue
                stat = entry.stat(follow_symlinks=False)
                found.append((stat.st_mtime, entry.name, stat.st_size))
            return sorted(found)

        for _mtime, name, size in await asyncio.to_thread(scan):
            self._entries[name] = size
            self._total += size
        await self._evict()
        log.info("Audio cache in %s: %d files, %d bytes (bound %d)",
                 self.directory, len(self._entries), self._total, self.max_bytes)

    async def lookup(self, key: str) -> tuple[BinaryIO, int] | None:
        """An open file for a cached entry and its size (marked recently used), or None."""
        if not self.enabled or key not in self._entries:
            self.misses += 1
            return None
        path = self.directory / key

        def open_and_touch() -> tuple[BinaryIO, int]:
            handle = open(path, "rb")
            # mtime carries the LRU order across restarts.
            with contextlib.suppress(OSError):
                os.utime(path)
            return handle, os.fstat(handle.fileno()).st_size

        try:
            found = await asyncio.to_thread(open_and_touch)
        except FileNotFoundError:
            self._forget(key)
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return found

    def in_flight(self, key: str) -> asyncio.Event | None:
        """Set once the entry now being written for key lands (or is dropped); None if none is."""
        return self._flights.get(key)

    def reserve(self, key: str) -> asyncio.Event:
        """Claim key: identical requests wait (in_flight) instead of synthesising it again.

        Synchronous, so no twin can slip in between a missed lookup and this;
        end the claim with begin()'s writer, or release() if nothing is written.
        """
        return self._flights.setdefault(key, asyncio.Event())

    def release(self, key: str, flight: asyncio.Event) -> None:
        """End a claim that wrote nothing: its waiters look again (and one synthesises)."""
        self._landed(key, flight)

    def _landed(self, key: str, flight: asyncio.Event) -> None:
        """The claim on key is over: wake whoever waits for it."""
        if self._flights.get(key) is flight:
            del self._flights[key]
        flight.set()

    async def begin(self, key: str, flight: asyncio.Event) -> CacheEntryWriter | None:
        """Start writing the entry claimed with reserve(); None (claim released) if it cannot be."""
        if not self.enabled:
            self.release(key, flight)
            return None

        def create() -> tuple[BinaryIO, Path]:
            self.directory.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(prefix=_TEMP_PREFIX, dir=self.directory)
            return os.fdopen(fd, "wb"), Path(name)

        try:
            handle, temp_path = await asyncio.to_thread(create)
        except BaseException as exc:
            self.release(key, flight)
            if not isinstance(exc, OSError):
                raise
            log.warning("Audio cache not writable (%s): %s", self.directory, exc)
            return None
        return CacheEntryWriter(self, key, handle, temp_path, flight)

    def _forget(self, key: str) -> None:
        """Drop a key from the index."""
        size = self._entries.pop(key, None)
        if size is not None:
            self._total -= size

    async def _added(self, key: str, size: int) -> None:
        """Index a committed entry, then evict down to the bound."""
        self._forget(key)
        self._entries[key] = size
        self._total += size
        await self._evict()

    async def _evict(self) -> None:
        """Remove least recently used entries until the total fits."""
        async with self._lock:
            victims: list[Path] = []
            while self._total > self.max_bytes and self._entries:
                key, size = self._entries.popitem(last=False)
                self._total -= size
                victims.append(self.directory / key)
            if victims:
                # A reader holding a victim open keeps reading it (POSIX unlink).
                await asyncio.to_thread(_unlink_all, victims)


async def read_block(handle: BinaryIO) -> bytes:
    """The next block of an open cache file (off the event loop); b"" at the end."""
    return await asyncio.to_thread(handle.read, _READ_SIZE)


async def close_file(handle: BinaryIO) -> None:
    """Close an open cache file off the event loop."""
    await asyncio.to_thread(handle.close)
