"""Helpers for synthesis tests: stand-in Idlak voices, a WAV-writing command, a worker client.

Import from tests as ``from tests.helpers.synth import ...``.
"""

from __future__ import annotations

import array
import asyncio
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from idlakd.synth.document import Chunk, Text
from idlakd.worker.protocol import Frame, encode_frame, encode_segments, read_frame
from idlakd.worker.main import worker_argv

REPO = Path(__file__).resolve().parents[2]
#: idlak_root for tests: holds the stand-in pyIdlak package.
STANDIN_ROOT = REPO / "tests" / "pyidlak_standin"

# A tiny TTS "program": reads text on stdin, writes a WAV on stdout (a tone
# per character), streaming-style sizes by default. argv: rate channels
# streaming(0/1) exit_code.
WAV_WRITER = r"""
import math, struct, sys
rate, channels, streaming, code = (int(a) for a in sys.argv[1:5])
text = sys.stdin.buffer.read().decode("utf-8")
out = sys.stdout.buffer
if "FAIL" in text:
    sys.stderr.write("wav writer: asked to FAIL\n")
    sys.exit(4)
per_char = rate // 50
frames = bytearray()
for n, ch in enumerate(text):
    freq = 200 + 10 * (ord(ch) % 30)
    for i in range(per_char):
        value = int(8000 * math.sin(2 * math.pi * freq * i / rate))
        frames += struct.pack("<h", value) * channels
size = 0xFFFFFFFF if streaming else len(frames)
riff = 0xFFFFFFFF if streaming else 36 + 26 + len(frames)
out.write(b"RIFF" + struct.pack("<I", riff) + b"WAVE")
out.write(b"fmt " + struct.pack("<IHHIIHH", 16, 1, channels, rate, rate * 2 * channels, 2 * channels, 16))
out.write(b"LIST" + struct.pack("<I", 17) + b"INFOISFT\x05\x00\x00\x00test\x00" + b"\x00")
out.write(b"data" + struct.pack("<I", size))
for start in range(0, len(frames), 4096):
    out.write(frames[start:start + 4096])
    out.flush()
sys.stderr.write("wav writer: done\n")
sys.exit(code)
"""


def wav_command_argv(sample_rate: int = 16000, channels: int = 1, streaming: bool = True,
                     exit_code: int = 0) -> list[str]:
    """argv of a real program that turns stdin text into a WAV on stdout."""
    return [sys.executable, "-c", WAV_WRITER, str(sample_rate), str(channels),
            "1" if streaming else "0", str(exit_code)]


def make_standin_voice(directory: Path, *, lng: str = "en", acc: str = "ga", spk: str = "tst",
                       srate: int | None = 16000, **extra: Any) -> Path:
    """Create a stand-in Idlak voice directory (voice.conf; extra keys e.g. delay_per_sentence)."""
    directory.mkdir(parents=True, exist_ok=True)
    lines = [f"lng={lng}", f"acc={acc}", f"spk={spk}"]
    if srate is not None:
        lines.append(f"srate={srate}")
    lines += [f"{key}={value}" for key, value in extra.items()]
    (directory / "voice.conf").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return directory


def worker_env() -> dict[str, str]:
    """The environment for a worker child: the repository importable."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH", "")]))
    return env


@dataclasses.dataclass
class Utterance:
    """Everything a worker sent for one request."""

    start: Frame
    audio: list[Frame]
    final: Frame  # end or error

    @property
    def pcm(self) -> bytes:
        """All audio payloads joined."""
        return b"".join(frame.payload for frame in self.audio)

    @property
    def samples(self) -> array.array[int]:
        """The PCM as int16 samples (little-endian host assumed, as on x86/arm)."""
        return array.array("h", self.pcm)


class WorkerClient:
    """A real worker subprocess driven over its pipes, as the daemon does."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.stderr_lines: list[str] = []
        self.ready: Frame | None = None
        self._next_id = 0
        assert proc.stderr is not None
        self._stderr_task = asyncio.create_task(self._collect_stderr(proc.stderr))

    @classmethod
    async def start(cls, engine: str, directory: str | Path = "", options: dict[str, Any] | None = None,
                    idlak_root: Path | None = None, timeout: float = 30.0) -> "WorkerClient":
        """Spawn a worker and read its first frame (ready, or a fatal error kept in .ready)."""
        argv = worker_argv(engine, str(directory), options, idlak_root, name="test")
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, env=worker_env(), cwd=str(REPO))
        client = cls(proc)
        client.ready = await client.read(timeout)
        return client

    async def _collect_stderr(self, stream: asyncio.StreamReader) -> None:
        """Keep the worker's stderr lines (its logs and anything engines printed)."""
        async for raw in stream:
            self.stderr_lines.append(raw.decode("utf-8", errors="replace").rstrip("\n"))

    async def read(self, timeout: float = 30.0) -> Frame | None:
        """The next frame from the worker (None at EOF)."""
        assert self.proc.stdout is not None
        return await read_frame(self.proc.stdout, timeout)

    async def send(self, text: str | list[dict[str, Any]]) -> int:
        """Send a synthesize request (a text, or the segments themselves); returns its id."""
        assert self.proc.stdin is not None
        self._next_id += 1
        segments = [{"text": text}] if isinstance(text, str) else text
        self.proc.stdin.write(encode_frame("synthesize", encode_segments(segments),
                                           id=self._next_id))
        await self.proc.stdin.drain()
        return self._next_id

    async def synthesize(self, text: str | list[dict[str, Any]],
                         timeout: float = 30.0) -> Utterance:
        """Send one request and collect start, audio and end/error frames."""
        request_id = await self.send(text)
        start = await self.read(timeout)
        assert start is not None and start.type == "start", start
        assert start.header["id"] == request_id
        audio: list[Frame] = []
        while True:
            frame = await self.read(timeout)
            assert frame is not None, "worker closed its stdout mid-request"
            assert frame.header["id"] == request_id
            if frame.type != "audio":
                return Utterance(start, audio, frame)
            audio.append(frame)

    async def close(self, timeout: float = 10.0) -> int:
        """Close stdin and wait for the exit code (kill if it does not exit)."""
        assert self.proc.stdin is not None
        if not self.proc.stdin.is_closing():
            self.proc.stdin.close()
        try:
            code = await asyncio.wait_for(self.proc.wait(), timeout)
        except TimeoutError:
            self.proc.kill()
            code = await self.proc.wait()
        await self._stderr_task
        return code

    async def kill(self) -> None:
        """Kill the worker and reap it."""
        if self.proc.returncode is None:
            self.proc.kill()
        await self.proc.wait()
        await self._stderr_task


def chunk(text: str) -> Chunk:
    """A worker chunk of plain words."""
    return Chunk((Text(text),))


# Run an engine in a process that has refused W+X memory, as systemd's
# MemoryDenyWriteExecute=yes makes the unit's workers. argv: engine options_json.
_UNDER_MDWE = r"""
import ctypes, json, sys
libc = ctypes.CDLL(None, use_errno=True)
PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 65, 1
if libc.prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0:
    print("no-mdwe"); sys.exit(0)
from idlakd.worker.engines import load_engine
engine = load_engine(sys.argv[1], "", json.loads(sys.argv[2]), None)
pcm = b"".join(engine.synthesize("Hello from a write-xor-execute process."))
engine.close()
print("pcm", len(pcm))
"""


def pcm_bytes_under_mdwe(engine: str, options: dict[str, Any]) -> int:
    """PCM bytes an engine made for one sentence under MemoryDenyWriteExecute (skips the test
    on kernels without PR_SET_MDWE, Linux < 6.3)."""
    proc = subprocess.run([sys.executable, "-c", _UNDER_MDWE, engine, json.dumps(options)],
                          check=False, cwd=REPO, capture_output=True, text=True, timeout=60)
    if proc.stdout.strip() == "no-mdwe":
        pytest.skip("this kernel has no PR_SET_MDWE (Linux < 6.3)")
    assert proc.returncode == 0, proc.stderr
    words = proc.stdout.split()
    assert words[0] == "pcm", proc.stdout
    return int(words[1])

