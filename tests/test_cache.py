"""The audio cache: atomic entries, LRU eviction by bytes, persistence across restarts."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from idlakd.synth.cache import AudioCache, cache_key, close_file, read_block


async def read_all(cache: AudioCache, key: str) -> bytes | None:
    """The cached bytes for key, or None."""
    found = await cache.lookup(key)
    if found is None:
        return None
    handle, size = found
    data = b""
    while block := await read_block(handle):
        data += block
    await close_file(handle)
    assert len(data) == size
    return data


async def store(cache: AudioCache, key: str, data: bytes) -> bool:
    """Write one entry the way the service does."""
    writer = await cache.begin(key, cache.reserve(key))
    assert writer is not None
    await writer.write(data)
    return await writer.commit()


def test_key_depends_on_every_part() -> None:
    """Voice, version, format and text all change the key; odd text is safe."""
    base = cache_key("v", "1", "wav", "hi")
    assert len({base, cache_key("w", "1", "wav", "hi"), cache_key("v", "2", "wav", "hi"),
                cache_key("v", "1", "ogg", "hi"), cache_key("v", "1", "wav", "hi!")}) == 5
    assert "/" not in cache_key("v", "1", "wav", "../../etc/passwd")


async def test_disabled_cache_does_nothing(tmp_path: Path) -> None:
    """max_bytes 0: no directory, no writer, no hits."""
    cache = AudioCache(tmp_path / "cache", 0)
    await cache.open()
    assert not cache.enabled
    assert await cache.begin("k", cache.reserve("k")) is None
    assert await cache.lookup("k") is None
    assert not (tmp_path / "cache").exists()


async def test_partial_entry_is_never_visible(tmp_path: Path) -> None:
    """Until commit the entry is a hidden temp file; abort removes it; a crash leftover is cleaned."""
    cache = AudioCache(tmp_path / "cache", 10_000)
    await cache.open()
    writer = await cache.begin("a.wav", cache.reserve("a.wav"))
    assert writer is not None
    await writer.write(b"x" * 100)
    assert await cache.lookup("a.wav") is None
    assert not (tmp_path / "cache" / "a.wav").exists()
    await writer.abort()
    assert os.listdir(tmp_path / "cache") == []
    # A writer left behind by a killed daemon: its temp file goes at the next start.
    leftover = await cache.begin("b.wav", cache.reserve("b.wav"))
    assert leftover is not None
    await leftover.write(b"y" * 10)
    restarted = AudioCache(tmp_path / "cache", 10_000)
    await restarted.open()
    await leftover.abort()
    assert os.listdir(tmp_path / "cache") == [] and len(restarted) == 0


async def test_commit_then_hit_with_header_patch(tmp_path: Path) -> None:
    """A committed entry is served whole; write_at patches the start (WAV header)."""
    cache = AudioCache(tmp_path / "cache", 10_000)
    await cache.open()
    writer = await cache.begin("a.wav", cache.reserve("a.wav"))
    assert writer is not None
    await writer.write(b"HDR0" + b"pcm")
    await writer.write_at(0, b"HDR1")
    await writer.write(b"more")
    assert await writer.commit()
    assert await read_all(cache, "a.wav") == b"HDR1pcmmore"
    assert cache.hits == 1 and cache.total_bytes == 11


async def test_lru_eviction_by_bytes(tmp_path: Path) -> None:
    """Past the bound the least recently used entries go; a lookup refreshes an entry."""
    cache = AudioCache(tmp_path / "cache", 250)
    await cache.open()
    for name in ("a", "b"):
        assert await store(cache, name, b"1" * 100)
    assert await read_all(cache, "a") is not None  # a is now the most recent
    assert await store(cache, "c", b"2" * 100)
    assert await read_all(cache, "b") is None
    assert await read_all(cache, "a") is not None and await read_all(cache, "c") is not None
    assert cache.total_bytes == 200
    assert sorted(os.listdir(tmp_path / "cache")) == ["a", "c"]


async def test_entry_bigger_than_cache_is_dropped(tmp_path: Path) -> None:
    """An entry that can never fit is not stored and evicts nothing."""
    cache = AudioCache(tmp_path / "cache", 100)
    await cache.open()
    assert await store(cache, "small", b"s" * 50)
    assert not await store(cache, "huge", b"h" * 101)
    assert await read_all(cache, "small") == b"s" * 50
    assert sorted(os.listdir(tmp_path / "cache")) == ["small"]


async def test_index_survives_restart_and_shrinks_to_new_bound(tmp_path: Path) -> None:
    """Entries found at start are indexed oldest first and evicted to a smaller bound."""
    cache = AudioCache(tmp_path / "cache", 1000)
    await cache.open()
    for n, name in enumerate(("old", "mid", "new")):
        assert await store(cache, name, b"x" * 100)
        os.utime(tmp_path / "cache" / name, (1000 + n, 1000 + n))
    smaller = AudioCache(tmp_path / "cache", 200)
    await smaller.open()
    assert sorted(os.listdir(tmp_path / "cache")) == ["mid", "new"]
    assert await read_all(smaller, "new") == b"x" * 100


async def test_a_cancelled_commit_still_indexes_its_file(tmp_path: Path) -> None:
    """Once the rename has begun the entry lands in the index, whatever happens to the caller."""
    cache = AudioCache(tmp_path / "cache", 1_000_000)
    await cache.open()
    flight = cache.reserve("a.wav")
    assert cache.in_flight("a.wav") is flight
    writer = await cache.begin("a.wav", flight)
    assert writer is not None
    await writer.write(b"x" * 1000)
    commit = asyncio.create_task(writer.commit())
    await asyncio.sleep(0)  # the commit's thread is under way
    commit.cancel()
    with pytest.raises(asyncio.CancelledError):
        await commit
    await asyncio.wait_for(flight.wait(), 5)  # twins waiting for it are told
    assert cache.in_flight("a.wav") is None
    assert len(cache) == 1 and cache.total_bytes == 1000
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["a.wav"]

