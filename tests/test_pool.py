"""Worker pools with real worker subprocesses (eSpeak and the stand-in Idlak voice)."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable

import pytest
from tests.helpers.synth import STANDIN_ROOT, chunk, make_standin_voice

from idlakd.config import Config, load_config
from idlakd.errors import Busy
from idlakd.models import Voice
from idlakd.synth.limiter import SynthesisLimiter
from idlakd.synth.pool import VoicePool
from idlakd.synth.segments import Chunk, Text
from idlakd.synth.tasks import BackgroundTasks
from idlakd.synth.workers import EngineFailed, WorkerFailed
from tests.helpers.processes import child_pids, wait_gone

PoolFactory = Callable[..., Awaitable[VoicePool]]


def synth_config(tmp_path: Path, **overrides: str) -> Config:
    """A config for synthesis tests: stand-in Idlak root, short timeouts."""
    values = {"state_dir": str(tmp_path / "state"), "idlak_root": str(STANDIN_ROOT),
              "synthesis_timeout_seconds": "10", "workers_per_voice": "2"}
    values.update(overrides)
    return load_config(env={}, overrides=values)


def espeak_voice() -> Voice:
    """The embedded eSpeak NG English voice."""
    return Voice("en", "English", "en", "gb", "male", engine="espeak")


def standin_voice(tmp_path: Path, name: str = "tst", **conf: Any) -> Voice:
    """A stand-in Idlak voice (tangle engine) with optional voice.conf extras."""
    directory = make_standin_voice(tmp_path / f"voice-{name}", spk=name, **conf)
    return Voice(name, name, "en", "ga", "female", engine="tangle", directory=str(directory))


@pytest.fixture
async def make_pool(tmp_path: Path) -> AsyncIterator[PoolFactory]:
    """Build pools; every one is closed and every background stop awaited afterwards."""
    pools: list[VoicePool] = []
    background = BackgroundTasks()

    async def factory(voice: Voice, limiter: SynthesisLimiter | None = None,
                      **overrides: str) -> VoicePool:
        config = synth_config(tmp_path, **overrides)
        pool = VoicePool(voice, config, limiter or SynthesisLimiter(4, 8), background)
        pools.append(pool)
        return pool

    yield factory
    for pool in pools:
        await pool.close()
    await background.close()
    assert await wait_gone(child_pids(), 3) == set()


async def test_workers_start_lazily_are_reused_and_bounded(make_pool: PoolFactory) -> None:
    """No worker before work; one per concurrent chunk up to workers_per_voice; reused after."""
    pool = await make_pool(espeak_voice())
    assert pool.worker_count == 0 and child_pids() == set()
    rate, pcm = await pool.synthesize(chunk("Hello."))
    assert rate == 22050 and len(pcm) > rate // 4
    first = pool.worker_pids
    assert len(first) == 1
    await pool.synthesize(chunk("Again."))
    assert pool.worker_pids == first
    results = await asyncio.gather(*(pool.synthesize(chunk(f"Number {n}.")) for n in range(5)))
    assert all(len(pcm) > 0 for _rate, pcm in results)
    assert pool.worker_count == 2 and pool.stats().idle == 2
    assert pool.stats().syntheses == 7 and pool.busy == 0


async def test_crash_discards_worker_and_next_chunk_gets_a_new_one(
        make_pool: PoolFactory, tmp_path: Path) -> None:
    """A worker dying mid-chunk is reaped; the pool starts a fresh one for the next chunk."""
    pool = await make_pool(standin_voice(tmp_path))
    await pool.synthesize(chunk("Warm up."))
    [old] = pool.worker_pids
    with pytest.raises(WorkerFailed, match="exited"):
        await pool.synthesize(chunk("Please CRASH now."))
    assert await wait_gone({old}) == set()
    _rate, pcm = await pool.synthesize(chunk("Still here."))
    assert pcm and pool.worker_pids != [old]
    assert pool.stats().errors == 1


async def test_hang_times_out_and_worker_is_killed(make_pool: PoolFactory, tmp_path: Path) -> None:
    """A worker silent past synthesis_timeout_seconds is killed and reaped."""
    pool = await make_pool(standin_voice(tmp_path), synthesis_timeout_seconds="0.5")
    await pool.synthesize(chunk("Warm up."))
    [pid] = pool.worker_pids
    with pytest.raises(WorkerFailed, match="silent"):
        await pool.synthesize(chunk("HANG forever."))
    assert await wait_gone({pid}) == set()
    assert pool.worker_count == 0


async def test_engine_error_keeps_the_worker(make_pool: PoolFactory, tmp_path: Path) -> None:
    """An engine exception for one chunk is reported; the worker serves the next chunk."""
    pool = await make_pool(standin_voice(tmp_path))
    with pytest.raises(EngineFailed, match="RAISE"):
        await pool.synthesize(chunk("RAISE please."))
    [pid] = pool.worker_pids
    await pool.synthesize(chunk("Fine."))
    assert pool.worker_pids == [pid]


async def test_garbage_on_the_pipe_discards_the_worker(make_pool: PoolFactory, tmp_path: Path) -> None:
    """A malformed frame is a protocol failure, never mistaken for EOF or audio."""
    pool = await make_pool(standin_voice(tmp_path))
    with pytest.raises(WorkerFailed, match="protocol"):
        await pool.synthesize(chunk("GARBAGE out."))
    assert pool.worker_count == 0


async def test_cancel_mid_utterance_stops_the_worker(make_pool: PoolFactory, tmp_path: Path) -> None:
    """Cancelling a chunk (client gone) stops its worker within a second."""
    pool = await make_pool(standin_voice(tmp_path, delay_per_sentence=5))
    task = asyncio.create_task(pool.synthesize(chunk("Slow sentence.")))
    while pool.busy == 0 or not pool.worker_pids:
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.3)  # the request is inside speak() now
    [pid] = pool.worker_pids
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await wait_gone({pid}, 1.0) == set()
    assert pool.worker_count == 0 and pool.busy == 0


async def test_fatal_start_is_reported(make_pool: PoolFactory, tmp_path: Path) -> None:
    """A voice that cannot load fails the chunk with the worker's reason; nothing is left running."""
    voice = Voice("gone", "Gone", "en", "ga", "male", engine="tangle",
                  directory=str(tmp_path / "missing"))
    pool = await make_pool(voice)
    with pytest.raises(WorkerFailed, match="could not load"):
        await pool.synthesize(chunk("Hello."))
    assert pool.worker_count == 0 and await wait_gone(child_pids()) == set()


async def test_worker_stderr_is_logged_with_its_name(
        make_pool: PoolFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """What engines print (even to fd 1) reaches the daemon log tagged with the worker."""
    caplog.set_level(logging.INFO, logger="idlakd.synth.workers")
    pool = await make_pool(standin_voice(tmp_path, name="abr"))
    await pool.synthesize(chunk("Hello."))
    tagged = [r.getMessage() for r in caplog.records if r.getMessage().startswith("[worker abr#1]")]
    assert any("os.write to fd 1" in line for line in tagged), tagged


async def test_worker_lines_cannot_carry_control_characters_into_the_log(
        make_pool: PoolFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A worker's line holding an ANSI escape and a CR (here from its voice directory's name,
    which the stand-in prints) is logged with them escaped."""
    caplog.set_level(logging.INFO, logger="idlakd.synth.workers")
    directory = make_standin_voice(tmp_path / "evil\x1b[2J\rforged", spk="evil")
    pool = await make_pool(Voice("evil", "Evil", "en", "ga", "female", engine="tangle",
                                 directory=str(directory)))
    await pool.synthesize(chunk("Hello."))
    tagged = [r.getMessage() for r in caplog.records if r.getMessage().startswith("[worker evil#1]")]
    assert any("evil\\x1b[2J\\x0dforged" in line for line in tagged), tagged
    assert not any(ch in line for line in tagged for ch in "\x1b\r"), tagged


async def test_idle_workers_are_reaped_and_retire_stops_them(
        make_pool: PoolFactory, tmp_path: Path) -> None:
    """reap_idle stops workers idle past worker_idle_seconds; retire stops the idle rest."""
    pool = await make_pool(espeak_voice(), worker_idle_seconds="0")
    await asyncio.gather(pool.synthesize(chunk("One.")), pool.synthesize(chunk("Two.")))
    pids = pool.worker_pids
    assert len(pids) == 2
    assert pool.reap_idle(asyncio.get_running_loop().time()) == 2
    assert await wait_gone(pids, 3) == set()
    await pool.synthesize(chunk("Three."))
    [pid] = pool.worker_pids
    pool.retire()
    assert await wait_gone({pid}, 3) == set()
    assert pool.worker_count == 0


async def test_limiter_admits_up_to_the_queue_then_refuses() -> None:
    """With every slot busy and max_queue requests waiting, the next request is refused (503)."""
    limiter = SynthesisLimiter(max_concurrent=1, max_queue=1)
    first = limiter.admit()
    release = asyncio.Event()

    async def hold() -> None:
        async with limiter.slot(first):
            await release.wait()

    holder = asyncio.create_task(hold())
    await asyncio.sleep(0)
    assert limiter.running == 1 and limiter.waiting == 0
    second = limiter.admit()
    assert limiter.waiting == 1
    with pytest.raises(Busy) as refused:
        limiter.admit()
    assert refused.value.retry_after == 1
    assert refused.value.message == "Server is busy, try again later"
    second.release()
    release.set()
    await holder
    first.release()
    assert limiter.waiting == 0 and limiter.running == 0
    limiter.admit().release()


async def test_limiter_caps_open_streams_not_only_waiting_ones() -> None:
    """A stream between chunks holds no slot but stays open: at most max_concurrent + max_queue."""
    limiter = SynthesisLimiter(max_concurrent=1, max_queue=1)
    first = limiter.admit()
    async with limiter.slot(first):
        pass
    second = limiter.admit()
    async with limiter.slot(second):
        pass
    assert limiter.waiting == 0 and limiter.running == 0 and limiter.streams == 2
    with pytest.raises(Busy):
        limiter.admit()
    first.release()
    first.release()  # twice is harmless
    limiter.admit().release()
    second.release()
    assert limiter.streams == 0


async def test_a_retired_pool_keeps_its_worker_for_a_running_stream(
        make_pool: PoolFactory, tmp_path: Path) -> None:
    """Retired mid-stream: the stream's next chunks reuse its worker; it stops when the stream ends."""
    pool = await make_pool(standin_voice(tmp_path), workers_per_voice="1")
    with pool.use():
        await pool.synthesize(chunk("First."))
        [pid] = pool.worker_pids
        pool.retire()
        await pool.synthesize(chunk("Second."))
        await pool.synthesize(chunk("Third."))
        assert pool.worker_pids == [pid]
    assert await wait_gone({pid}, 3) == set()
    assert pool.unused


async def test_idle_worker_killed_from_outside_is_replaced(make_pool: PoolFactory) -> None:
    """An idle worker that died (OOM killer, kill -9) is noticed at checkout and replaced."""
    pool = await make_pool(espeak_voice())
    await pool.synthesize(chunk("Hello."))
    [pid] = pool.worker_pids
    os.kill(pid, 9)
    assert await wait_gone({pid}) == set()
    _rate, pcm = await pool.synthesize(chunk("Hello again."))
    assert pcm and pool.worker_count == 1 and pool.worker_pids != [pid]


def processes_with(marker: str) -> list[int]:
    """Every process on the machine whose command line contains marker."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as fh:
                    if marker.encode() in fh.read():
                        found.append(int(entry))
            except OSError:
                continue
    return found


async def test_stopping_a_stuck_command_worker_stops_its_program(
        make_pool: PoolFactory, tmp_path: Path) -> None:
    """A command voice whose program hangs: after the timeout neither worker nor program survives."""
    marker = f"idlakd-stuck-{os.getpid()}-{id(tmp_path)}"
    voice = Voice("stuck", "Stuck", "en", "gb", "male", engine="command", options={
        "argv": [sys.executable, "-c", f"import time; time.sleep(60)  # {marker}"],
        "sample_rate": 16000})
    pool = await make_pool(voice, synthesis_timeout_seconds="0.5")
    with pytest.raises(WorkerFailed, match="silent"):
        await pool.synthesize(chunk("Anything."))
    for _ in range(40):
        if not processes_with(marker):
            break
        await asyncio.sleep(0.05)
    assert processes_with(marker) == []


async def test_a_slow_engine_audio_streams_and_never_counts_as_silence(
        make_pool: PoolFactory, tmp_path: Path) -> None:
    """The worker holds audio back to fill frames only briefly: a chunk whose texts each take
    0.4 s runs past a 0.7 s silence deadline, its audio arriving text by text."""
    pool = await make_pool(standin_voice(tmp_path, delay_per_sentence=0.4),
                           synthesis_timeout_seconds="0.7")
    await pool.synthesize(chunk("Warm up."))
    arrivals: list[float] = []

    async def sink(_rate: int, _pcm: bytes) -> None:
        arrivals.append(asyncio.get_running_loop().time())

    texts = Chunk((Text("Hello there."), Text("Hello again."), Text("Good bye.")))
    await pool.stream(texts, sink)
    # Audio came in three bursts, one per text, not all at the end.
    assert arrivals[-1] - arrivals[0] > 0.6

