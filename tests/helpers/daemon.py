"""Run the real `idlakd serve` as a subprocess for tests; a slow WAV command voice to make long streams.

Import from tests as ``from tests.helpers.daemon import ...``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

from tests.helpers.postgres import suite_database

REPO = Path(__file__).resolve().parents[2]

SLOW_RATE = 16000
SLOW_PIECES = 6
SLOW_PIECE_SECONDS = 0.05  # audio per piece
SLOW_PIECE_DELAY = 0.15  # wall time per piece: each sentence takes ~0.9 s to "synthesise"
#: Bytes of PCM the slow command writes for any one chunk of text.
SLOW_CHUNK_BYTES = SLOW_PIECES * int(SLOW_RATE * SLOW_PIECE_SECONDS) * 2

# A deliberately slow TTS "program": reads text, writes a streaming WAV piece by piece.
SLOW_WAV = r"""
import struct, sys, time
rate, pieces, per_piece, delay = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
sys.stdin.buffer.read()
out = sys.stdout.buffer
out.write(b"RIFF" + struct.pack("<I", 0xFFFFFFFF) + b"WAVE")
out.write(b"fmt " + struct.pack("<IHHIIHH", 16, 1, 1, rate, rate * 2, 2, 16))
out.write(b"data" + struct.pack("<I", 0xFFFFFFFF))
out.flush()
for n in range(pieces):
    time.sleep(delay)
    out.write(struct.pack("<h", 1000 + n) * int(rate * per_piece))
    out.flush()
"""


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_voice_config(directory: Path) -> Path:
    """A voiceconfig.json with one eSpeak voice and the slow command voice 'slow'."""
    directory.mkdir(parents=True, exist_ok=True)
    entries = [
        {"vid": "alba", "name": "Alba", "gender": "female", "lang": "en", "acc": "gb",
         "engine": "espeak", "options": {"voice": "en-gb", "variant": "f3"}},
        {"vid": "slow", "name": "Slow", "gender": "male", "lang": "en", "acc": "zz",
         "engine": "command", "options": {
             "argv": [sys.executable, "-c", SLOW_WAV, str(SLOW_RATE), str(SLOW_PIECES),
                      str(SLOW_PIECE_SECONDS), str(SLOW_PIECE_DELAY)],
             "sample_rate": SLOW_RATE}},
    ]
    path = directory / "voiceconfig.json"
    path.write_text(json.dumps(entries))
    return path


@dataclasses.dataclass
class Daemon:
    """A running `idlakd serve` subprocess and where its output goes."""

    process: subprocess.Popen[bytes]
    port: int
    stdout: Path
    stderr: Path

    @property
    def url(self) -> str:
        """Base URL of the daemon."""
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        """What it printed on stdout so far."""
        return self.stdout.read_text(errors="replace")

    def log(self) -> str:
        """What it logged on stderr so far."""
        return self.stderr.read_text(errors="replace")

    def admin_password(self) -> str:
        """The first admin's password, printed once on first start."""
        match = re.search(r"<User admin:([^:]+):True>", self.output())
        assert match, self.output() + self.log()
        return match.group(1)

    def children(self) -> list[int]:
        """Process ids of the daemon's direct children (its workers and ffmpeg)."""
        found = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                if int(fields[1]) == self.process.pid:
                    found.append(int(entry.name))
        return found

    def signal(self, signum: signal.Signals = signal.SIGTERM) -> None:
        """Send a signal to the daemon."""
        self.process.send_signal(signum)

    async def wait(self, timeout: float) -> int:
        """Wait for the process to exit; its exit status."""
        return await asyncio.to_thread(self.process.wait, timeout)

    def kill(self) -> None:
        """Make sure it is gone (test cleanup)."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


def start_daemon(tmp_path: Path, env: dict[str, str] | None = None, new_session: bool = False,
                 name: str = "daemon", **settings: str) -> Daemon:
    """Start `python -m idlakd serve` on a free port (in its own session if asked: a terminal's group).

    name: its output files (<name>.out, <name>.err in tmp_path), so several can share tmp_path.
    """
    port = int(settings.pop("port", "0")) or free_port()
    # No draining by default: a test that stops a daemon with SIGTERM need not wait for it.
    # No pre-warm unless asked: tests count the workers (children) their requests start.
    values = {"state_dir": str(tmp_path / "state"), "bcrypt_rounds": "4",
              "voice_config": str(write_voice_config(tmp_path / "voices")),
              "workers_per_voice": "1", "shutdown_grace_seconds": "20", "drain_seconds": "0",
              "prewarm_workers": "false"}
    values.update(settings)
    if "database" not in settings:
        url = suite_database(Path(values["state_dir"]))
        if url is not None:
            values["database"] = url
    argv = [sys.executable, "-m", "idlakd"]
    for key, value in values.items():
        argv += ["--set", f"{key}={value}"]
    argv += ["serve", "--host", "127.0.0.1", "--port", str(port)]
    stdout, stderr = tmp_path / f"{name}.out", tmp_path / f"{name}.err"
    child_env = {k: v for k, v in os.environ.items()
                 if not k.startswith("IDLAKD_") and k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC")}
    child_env.update(env or {})
    with open(stdout, "wb") as out, open(stderr, "wb") as err:
        process = subprocess.Popen(argv, cwd=REPO, stdout=out, stderr=err, env=child_env,
                                   start_new_session=new_session)
    return Daemon(process, port, stdout, stderr)


async def wait_listening(daemon: Daemon, timeout: float = 30.0) -> None:
    """Poll /healthz until the daemon answers 200."""
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        while True:
            assert daemon.process.poll() is None, daemon.log()
            try:
                async with session.get(daemon.url + "/healthz") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientConnectionError:
                pass
            assert time.monotonic() < deadline, "daemon did not start:\n" + daemon.log()
            await asyncio.sleep(0.1)


async def login(session: aiohttp.ClientSession, url: str, uid: str, password: str) -> str:
    """POST /auth; the token."""
    async with session.post(url + "/auth", json={"uid": uid, "password": password}) as resp:
        assert resp.status == 200, await resp.text()
        token: Any = (await resp.json())["access_token"]
        assert isinstance(token, str)
        return token
