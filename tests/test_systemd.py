"""systemd: the NOTIFY_SOCKET protocol (on a datagram socket, no systemd needed); the unit verified, its limits and W^X tried."""

from __future__ import annotations

import asyncio
import configparser
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from tests.helpers.synth import pcm_bytes_under_mdwe
from tests.helpers.app import bearer
from tests.helpers.daemon import REPO, login, start_daemon

from idlakd.cli.main import build_parser
from idlakd.config import load_config
from idlakd.web.systemd import Notifier


@pytest.fixture
def listener() -> Iterator[tuple[str, socket.socket]]:
    """A datagram socket standing in for systemd's notify socket (abstract namespace)."""
    name = f"@idlakd-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(b"\0" + name[1:].encode())
    sock.settimeout(0.05)
    yield name, sock
    sock.close()


def receive(sock: socket.socket, timeout: float) -> list[str]:
    """The datagrams that arrive within timeout."""
    got: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            got.append(sock.recv(4096).decode())
        except TimeoutError:
            continue
    return got


async def receive_until(sock: socket.socket, needle: str, timeout: float) -> list[str]:
    """Datagrams until one contains needle (without blocking the loop for long)."""
    got: list[str] = []
    deadline = time.monotonic() + timeout
    while not any(needle in m for m in got):
        assert time.monotonic() < deadline, f"no {needle} within {timeout} s; got {got}"
        got += await asyncio.to_thread(receive, sock, 0.2)
    return got


def test_notify_on_a_path_socket() -> None:
    with tempfile.TemporaryDirectory(dir="/tmp") as tmp:  # short: unix paths are <= 107 bytes
        path = os.path.join(tmp, "notify")
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.bind(path)
            notifier = Notifier({"NOTIFY_SOCKET": path})
            assert notifier.enabled and notifier.watchdog_seconds is None
            assert notifier.notify("READY=1", "STATUS=up")
            assert sock.recv(100) == b"READY=1\nSTATUS=up"
            notifier.close()
            notifier.close()


def test_notify_is_silent_without_systemd(listener: tuple[str, socket.socket]) -> None:
    notifier = Notifier({})
    assert not notifier.enabled and not notifier.notify("READY=1")
    assert not Notifier({"NOTIFY_SOCKET": "vsock:2:1234"}).enabled
    # A socket that went away is a warning, never a crash.
    gone = Notifier({"NOTIFY_SOCKET": "@idlakd-test-nobody-listens-" + uuid.uuid4().hex})
    assert gone.notify("READY=1") is False
    gone.close()


def test_watchdog_interval_is_for_this_process_only() -> None:
    base = {"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "3000000"}
    assert Notifier(base).watchdog_seconds == 3.0
    assert Notifier({**base, "WATCHDOG_PID": str(os.getpid())}).watchdog_seconds == 3.0
    assert Notifier({**base, "WATCHDOG_PID": "1"}).watchdog_seconds is None
    assert Notifier({**base, "WATCHDOG_USEC": "soon"}).watchdog_seconds is None
    assert Notifier({**base, "WATCHDOG_USEC": "0"}).watchdog_seconds is None


async def test_watchdog_pings_at_half_the_interval(listener: tuple[str, socket.socket]) -> None:
    name, sock = listener
    notifier = Notifier({"NOTIFY_SOCKET": name, "WATCHDOG_USEC": "200000"})
    task = asyncio.create_task(notifier.watchdog())
    got = await asyncio.to_thread(receive, sock, 0.55)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    notifier.close()
    assert got.count("WATCHDOG=1") >= 4, got


async def test_daemon_reports_ready_watchdog_and_stopping(
        tmp_path: Path, listener: tuple[str, socket.socket]) -> None:
    name, sock = listener
    daemon = start_daemon(tmp_path, env={"NOTIFY_SOCKET": name, "WATCHDOG_USEC": "500000"})
    try:
        got = await receive_until(sock, "READY=1", timeout=30)
        ready = next(m for m in got if "READY=1" in m)
        assert f"MAINPID={daemon.process.pid}" in ready
        # READY=1 means: listening, database open, voices loaded.
        async with aiohttp.ClientSession() as session, session.get(daemon.url + "/readyz") as resp:
            assert resp.status == 200, await resp.text()
            assert (await resp.json())["voices"] == 2
        pings = await asyncio.to_thread(receive, sock, 0.8)
        assert pings.count("WATCHDOG=1") >= 2, pings
        # Workers must not inherit NOTIFY_SOCKET & co. (only the main process speaks to systemd).
        async with aiohttp.ClientSession() as session:
            token = await login(session, daemon.url, "admin", daemon.admin_password())
            async with session.post(daemon.url + "/speech", headers=bearer(token),
                                    json={"voice_id": "alba", "text": "Hi."}) as resp:
                assert resp.status == 200
                await resp.read()
        workers = daemon.children()
        assert workers
        for pid in workers:
            assert b"NOTIFY_SOCKET" not in Path(f"/proc/{pid}/environ").read_bytes()
        daemon.signal(signal.SIGTERM)
        await receive_until(sock, "STOPPING=1", timeout=10)
        assert await daemon.wait(timeout=30) == 0
    finally:
        daemon.kill()


def _unit() -> configparser.ConfigParser:
    """idlakd.service, parsed (systemd units are close enough to INI for reading)."""
    parser = configparser.ConfigParser(interpolation=None, strict=False, empty_lines_in_values=False)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(REPO / "idlakd.service")
    return parser


def test_unit_runs_the_real_command_and_waits_for_the_grace_period(tmp_path: Path) -> None:
    """ExecStart is a command line the real CLI takes; systemd waits out the drain before SIGKILL."""
    service = _unit()["Service"]
    program, *words = shlex.split(service["ExecStart"])
    assert Path(program).name == "idlakd"
    args = build_parser().parse_args(words)
    assert args.command == "serve"
    config = load_config(env={}, overrides={"state_dir": str(tmp_path)})
    # Draining, the grace period, then stopping workers and ffmpeg: twice the grace leaves
    # room for the last two.
    assert int(service["TimeoutStopSec"]) > (config.drain_seconds
                                             + 2 * config.shutdown_grace_seconds)


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_unit_file_verifies(tmp_path: Path) -> None:
    # verify insists the binary exists; point ExecStart at one that does, change nothing else.
    text = (REPO / "idlakd.service").read_text().replace("/opt/idlakd/bin/idlakd", sys.executable)
    unit = tmp_path / "idlakd.service"
    unit.write_text(text)
    proc = subprocess.run(["systemd-analyze", "verify", str(unit)], check=False, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0 and not proc.stderr.strip(), proc.stderr


def _systemd_size(value: str) -> int:
    """A systemd byte size (1024-based K, M, G, T suffixes) in bytes."""
    units = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    number, suffix = (value[:-1], value[-1]) if value[-1:].isalpha() else (value, "")
    return int(float(number) * units[suffix.upper()])


def test_unit_memory_and_task_limits_fit_the_default_settings(tmp_path: Path) -> None:
    """MemoryMax holds the busy workers' limits plus the daemon; TasksMax the shipped voices."""
    service = _unit()["Service"]
    config = load_config(env={}, overrides={"state_dir": str(tmp_path)})
    high, most = _systemd_size(service["MemoryHigh"]), _systemd_size(service["MemoryMax"])
    assert high < most
    # At most max_concurrent_syntheses workers synthesise at once, each capped by RLIMIT_AS;
    # idle workers hold ~35 MB each and the daemon a few hundred: 512 MiB for all of that.
    busy = config.max_concurrent_syntheses * config.worker_memory_mb * (1 << 20)
    assert most >= busy + (512 << 20) and high >= busy
    voices = json.loads((REPO / "voiceconfig.json").read_text())
    # A worker is 1-4 tasks (itself, eSpeak's synthesis thread, a command's program and readers);
    # the daemon ~40 threads, ffmpeg a few per stream.
    assert int(service["TasksMax"]) >= len(voices) * config.workers_per_voice * 4 + 100


def _syscall_groups() -> dict[str, set[str]]:
    """systemd-analyze's syscall groups: name -> members (syscalls and nested @groups)."""
    out = subprocess.run(["systemd-analyze", "syscall-filter"], check=True, capture_output=True,
                         text=True, timeout=60).stdout
    groups: dict[str, set[str]] = {}
    current: set[str] = set()
    for line in out.splitlines():
        if line.startswith("@"):
            current = groups.setdefault(line.split()[0], set())
        elif line.strip() and not line.strip().startswith("#"):
            current.add(line.strip())
    return groups


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_unit_syscall_filter_lets_workers_confine_themselves() -> None:
    """Under the unit's SystemCallFilter, workers can set RLIMIT_AS and apply Landlock."""
    groups = _syscall_groups()
    allowed: set[str] = set()
    service_filter = _unit()["Service"]["SystemCallFilter"].split()
    assert not service_filter[0].startswith("~")  # an allow-list
    pending = list(service_filter)
    while pending:
        name = pending.pop()
        if name.startswith("@"):
            pending += [member for member in groups[name] if member not in allowed]
        allowed.add(name)
    needed = {"prlimit64", "setrlimit", "prctl", "landlock_create_ruleset", "landlock_add_rule",
              "landlock_restrict_self"}
    assert needed <= allowed, needed - allowed


def test_espeak_works_with_memory_deny_write_execute() -> None:
    """MemoryDenyWriteExecute=yes: eSpeak's ctypes callback must not need W+X memory."""
    assert pcm_bytes_under_mdwe("espeak", {"voice": "en-gb"}) > 10000
