"""Faults against the whole daemon: processes killed from outside, stalls, garbage, disconnects,
slow readers, a locked database, and SIGKILL during writes. After each: the next request works
and no child process is left behind.

tests/test_pool.py, tests/test_worker.py and tests/test_service.py cover the same faults one
layer down (a pool, a worker, a bare SynthService app) and mostly as faults the worker causes
itself; here the real `idlakd serve` (auth, store, routes, signals) is hit from the outside.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, AsyncIterator

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from tests.helpers.daemon import SLOW_WAV, Daemon, start_daemon, wait_listening
from tests.helpers.daemon import login as daemon_login
from idlakd.store import sqlite as store_module
from tests.helpers.app import REPO, assert_error, bearer, login, make_config
from tests.helpers.postgres import state_env

# Whole daemons under signals and faults: the scenario group (README's second pytest run).
pytestmark = pytest.mark.scenario

STANDIN_ROOT = REPO / "tests" / "pyidlak_standin"


# The database locked by another writer (in-process app: the store is what is tested)

def _hold_write_lock(database: Path) -> sqlite3.Connection:
    """What the CLI does while it writes: an open BEGIN IMMEDIATE transaction."""
    db = sqlite3.connect(database, isolation_level=None, timeout=10)
    db.execute("BEGIN IMMEDIATE")
    db.execute("INSERT INTO revoked_tokens (jti, exp) VALUES ('cli-holds-lock', 0)")
    return db


async def _timed(coro: Any) -> tuple[int, float, Any]:
    """Status, seconds taken and JSON body (or None) of one request."""
    start = time.monotonic()
    resp = await coro
    body = await resp.json() if resp.status not in (204,) else None
    return resp.status, time.monotonic() - start, body


async def test_database_locked_by_another_writer(client: TestClient[Any, Any], admin_token: str,
                                                 config: Any) -> None:
    """A write waits for the lock and then succeeds; reads meanwhile are not held up by it."""
    lock = _hold_write_lock(config.database)
    try:
        write = asyncio.create_task(_timed(client.post("/users", json={"uid": "bob"},
                                                       headers=bearer(admin_token))))
        await asyncio.sleep(0.3)  # the write is now waiting inside SQLite's busy handler
        # Reads (and token checks, which read) keep answering while the writer waits.
        for path in ("/voices", "/languages", "/users"):
            status, took, _ = await _timed(client.get(path, headers=bearer(admin_token)))
            assert status == 200 and took < 1.0, (path, status, took)
        await asyncio.sleep(1.5)
        assert not write.done()
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    status, took, body = await write
    assert status == 200 and body["uid"] == "bob", body
    assert 1.5 < took < 10
    resp = await client.get("/users", headers=bearer(admin_token))
    assert {"id": "bob", "admin": False} in (await resp.json())["users"]


async def test_database_locked_past_busy_timeout_is_503(
        tmp_path: Path, started_app_factory: Any, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Held longer than busy_timeout: a JSON 503 with Retry-After (not a 500); then all is well."""
    monkeypatch.setattr(store_module, "BUSY_TIMEOUT_MS", 500)
    config = make_config(tmp_path)
    client: TestClient[Any, Any] = await started_app_factory(config)
    password = capsys.readouterr().out.split("<User admin:")[1].split(":True>")[0]
    token = await login(client, "admin", password)
    lock = _hold_write_lock(config.database)
    try:
        resp = await client.post("/users", json={"uid": "bob"}, headers=bearer(token))
        await assert_error(resp, 503, "Server is busy, try again later")
        assert int(resp.headers["Retry-After"]) >= 1
        resp = await client.post("/auth/expire", headers=bearer(token))
        await assert_error(resp, 503)
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    # The refused revocation did not happen; now it does, and bob can be created.
    assert (await client.post("/users", json={"uid": "bob"}, headers=bearer(token))).status == 200
    assert (await client.post("/auth/expire", headers=bearer(token))).status == 200
    await assert_error(await client.get("/users", headers=bearer(token)), 401,
                       "Access token has expired")


# The real daemon, hit from outside

STUCK_PROGRAM = "import sys, time; sys.stdin.buffer.read(); time.sleep(3600)"
SENTENCES = " ".join(f"Sentence number {n} is here." for n in range(8))


def _proc_stat(pid: int) -> tuple[int, str] | None:
    """(parent pid, state letter) of a process, or None when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return int(fields[1]), fields[0]


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _all_pids() -> list[int]:
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]


def _children(pid: int) -> dict[int, str]:
    """Direct children of pid: {child pid: state letter}."""
    found = {}
    for child in _all_pids():
        stat = _proc_stat(child)
        if stat is not None and stat[0] == pid:
            found[child] = stat[1]
    return found


def _strays(daemon: Daemon, marker: str) -> list[int]:
    """Processes of this test's voices (their argv holds the marker) not owned by the daemon."""
    return [pid for pid in _all_pids()
            if marker in _cmdline(pid) and (_proc_stat(pid) or (0, ""))[0] != daemon.process.pid
            and (_proc_stat(pid) or (0, "Z"))[1] != "Z"]


async def _settled(daemon: Daemon, marker: str, max_workers: int, timeout: float = 5.0) -> None:
    """Wait until: no zombie, no ffmpeg, only idle workers (<= max_workers), no orphan of a voice."""
    deadline = time.monotonic() + timeout
    while True:
        children = _children(daemon.process.pid)
        problems = []
        zombies = [pid for pid, state in children.items() if state == "Z"]
        if zombies:
            problems.append(f"zombies {zombies}")
        others = [(pid, _cmdline(pid)[:120]) for pid in children
                  if "idlakd.worker" not in _cmdline(pid)]
        if others:
            problems.append(f"non-worker children {others}")
        if len(children) > max_workers:
            problems.append(f"{len(children)} workers > {max_workers}")
        strays = _strays(daemon, marker)
        if strays:
            problems.append(f"orphans {[(p, _cmdline(p)[:120]) for p in strays]}")
        if not problems:
            return
        if time.monotonic() > deadline:
            raise AssertionError("; ".join(problems))
        await asyncio.sleep(0.1)


class FaultDaemon:
    """One `idlakd serve` for this module, with voices that can be made to misbehave."""

    def __init__(self, tmp: Path) -> None:
        self.marker = f"idlakd-fault-{os.getpid()}-{tmp.name}"
        stand = tmp / "stand"
        stand.mkdir()
        (stand / "voice.conf").write_text(
            "lng=en\nacc=ga\nspk=tst\nsrate=16000\ndelay_per_sentence=0.25\n")
        entries = [
            {"vid": "alba", "name": "Alba", "gender": "female", "lang": "en", "acc": "gb",
             "engine": "espeak", "options": {"voice": "en-gb"}},
            {"vid": "stand", "name": "Stand", "gender": "male", "lang": "en", "acc": "ga",
             "engine": "tangle", "dir": str(stand)},
            {"vid": "slow", "name": "Slow", "gender": "male", "lang": "en", "acc": "zz",
             "engine": "command", "options": {
                 "argv": [sys.executable, "-c", SLOW_WAV, "16000", "6", "0.05", "0.15", self.marker],
                 "sample_rate": 16000}},
            {"vid": "stuck", "name": "Stuck", "gender": "male", "lang": "en", "acc": "zz",
             "engine": "command", "options": {
                 "argv": [sys.executable, "-c", STUCK_PROGRAM, self.marker], "sample_rate": 16000}},
        ]
        config = tmp / "voiceconfig.json"
        config.write_text(json.dumps(entries))
        # No spare ffmpegs: these tests count the ffmpegs working for streams (one per
        # encoded stream, none once settled); spares are tests/test_spares.py's.
        self.daemon = start_daemon(tmp, voice_config=str(config), idlak_root=str(STANDIN_ROOT),
                                   synthesis_timeout_seconds="1.5", workers_per_voice="1",
                                   shutdown_grace_seconds="5", ffmpeg_spares="0")
        self.pools = 4  # voices that may keep one idle worker each

    async def token(self, session: aiohttp.ClientSession) -> str:
        """A fresh admin token."""
        return await daemon_login(session, self.daemon.url, "admin", self.daemon.admin_password())

    async def settled(self, timeout: float = 5.0) -> None:
        """No child left but idle workers, nothing orphaned."""
        await _settled(self.daemon, self.marker, self.pools, timeout)

    async def speak_ok(self, session: aiohttp.ClientSession, token: str, voice: str = "alba",
                       audio_format: str = "wav") -> None:
        """The next request works: a complete, non-empty answer."""
        async with session.post(self.daemon.url + "/speech", headers=bearer(token), json={
                "voice_id": voice, "text": "Next request.", "audio_format": audio_format}) as resp:
            body = await resp.read()
            assert resp.status == 200, body[:200]
            assert len(body) > 1000
        async with session.get(self.daemon.url + "/voices/alba") as resp:
            assert resp.status == 200

    def busy_worker(self, voice_dir_hint: str) -> int:
        """The pid of the daemon's worker whose argv mentions the hint."""
        for pid in _children(self.daemon.process.pid):
            if voice_dir_hint in _cmdline(pid) and "idlakd.worker" in _cmdline(pid):
                return pid
        raise AssertionError(f"no worker for {voice_dir_hint}: "
                             f"{[_cmdline(p)[:200] for p in _children(self.daemon.process.pid)]}")


@pytest.fixture(scope="module")
def faulty(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The module's daemon; stopped (and checked for leftovers) at the end."""
    import urllib.request
    fd = FaultDaemon(tmp_path_factory.mktemp("faults"))
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(fd.daemon.url + "/healthz", timeout=1) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            assert fd.daemon.process.poll() is None and time.monotonic() < deadline, fd.daemon.log()
            time.sleep(0.1)
        yield fd
        fd.daemon.signal(signal.SIGTERM)
        assert fd.daemon.process.wait(30) == 0, fd.daemon.log()[-3000:]
        time.sleep(0.5)
        assert _strays(fd.daemon, fd.marker) == []
    finally:
        fd.daemon.kill()
        for pid in _strays(fd.daemon, fd.marker):  # leave the machine clean even on failure
            os.kill(pid, signal.SIGKILL)


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as s:
        yield s


async def _read_some(resp: aiohttp.ClientResponse, at_least: int) -> int:
    got = 0
    while got < at_least:
        chunk = await resp.content.readany()
        assert chunk, "stream ended early"
        got += len(chunk)
    return got


async def test_worker_sigkilled_mid_stream(faulty: FaultDaemon,
                                           session: aiohttp.ClientSession) -> None:
    """SIGKILL from outside to the worker of a running stream: the body is cut, not ended."""
    token = await faulty.token(session)
    async with session.post(faulty.daemon.url + "/speech", headers=bearer(token),
                            json={"voice_id": "stand", "text": SENTENCES}) as resp:
        assert resp.status == 200
        await _read_some(resp, 100)
        os.kill(faulty.busy_worker("stand"), signal.SIGKILL)
        with pytest.raises(aiohttp.ClientPayloadError):
            await resp.read()
    await faulty.settled()
    await faulty.speak_ok(session, token, "stand")
    await faulty.settled()


@pytest.mark.parametrize("trouble", ["HANG", "GARBAGE"])
async def test_hanging_or_garbling_worker_in_the_daemon(
        faulty: FaultDaemon, session: aiohttp.ClientSession, trouble: str) -> None:
    """Before any audio: JSON 500; mid-stream: the body is cut. The worker is replaced."""
    token = await faulty.token(session)
    async with session.post(faulty.daemon.url + "/speech", headers=bearer(token), json={
            "voice_id": "stand", "text": f"{trouble} now.", "stream": False}) as resp:
        await assert_error(resp, 500, "Speech synthesis failed")
    async with session.post(faulty.daemon.url + "/speech", headers=bearer(token), json={
            "voice_id": "stand", "text": f"A fine start. Then {trouble}. And more."}) as resp:
        assert resp.status == 200
        with pytest.raises(aiohttp.ClientPayloadError):
            await resp.read()
    await faulty.settled()
    await faulty.speak_ok(session, token, "stand")


async def test_stuck_command_program_is_not_orphaned(faulty: FaultDaemon,
                                                     session: aiohttp.ClientSession) -> None:
    """A command voice whose program never answers: after the timeout nothing of it survives."""
    token = await faulty.token(session)
    try:
        async with session.post(faulty.daemon.url + "/speech", headers=bearer(token), json={
                "voice_id": "stuck", "text": "Anything."}) as resp:
            await assert_error(resp, 500, "Speech synthesis failed")
        await faulty.speak_ok(session, token)
        await faulty.settled(timeout=1.5)
    finally:
        for pid in _strays(faulty.daemon, faulty.marker):  # the other tests need a clean slate
            os.kill(pid, signal.SIGKILL)


async def test_ffmpeg_killed_mid_stream(faulty: FaultDaemon, session: aiohttp.ClientSession) -> None:
    """SIGKILL to the ffmpeg of a running mp3 stream: the body is cut; the next mp3 works."""
    token = await faulty.token(session)
    async with session.post(faulty.daemon.url + "/speech", headers=bearer(token), json={
            "voice_id": "slow", "text": SENTENCES, "audio_format": "mp3"}) as resp:
        assert resp.status == 200
        await _read_some(resp, 1)
        ffmpegs = [pid for pid in _children(faulty.daemon.process.pid) if "ffmpeg" in _cmdline(pid)]
        assert len(ffmpegs) == 1, [_cmdline(p) for p in _children(faulty.daemon.process.pid)]
        os.kill(ffmpegs[0], signal.SIGKILL)
        with pytest.raises(aiohttp.ClientPayloadError):
            await resp.read()
    await faulty.settled()
    await faulty.speak_ok(session, token, "slow", "mp3")
    await faulty.settled()


async def test_clients_disconnecting_at_random_points(faulty: FaultDaemon,
                                                      session: aiohttp.ClientSession) -> None:
    """Twelve clients hang up before, during and right after the status line, all formats."""
    token = await faulty.token(session)

    async def hang_up(n: int) -> None:
        async with aiohttp.ClientSession() as own:
            request = own.post(faulty.daemon.url + "/speech", headers=bearer(token), json={
                "voice_id": ("slow", "stand", "alba")[n % 3], "text": SENTENCES,
                "audio_format": ("wav", "ogg", "mp3", "wav")[n % 4], "stream": n % 5 != 0})
            try:
                async with asyncio.timeout(0.05 + 0.1 * n):
                    async with request as resp:
                        while await resp.content.readany():
                            pass
            except TimeoutError:
                pass

    await asyncio.gather(*(hang_up(n) for n in range(12)))
    await faulty.settled()
    await faulty.speak_ok(session, token, "slow", "ogg")


async def test_slow_reader_keeps_memory_bounded(faulty: FaultDaemon,
                                                session: aiohttp.ClientSession) -> None:
    """A client reading a long WAV stream at a trickle: the daemon's memory does not grow with it."""
    audio_format = "wav"
    token = await faulty.token(session)
    await faulty.speak_ok(session, token, "alba", audio_format)  # warm up first

    def rss() -> int:
        status = Path(f"/proc/{faulty.daemon.process.pid}/status").read_text()
        return int(next(l for l in status.splitlines() if l.startswith("VmRSS")).split()[1]) * 1024

    text = " ".join(f"This is sentence number {n} of a long text that is read slowly." for n in range(150))
    before = rss()
    async with session.post(faulty.daemon.url + "/speech", headers=bearer(token), json={
            "voice_id": "alba", "text": text, "audio_format": audio_format}) as resp:
        assert resp.status == 200
        got = 0
        peak = before
        # ~2.5 s at 64 kB/s (wav) or 16 kB/s (mp3): far slower than eSpeak makes audio.
        for _ in range(25):
            chunk = await resp.content.read(6400 if audio_format == "wav" else 1600)
            got += len(chunk)
            await asyncio.sleep(0.1)
            peak = max(peak, rss())
    # The whole text is ~150 sentences x ~3 s x 44 kB/s (~20 MB) of audio; unbounded buffering
    # would show here. Allow for allocator noise.
    assert peak - before < 12 * 1024 * 1024, (before, peak)
    await faulty.settled()
    await faulty.speak_ok(session, token, "alba")


async def test_client_gone_mid_stream_is_a_disconnect_not_a_crash(
        faulty: FaultDaemon, session: aiohttp.ClientSession) -> None:
    """Leaving mid-stream is an ordinary event: no traceback, no 500 in the access log."""
    token = await faulty.token(session)
    start = len(faulty.daemon.log())
    text = " ".join(f"This is sentence number {n} of a long text." for n in range(80))
    async with session.post(faulty.daemon.url + "/speech", json={"voice_id": "alba", "text": text},
                            headers=bearer(token) | {"X-Request-Id": "leaves-mid-stream"}) as resp:
        assert resp.status == 200
        for _ in range(10):
            await resp.content.read(1600)
            await asyncio.sleep(0.1)
    deadline = time.monotonic() + 5
    while "rid=leaves-mid-stream" not in faulty.daemon.log()[start:]:
        assert time.monotonic() < deadline, "the request never ended"
        await asyncio.sleep(0.1)
    logged = faulty.daemon.log()[start:]
    assert "Traceback" not in logged and "Unhandled error" not in logged, logged[-3000:]
    line = next(l for l in logged.splitlines() if "rid=leaves-mid-stream" in l)
    assert '"POST /speech" 200' in line, line
    await faulty.settled()


# SIGKILL of the daemon during writes

def _cli(state: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IDLAKD_")}
    env |= {**state_env(state), "IDLAKD_BCRYPT_ROUNDS": "4", "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "idlakd", *args], capture_output=True, text=True,
                          env=env, timeout=60, cwd=REPO)


async def test_sigkill_during_writes_loses_nothing_acknowledged(tmp_path: Path) -> None:
    """Users, revocations and voices acknowledged before a SIGKILL are all there after restart."""
    marker = f"idlakd-kill-{os.getpid()}"
    config = tmp_path / "voiceconfig.json"
    config.write_text(json.dumps([
        {"vid": "alba", "name": "Alba", "gender": "female", "lang": "en", "acc": "gb",
         "engine": "espeak", "options": {"voice": "en-gb"}},
        {"vid": "slow", "name": "Slow", "gender": "male", "lang": "en", "acc": "zz",
         "engine": "command", "options": {
             "argv": [sys.executable, "-c", SLOW_WAV, "16000", "6", "0.05", "0.15", marker],
             "sample_rate": 16000}}]))
    daemon = start_daemon(tmp_path, voice_config=str(config))
    state = tmp_path / "state"
    users: dict[str, str] = {}
    revoked: list[str] = []
    voices: list[str] = []
    try:
        await wait_listening(daemon)
        password = daemon.admin_password()
        stop = asyncio.Event()
        async with aiohttp.ClientSession() as session:
            token = await daemon_login(session, daemon.url, "admin", password)

            async def create_users() -> None:
                n = 0
                while not stop.is_set():
                    n += 1
                    try:
                        async with session.post(daemon.url + "/users", json={"uid": f"u{n}"},
                                                headers=bearer(token)) as resp:
                            if resp.status == 200:
                                users[f"u{n}"] = (await resp.json())["password"]
                    except (aiohttp.ClientError, asyncio.TimeoutError):
                        return

            async def revoke_tokens() -> None:
                while not stop.is_set():
                    try:
                        fresh = await daemon_login(session, daemon.url, "admin", password)
                        async with session.post(daemon.url + "/auth/expire",
                                                headers=bearer(fresh)) as resp:
                            if resp.status == 200:
                                revoked.append(fresh)
                    except (aiohttp.ClientError, asyncio.TimeoutError, AssertionError):
                        return

            async def add_voices() -> None:
                n = 0
                while not stop.is_set():
                    n += 1
                    proc = await asyncio.to_thread(
                        _cli, state, "voice", "add", "-e", "espeak", "-g", "male", "-n", f"V{n}",
                        "-i", f"cli{n}", "-l", "en", "-a", "sc", "-o", '{"voice": "en-gb-scotland"}')
                    if proc.returncode == 0:
                        voices.append(f"cli{n}")

            async def keep_a_stream_running() -> None:
                try:
                    async with session.post(daemon.url + "/speech", headers=bearer(token), json={
                            "voice_id": "slow", "text": SENTENCES}) as resp:
                        await resp.read()
                except aiohttp.ClientError:
                    pass

            tasks = [asyncio.create_task(t()) for t in
                     (create_users, revoke_tokens, add_voices, keep_a_stream_running)]
            await asyncio.sleep(1.2)
            daemon.signal(signal.SIGKILL)
            stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)
        assert daemon.process.wait(10) == -signal.SIGKILL
    finally:
        daemon.kill()
    assert len(users) >= 3 and len(revoked) >= 3 and voices, (len(users), len(revoked), voices)
    # The killed daemon's workers and their programs go away by themselves (stdin EOF).
    deadline = time.monotonic() + 5
    while [p for p in _all_pids() if marker in _cmdline(p) and (_proc_stat(p) or (0, "Z"))[1] != "Z"]:
        assert time.monotonic() < deadline, [_cmdline(p) for p in _all_pids() if marker in _cmdline(p)]
        await asyncio.sleep(0.1)
    with sqlite3.connect(state / "idlakd.db") as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    # Restart on the same state: everything acknowledged is there and works.
    again = start_daemon(tmp_path / "second", state_dir=str(state), voice_config=str(config))
    try:
        await wait_listening(again)
        assert "<User admin:" not in again.output()
        async with aiohttp.ClientSession() as session:
            for uid, user_password in users.items():
                await daemon_login(session, again.url, uid, user_password)
            for old in revoked:
                async with session.get(again.url + "/users", headers=bearer(old)) as resp:
                    await assert_error(resp, 401, "Access token has expired")
            for vid in voices:
                async with session.get(again.url + f"/voices/{vid}") as resp:
                    assert resp.status == 200, vid
            token = await daemon_login(session, again.url, "admin", password)
            async with session.post(again.url + "/speech", headers=bearer(token), json={
                    "voice_id": "alba", "text": "Back again."}) as resp:
                assert resp.status == 200 and len(await resp.read()) > 1000
    finally:
        again.signal(signal.SIGTERM)
        again.process.wait(30)
        again.kill()


async def test_slow_mp3_reader_then_gone_ends_its_request_and_lets_the_daemon_stop(
        tmp_path: Path) -> None:
    """A slow mp3 reader leaves: its request ends (access log line), memory stayed bounded, and
    SIGTERM stops the daemon within its grace period."""
    fd = FaultDaemon(tmp_path)
    daemon = fd.daemon
    try:
        await wait_listening(daemon)
        async with aiohttp.ClientSession() as session:
            token = await fd.token(session)
            await fd.speak_ok(session, token, "alba", "mp3")
            text = " ".join(f"This is sentence number {n} of a long text that is read slowly."
                            for n in range(150))
            pid = daemon.process.pid

            def rss() -> int:
                status = Path(f"/proc/{pid}/status").read_text()
                return int(next(l for l in status.splitlines()
                                if l.startswith("VmRSS")).split()[1]) * 1024

            before = peak = rss()
            async with session.post(daemon.url + "/speech", json={
                    "voice_id": "alba", "text": text, "audio_format": "mp3"},
                    headers=bearer(token) | {"X-Request-Id": "slow-mp3-reader"}) as resp:
                assert resp.status == 200
                for _ in range(25):
                    await resp.content.read(1600)
                    await asyncio.sleep(0.1)
                    peak = max(peak, rss())
            assert peak - before < 12 * 1024 * 1024, (before, peak)
            await fd.settled()
            await fd.speak_ok(session, token, "alba")
            deadline = time.monotonic() + 5
            while "rid=slow-mp3-reader" not in daemon.log():
                assert time.monotonic() < deadline, "the slow reader's /speech request never ended"
                await asyncio.sleep(0.1)
        daemon.signal(signal.SIGTERM)
        assert await daemon.wait(5 + 5) == 0, daemon.log()[-2000:]
    finally:
        daemon.kill()
