"""The worker sandbox, through real worker subprocesses: memory limit, Landlock reads, signals."""

from __future__ import annotations

import asyncio
import os
import re
import sys
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable, Iterable

import pytest
from tests.helpers.synth import (REPO, STANDIN_ROOT, WAV_WRITER, Utterance, WorkerClient, chunk,
                           make_standin_voice, worker_env)

from idlakd.config import Config, load_config
from idlakd.models import Voice
from idlakd.synth.limiter import SynthesisLimiter
from idlakd.synth.pool import VoicePool
from idlakd.synth.tasks import BackgroundTasks
from idlakd.synth.workers import EngineFailed
from idlakd.worker.sandbox import landlock_abi
from idlakd.worker.main import worker_argv

MIB = 1024 * 1024
ABI = landlock_abi()
needs_landlock = pytest.mark.skipif(ABI == 0, reason="Landlock is not available on this kernel")

Spawn = Callable[..., Awaitable[WorkerClient]]


@pytest.fixture
async def spawn() -> AsyncIterator[Spawn]:
    """Start workers with a sandbox command line; each is closed (or killed) afterwards."""
    workers: list[WorkerClient] = []

    async def start(engine: str, directory: str | Path = "", options: dict[str, Any] | None = None,
                    memory_mb: int = 1024, allow_read: Iterable[str] = ()) -> WorkerClient:
        argv = worker_argv(engine, str(directory), options,
                           STANDIN_ROOT if engine == "tangle" else None, "sandboxed",
                           memory_mb=memory_mb, allow_read=list(allow_read))
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, env=worker_env(), cwd=str(REPO))
        worker = WorkerClient(proc)
        workers.append(worker)
        worker.ready = await worker.read(30)
        assert worker.ready is not None and worker.ready.type == "ready", (
            worker.ready, worker.stderr_lines)
        return worker

    yield start
    for worker in workers:
        await worker.close()


def proc_status(pid: int) -> dict[str, str]:
    """The fields of /proc/PID/status."""
    fields: dict[str, str] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return fields


def address_space_limit(pid: int) -> str:
    """The soft 'Max address space' of a process, as /proc/PID/limits shows it."""
    limits = Path(f"/proc/{pid}/limits").read_text()
    match = re.search(r"^Max address space\s+(\S+)\s+(\S+)", limits, re.M)
    assert match, limits
    return match.group(1)


def peak(utterance: Utterance) -> int:
    """Largest absolute sample."""
    return max((abs(v) for v in utterance.samples), default=0)


def message(utterance: Utterance) -> str:
    """The error frame's message (fails if the request did not end in error)."""
    assert utterance.final.type == "error", utterance.final
    return str(utterance.final.header["message"])


async def test_espeak_speaks_inside_the_sandbox_in_several_languages(spawn: Spawn) -> None:
    """An eSpeak worker with the default 1 GiB limit and Landlock still loads its data and speaks."""
    for voice, text in (("en-gb", "Hello from inside the sandbox."), ("fr-fr", "Bonjour à tous."),
                        ("de", "Guten Morgen."), ("ru", "Привет, мир.")):
        worker = await spawn("espeak", options={"voice": voice})
        utterance = await worker.synthesize(text)
        assert utterance.final.type == "end", (voice, utterance.final, worker.stderr_lines)
        assert peak(utterance) > 1000 and len(utterance.samples) > 22050 // 2, voice
        pid = worker.proc.pid
        assert address_space_limit(pid) == str(1024 * MIB)
        # An OOM kill under the unit's MemoryMax picks a worker before the daemon.
        assert Path(f"/proc/{pid}/oom_score_adj").read_text().strip() == "500"
        if ABI:
            assert proc_status(pid)["NoNewPrivs"] == "1"  # set with the Landlock ruleset
        # What the 1 GiB default must cover: measured ~180 MB of virtual size per eSpeak worker.
        assert int(proc_status(pid)["VmPeak"].split()[0]) * 1024 < 400 * MIB


@needs_landlock
async def test_worker_reads_only_its_voice_and_engine_data(spawn: Spawn, tmp_path: Path) -> None:
    """Inside the voice directory reads work; elsewhere (tmp, /etc, the source tree) EACCES."""
    voice = make_standin_voice(tmp_path / "voice")
    outside = tmp_path / "secret.txt"
    outside.write_text("not for workers")
    worker = await spawn("tangle", voice)

    inside = await worker.synthesize(f"Read READFILE:{voice / 'voice.conf'} please.")
    assert inside.final.type == "end" and peak(inside) > 1000, inside.final
    for path in (outside, Path("/etc/passwd"), REPO / "pyproject.toml", REPO / "setup.py"):
        if not path.exists():
            continue
        refused = await worker.synthesize(f"Read READFILE:{path} please.")
        assert re.match(r"PermissionError: \[Errno 13\]", message(refused)), (path, refused.final)
    # The worker is unharmed: the next request speaks.
    after = await worker.synthesize("Still speaking.")
    assert after.final.type == "end" and peak(after) > 1000


@needs_landlock
async def test_allow_read_opens_one_more_directory(spawn: Spawn, tmp_path: Path) -> None:
    """--allow-read adds exactly the directory it names, not its parent."""
    voice = make_standin_voice(tmp_path / "voice")
    extra = tmp_path / "extra"
    extra.mkdir()
    (extra / "lexicon.txt").write_text("words")
    (tmp_path / "beside.txt").write_text("no")
    worker = await spawn("tangle", voice, allow_read=[str(extra)])
    allowed = await worker.synthesize(f"READFILE:{extra / 'lexicon.txt'}")
    assert allowed.final.type == "end", allowed.final
    refused = await worker.synthesize(f"READFILE:{tmp_path / 'beside.txt'}")
    assert "Errno 13" in message(refused)


@pytest.mark.skipif(ABI < 6, reason="Landlock signal scoping needs ABI 6 (Linux 6.12)")
async def test_worker_cannot_signal_the_daemon(spawn: Spawn, tmp_path: Path) -> None:
    """Even as root, a worker cannot signal processes outside its sandbox (here: its parent)."""
    worker = await spawn("tangle", make_standin_voice(tmp_path / "voice"))
    refused = await worker.synthesize(f"SIGNAL0:{os.getpid()}")
    assert re.match(r"PermissionError: \[Errno 1\]", message(refused)), refused.final
    assert (await worker.synthesize("Fine.")).final.type == "end"


async def test_memory_limit_fails_the_request_not_the_worker(spawn: Spawn, tmp_path: Path) -> None:
    """2 GiB under a 512 MiB limit: MemoryError in an error frame; the same worker goes on."""
    voice = make_standin_voice(tmp_path / "voice")
    limited = await spawn("tangle", voice, memory_mb=512)
    assert address_space_limit(limited.proc.pid) == str(512 * MIB)
    failed = await limited.synthesize("Take ALLOC:2048 now.")
    assert message(failed).startswith("MemoryError")
    after = await limited.synthesize("Back to normal.")
    assert after.final.type == "end" and peak(after) > 1000
    assert limited.proc.returncode is None
    # Control: without a limit the same request succeeds, so the limit is what stopped it.
    free = await spawn("tangle", voice, memory_mb=0)
    assert address_space_limit(free.proc.pid) == "unlimited"
    assert (await free.synthesize("Take ALLOC:2048 now.")).final.type == "end"


def pool_config(tmp_path: Path, **overrides: str) -> Config:
    """A daemon config for a pool: stand-in Idlak root, short timeouts."""
    values = {"state_dir": str(tmp_path / "state"), "idlak_root": str(STANDIN_ROOT),
              "synthesis_timeout_seconds": "10", "workers_per_voice": "1"}
    values.update(overrides)
    return load_config(env={}, overrides=values)


@pytest.fixture
async def background() -> AsyncIterator[BackgroundTasks]:
    """Background tasks of the pools under test, awaited at the end."""
    tasks = BackgroundTasks()
    yield tasks
    await tasks.close()


async def test_daemon_pool_applies_worker_memory_mb(tmp_path: Path,
                                                    background: BackgroundTasks) -> None:
    """The pool passes worker_memory_mb on: the chunk fails with EngineFailed, the pool serves on."""
    directory = make_standin_voice(tmp_path / "voice")
    voice = Voice("tst", "tst", "en", "ga", "female", engine="tangle", directory=str(directory))
    pool = VoicePool(voice, pool_config(tmp_path, worker_memory_mb="256"), SynthesisLimiter(2, 4),
                     background)
    try:
        await pool.synthesize(chunk("Warm up."))
        [pid] = pool.worker_pids
        assert address_space_limit(pid) == str(256 * MIB)
        with pytest.raises(EngineFailed, match="MemoryError"):
            await pool.synthesize(chunk("Take ALLOC:1024 now."))
        _rate, pcm = await pool.synthesize(chunk("Next request."))
        assert pcm and pool.worker_pids == [pid]  # the same worker, not a respawn
    finally:
        await pool.close()


@needs_landlock
async def test_command_voice_program_outside_the_voice_directory_runs(
        tmp_path: Path, background: BackgroundTasks) -> None:
    """A command voice's program in its own directory (/opt/...-like) may run and read itself."""
    program = tmp_path / "opt" / "tts"
    program.parent.mkdir()
    program.write_text(f"#!{sys.executable}\n{WAV_WRITER}")
    program.chmod(0o755)
    voice = Voice("cmd", "cmd", "en", "gb", "female", engine="command",
                  options={"argv": [str(program), "16000", "1", "1", "0"], "sample_rate": 16000},
                  directory=str(make_standin_voice(tmp_path / "voice")))
    pool = VoicePool(voice, pool_config(tmp_path), SynthesisLimiter(2, 4), background)
    try:
        rate, pcm = await pool.synthesize(chunk("Hello there."))
        assert rate == 16000 and len(pcm) > 1000
    finally:
        await pool.close()


# Runs argv[1:] under a seccomp filter answering EPERM to landlock_create_ruleset, as a
# container runtime or an older systemd unit's SystemCallFilter would (x86_64 and aarch64).
NO_LANDLOCK = r"""
import ctypes, os, struct, sys
libc = ctypes.CDLL(None, use_errno=True)
def stmt(code, k, jt=0, jf=0):
    return struct.pack("HBBI", code, jt, jf, k)
program = b"".join([
    stmt(0x20, 0),                       # load seccomp_data.nr
    stmt(0x15, 444, 0, 1),               # nr == landlock_create_ruleset ?
    stmt(0x06, 0x00050000 | 1),          # SECCOMP_RET_ERRNO | EPERM
    stmt(0x06, 0x7FFF0000),              # SECCOMP_RET_ALLOW
])
buffer = ctypes.create_string_buffer(program)
class Prog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]
prog = Prog(len(program) // 8, ctypes.addressof(buffer))
assert libc.prctl(38, 1, 0, 0, 0) == 0                        # PR_SET_NO_NEW_PRIVS
assert libc.prctl(22, 2, ctypes.byref(prog), 0, 0) == 0, ctypes.get_errno()  # SECCOMP_MODE_FILTER
os.execv(sys.argv[1], sys.argv[1:])
"""


@pytest.mark.skipif(os.uname().machine not in ("x86_64", "aarch64"), reason="syscall 444")
async def test_without_landlock_one_warning_and_the_memory_limit_still_holds(tmp_path: Path) -> None:
    """Landlock refused (EPERM): the worker warns once, keeps its memory limit and speaks."""
    voice = make_standin_voice(tmp_path / "voice")
    outside = tmp_path / "outside.txt"
    outside.write_text("readable without Landlock")
    argv = worker_argv("tangle", str(voice), None, STANDIN_ROOT, "nolandlock", memory_mb=512)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", NO_LANDLOCK, *argv, stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=worker_env(),
        cwd=str(REPO))
    worker = WorkerClient(proc)
    try:
        worker.ready = await worker.read(30)
        assert worker.ready is not None and worker.ready.type == "ready", worker.ready
        assert address_space_limit(proc.pid) == str(512 * MIB)
        assert message(await worker.synthesize("ALLOC:2048")).startswith("MemoryError")
        # Unconfined reads are the documented cost of a kernel or filter without Landlock.
        assert (await worker.synthesize(f"READFILE:{outside}")).final.type == "end"
    finally:
        assert await worker.close() == 0
    warnings = [line for line in worker.stderr_lines if "Landlock is not available" in line]
    assert len(warnings) == 1 and warnings[0].startswith("WARNING"), worker.stderr_lines
