"""Bounds on one /speech request, attacked from outside a real `idlakd serve` (issue 9).

A client that stops reading holds its worker back, not the daemon's memory;
stream:false answers come from a spool, not from memory; audio past
max_audio_seconds is cut; HTTP/1.0 clients get a close-delimited body.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import aiohttp
import pytest
from tests.helpers.app import assert_error, bearer
from tests.helpers.daemon import (SLOW_WAV, Daemon, login, start_daemon, wait_listening,
                            write_voice_config)

from idlakd.synth.wav import parse_wav

MIB = 1024 * 1024
# A command voice that writes 20 minutes of 16 kHz audio (38 MB) for any text, as fast
# as its pipe takes it: one chunk, so only back-pressure can keep it out of the daemon.
FLOOD_RATE = 16000
FLOOD_SECONDS = 1200
SENTENCE = "The quick brown fox jumps over the lazy dog near the quiet river bank. "
# About 20 minutes of eSpeak audio (50 MB of PCM) in plain sentences.
LONG_TEXT = (SENTENCE * 300)[:20000]


def _rss(pid: int) -> int:
    """Resident set size of a process in bytes (0 if it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _tree_rss(daemon: Daemon) -> int:
    """RSS of the daemon plus its direct children (workers, ffmpeg)."""
    return _rss(daemon.process.pid) + sum(_rss(pid) for pid in daemon.children())


def _voice_config(directory: Path) -> Path:
    """The helpers' voices (alba, slow) plus 'flood'."""
    path = write_voice_config(directory)
    entries = json.loads(path.read_text())
    entries.append({"vid": "flood", "name": "Flood", "gender": "male", "lang": "en", "acc": "zz",
                    "engine": "command", "options": {
                        "argv": [sys.executable, "-c", SLOW_WAV, str(FLOOD_RATE),
                                 str(FLOOD_SECONDS), "1.0", "0"],
                        "sample_rate": FLOOD_RATE}})
    path.write_text(json.dumps(entries))
    return path


class Served:
    """A daemon shared by this module's tests, and an admin token for it."""

    def __init__(self, daemon: Daemon, token: str, state_dir: Path) -> None:
        self.daemon = daemon
        self.token = token
        self.state_dir = state_dir


async def _start(tmp: Path, **settings: str) -> Served:
    """Start a daemon with these settings and log in as admin."""
    settings.setdefault("voice_config", str(_voice_config(tmp / "voices-with-flood")))
    daemon = start_daemon(tmp, workers_per_voice="2", **settings)
    await wait_listening(daemon)
    async with aiohttp.ClientSession() as session:
        token = await login(session, daemon.url, "admin", daemon.admin_password())
    return Served(daemon, token, tmp / "state")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """One daemon with a high audio cap, a 1 MiB spool and the cache on."""
    tmp = tmp_path_factory.mktemp("bounds")
    running = asyncio.run(_start(tmp, max_audio_seconds="100000", spool_bytes=str(MIB),
                                 cache_max_bytes=str(16 * MIB)))
    try:
        yield running
    finally:
        running.daemon.kill()


async def _request(served: Served, body: dict[str, Any], version: str = "1.1", extra: str = ""
                   ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes]:
    """Send POST /speech over a raw socket; the open connection and the response head."""
    payload = json.dumps(body).encode()
    sock = socket.socket()
    # A small receive buffer: what the client does not read stays in the daemon's hands.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", served.daemon.port))
    reader, writer = await asyncio.open_connection(sock=sock)
    writer.write(f"POST /speech HTTP/{version}\r\nHost: x\r\nContent-Type: application/json\r\n"
                 f"Authorization: Bearer {served.token}\r\n{extra}"
                 f"Content-Length: {len(payload)}\r\n\r\n".encode() + payload)
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    return reader, writer, head


def _headers(head: bytes) -> dict[str, str]:
    """Header names (lower case) and values of a response head."""
    lines = head.decode("latin-1").split("\r\n")[1:]
    return {name.strip().lower(): value.strip()
            for name, _, value in (line.partition(":") for line in lines if line)}


def _chunked_body(raw: bytes) -> bytes:
    """Decode a complete chunked body."""
    body, position = b"", 0
    while True:
        end = raw.index(b"\r\n", position)
        size = int(raw[position:end].split(b";")[0], 16)
        if size == 0:
            return body
        body += raw[end + 2:end + 2 + size]
        position = end + 2 + size + 2


def _decoded_seconds(data: bytes, rate: int) -> float:
    """Duration of an encoded file, decoded by ffmpeg to mono s16le at rate."""
    import imageio_ffmpeg  # type: ignore[import-untyped]

    pcm = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-loglevel", "error",
                          "-i", "pipe:0", "-f", "s16le", "-ac", "1", "-ar", str(rate), "pipe:1"],
                         input=data, capture_output=True, check=True, timeout=30).stdout
    return len(pcm) / 2 / rate


def _spool_files(pid: int, state_dir: Path) -> list[str]:
    """Deleted files the process holds open in the state directory (the stream:false spool)."""
    found = []
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith(str(state_dir)) and target.endswith("(deleted)"):
            found.append(target)
    return found


async def test_a_reader_that_stops_holds_back_the_worker_not_memory(served: Served) -> None:
    """Finding 2 (streaming): 20 minutes of audio in one chunk, the client stops after 64 KiB."""
    reader, writer, head = await _request(served, {"voice_id": "flood", "text": "Go."})
    try:
        assert head.startswith(b"HTTP/1.1 200"), head
        got = 0
        while got < 64 * 1024:
            got += len(await reader.read(64 * 1024 - got))
        before = peak = _tree_rss(served.daemon)
        for _ in range(20):  # 2 s without reading: unbounded, the whole 38 MB would pile up
            await asyncio.sleep(0.1)
            peak = max(peak, _tree_rss(served.daemon))
        print(f"slow reader: daemon+workers RSS {before / MIB:.1f} MiB -> peak {peak / MIB:.1f} MiB")
        assert peak - before < 8 * MIB
        # Held back, not dropped: the stream goes on once the client reads again.
        more = 0
        while more < 4 * MIB:
            data = await reader.read(256 * 1024)
            assert data, "the stream ended early"
            more += len(data)
    finally:
        writer.close()


@pytest.mark.parametrize("audio_format", ["wav", "mp3"])
async def test_a_complete_answer_comes_from_a_spool_not_memory(served: Served,
                                                                audio_format: str) -> None:
    """Finding 2 (stream:false): 20 (mp3: 10) minutes of speech; the daemon's RSS stays put."""
    # mp3 takes ffmpeg about 4 s per 20 minutes: half as long keeps the test quick.
    text = LONG_TEXT[:19900] if audio_format == "wav" else LONG_TEXT[:10000]
    body = {"voice_id": "alba", "text": f"{audio_format}. {text}", "stream": False,
            "audio_format": audio_format}
    pid = served.daemon.process.pid
    before = peak = _rss(pid)
    sampling = True

    async def sample() -> None:
        nonlocal peak
        while sampling:
            peak = max(peak, _rss(pid))
            await asyncio.sleep(0.02)

    sampler = asyncio.create_task(sample())
    started = time.monotonic()
    reader, writer, head = await _request(served, body)
    try:
        assert head.startswith(b"HTTP/1.1 200"), head
        # The answer waits in the socket: the spool is open, and on disk past 1 MiB.
        assert _spool_files(pid, served.state_dir), "no unlinked temporary file held"
        length = int(_headers(head)["content-length"])
        data = await reader.readexactly(length)
    finally:
        writer.close()
        sampling = False
        await sampler
    print(f"stream:false {audio_format}: {length} bytes in {time.monotonic() - started:.1f} s, "
          f"daemon RSS {before / MIB:.1f} MiB -> peak {peak / MIB:.1f} MiB")
    assert peak - before < 12 * MIB
    if audio_format == "wav":
        info = parse_wav(data)
        assert info.data_offset + info.data_size == length
        seconds = info.data_size / 2 / info.sample_rate
        assert seconds > 600  # about 20 minutes of speech
    else:
        seconds = _decoded_seconds(data, 22050)
        assert seconds > 300
    # The spool is gone with the answer.
    for _ in range(50):
        if not _spool_files(pid, served.state_dir):
            break
        await asyncio.sleep(0.02)
    assert _spool_files(pid, served.state_dir) == []


async def test_complete_mp3_lasts_as_long_as_the_wav(served: Served) -> None:
    """stream:false mp3 (ffmpeg encoding into the spool) decodes to the wav's duration."""
    text = "A few sentences, long enough to span several chunks. " * 20
    durations = []
    async with aiohttp.ClientSession() as session:
        for audio_format in ("wav", "mp3"):
            async with session.post(served.daemon.url + "/speech", headers=bearer(served.token),
                                    json={"voice_id": "alba", "text": text, "stream": False,
                                          "audio_format": audio_format}) as resp:
                assert resp.status == 200
                data = await resp.read()
                assert resp.content_length == len(data)
            if audio_format == "wav":
                info = parse_wav(data)
                durations.append(info.data_size / 2 / info.sample_rate)
            else:
                durations.append(_decoded_seconds(data, 22050))
    assert durations[0] > 20
    # mp3 adds an encoder delay and pads its last frame: a few hundredths of a second.
    assert abs(durations[1] - durations[0]) < 0.15


async def test_audio_past_max_audio_seconds_is_cut(tmp_path: Path) -> None:
    """The 'slow' voice makes 0.3 s for any text; the cap is 0.25 s and the text's estimate is under it."""
    served = await _start(tmp_path, max_audio_seconds="0.25")
    try:
        async with aiohttp.ClientSession() as session:
            url, headers = served.daemon.url + "/speech", bearer(served.token)
            async with session.post(url, headers=headers,
                                    json={"voice_id": "slow", "text": "Qz."}) as resp:
                assert resp.status == 200  # the first audio went out before the cap was reached
                with pytest.raises(aiohttp.ClientPayloadError):
                    await resp.read()  # never a clean end of a cut file
            async with session.post(url, headers=headers,
                                    json={"voice_id": "slow", "text": "Qz.", "stream": False,
                                          "audio_format": "mp3"}) as resp:
                await assert_error(resp, 413, "Audio longer than the limit of 0.25 seconds")
        # Log lines reach the file through a queue: a moment after the answers.
        for _ in range(100):
            log = served.daemon.log()
            cut = [line for line in log.splitlines() if "max_audio_seconds" in line]
            if len(cut) >= 2:
                break
            await asyncio.sleep(0.05)
        assert len(cut) == 2 and all("WARNING" in line and "slow" in line for line in cut), log
        assert "Qz" not in log
        # Synthesis stopped: no worker or ffmpeg is left busy.
        for _ in range(100):
            if len(served.daemon.children()) <= 2:  # the idle warm workers of 'slow'
                break
            await asyncio.sleep(0.05)
        assert len(served.daemon.children()) <= 2
    finally:
        served.daemon.kill()


async def test_http_1_0_gets_a_close_delimited_stream(served: Served) -> None:
    """Finding 6: HTTP/1.0 POST /speech (streaming is the default) is a 200, not a 500."""
    body = {"voice_id": "alba", "text": "Hello from an old client."}
    reader, writer, head = await _request(served, body, version="1.0")
    try:
        data = await reader.read()  # up to the close
    finally:
        writer.close()
    headers = _headers(head)
    assert head.startswith(b"HTTP/1.0 200"), head
    assert "transfer-encoding" not in headers and "content-length" not in headers
    assert headers.get("connection", "close").lower() == "close"
    info = parse_wav(data)
    assert info.sample_rate == 22050 and info.data_size > 22050  # over half a second of speech
    assert (len(data) - info.data_offset) % 2 == 0
    # The same request again is served from the cache: its size is known then.
    reader, writer, head = await _request(served, body, version="1.0")
    try:
        again = await reader.read()
    finally:
        writer.close()
    assert head.startswith(b"HTTP/1.0 200") and _headers(head)["content-length"] == str(len(again))
    # A keep-alive HTTP/1.0 client is told the connection closes, and it does: a pipelined
    # request's answer can never land inside the audio body.
    reader, writer, head = await _request(
        served, {**body, "text": "Keep me alive.", "audio_format": "ogg"}, version="1.0",
        extra="Connection: keep-alive\r\n")
    try:
        writer.write(b"GET /languages HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        data = await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
    # HTTP/1.0 without "Connection: keep-alive" in the answer means close; and it did close.
    assert _headers(head).get("connection", "close").lower() == "close"
    assert data[:4] == b"OggS" and b"HTTP/1." not in data
    # An HTTP/1.1 client still gets chunks.
    reader, writer, head = await _request(served, {"voice_id": "alba", "text": "New text."})
    try:
        assert _headers(head)["transfer-encoding"] == "chunked"
        raw = await reader.readuntil(b"\r\n0\r\n\r\n")
    finally:
        writer.close()
    assert parse_wav(_chunked_body(raw)).data_size > 0
    assert "Traceback" not in served.daemon.log()


async def test_slow_readers_do_not_hold_every_synthesis_slot(tmp_path: Path) -> None:
    """Two streams that stop reading, on one voice, do not stall a short request on another voice.

    Each stream's chunks wait for room behind their reader; while they wait they give their
    global synthesis slot back, so the only two slots are free for other voices.
    """
    voices = tmp_path / "voiceconfig.json"
    voices.write_text(json.dumps([
        {"vid": vid, "name": vid, "gender": "female", "lang": "en", "acc": "gb",
         "engine": "espeak", "options": {"voice": "en-gb"}} for vid in ("held", "free")]))
    served = await _start(tmp_path, voice_config=str(voices), max_concurrent_syntheses="2",
                          max_audio_seconds="100000", synthesis_timeout_seconds="30")
    # Long sentences without full stops: every chunk is 300 characters, more audio than a
    # chunk's buffer, so each blocked chunk holds its worker mid-synthesis.
    text = ("word and another word " * 900)[:19000]
    stuck = [await _request(served, {"voice_id": "held", "text": text}) for _ in range(2)]
    try:
        await asyncio.sleep(2)  # the held voice's chunks now wait for their readers
        async with aiohttp.ClientSession() as session:
            started = time.monotonic()
            async with session.post(served.daemon.url + "/speech", headers=bearer(served.token),
                                    json={"voice_id": "free", "text": "Hello."}) as resp:
                assert resp.status == 200
                assert len(await resp.read()) > 1000
            took = time.monotonic() - started
        assert took < 5, f"a short request waited {took:.1f} s behind two stalled readers"
    finally:
        for _reader, writer, _head in stuck:
            writer.close()
        served.daemon.kill()
