"""Request text is hostile: attacks that worked against eSpeak through /speech, replayed on a real daemon.

Each test sends what an attacker sent (control characters, eSpeak-crashing markup, huge breaks)
as an ordinary signed-in user, then checks what other users and the host see.
"""

from __future__ import annotations

import array
import io
import json
import math
import wave
from pathlib import Path
from typing import Any, AsyncIterator

import aiohttp
import pytest

from tests.helpers.daemon import Daemon, login, start_daemon, wait_listening
from tests.helpers.synth import STANDIN_ROOT, make_standin_voice

SENTENCE = "Hello there, this is another user speaking clearly."


@pytest.fixture
async def daemon(tmp_path: Path) -> AsyncIterator[Daemon]:
    """A real daemon with two warm workers per voice, as the attack found it."""
    started = start_daemon(tmp_path, workers_per_voice="2", max_audio_seconds="120")
    try:
        await wait_listening(started)
        yield started
    finally:
        started.kill()


async def _user(session: aiohttp.ClientSession, daemon: Daemon, admin: str, uid: str) -> str:
    """Create a user through the API and return their token."""
    async with session.post(daemon.url + "/users", json={"uid": uid},
                            headers={"Authorization": f"Bearer {admin}"}) as resp:
        assert resp.status == 200, await resp.text()
        password = (await resp.json())["password"]
    return await login(session, daemon.url, uid, password)


async def _speech(session: aiohttp.ClientSession, daemon: Daemon, token: str, text: str,
                  **fields: Any) -> tuple[int, bytes]:
    """POST /speech as a complete file: (status, body)."""
    body = {"voice_id": "alba", "text": text, "stream": False, **fields}
    async with session.post(daemon.url + "/speech", json=body,
                            headers={"Authorization": f"Bearer {token}"}) as resp:
        return resp.status, await resp.read()


def _level(wav_bytes: bytes) -> tuple[float, float]:
    """(RMS level, seconds) of a mono 16-bit WAV file."""
    with wave.open(io.BytesIO(wav_bytes)) as reader:
        rate = reader.getframerate()
        samples = array.array("h", reader.readframes(reader.getnframes()))
    rms = math.sqrt(sum(s * s for s in samples) / max(1, len(samples)))
    return rms, len(samples) / rate


def _worker_pids(daemon: Daemon) -> set[int]:
    """The daemon's synthesis workers now."""
    return {pid for pid in daemon.children()
            if "idlakd.worker" in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")}


async def test_control_characters_cannot_change_another_users_audio(daemon: Daemon) -> None:
    """eSpeak's embedded commands (U+0001 + amplitude, speed, pitch) no longer stick to a worker."""
    async with aiohttp.ClientSession() as session:
        admin = await login(session, daemon.url, "admin", daemon.admin_password())
        victim = await _user(session, daemon, admin, "victim")
        attacker = await _user(session, daemon, admin, "mallory")
        status, before = await _speech(session, daemon, victim, SENTENCE)
        assert status == 200
        level_before, seconds_before = _level(before)
        assert level_before > 500
        # Once per warm worker and then some: silence, double speed, lowest pitch.
        for attack in ("\u00010A ok", "\u0001450S ok", "\u00010P ok", "\u00010A\u00010R ok") * 2:
            status, body = await _speech(session, daemon, attacker, attack)
            assert status == 200, body  # the control character is removed, the rest spoken
            assert _level(body)[0] > 100
        for _ in range(4):  # every worker of the voice, whichever serves
            status, after = await _speech(session, daemon, victim, SENTENCE)
            assert status == 200
            level_after, seconds_after = _level(after)
            assert level_after == pytest.approx(level_before, rel=0.1)
            assert seconds_after == pytest.approx(seconds_before, rel=0.1)


CRASHING_MARKUP = [
    ('<speak><audio src="/etc/passwd"/></speak>', "<audio>"),
    ('<speak><audio src="/no/such/file"/></speak>', "<audio>"),
    ('<speak xml:base="' + "b" * 150 + '"><audio src="' + "s" * 150 + '"/></speak>', "xml:base"),
    ("<speak>" + "".join(f'<audio src="/tmp/x{n}"/>' for n in range(90)) + "</speak>", "<audio>"),
    ('<speak><p xml:base="/etc/">hi</p></speak>', "xml:base"),
]


async def test_markup_that_crashed_espeak_is_refused_and_no_worker_restarts(daemon: Daemon) -> None:
    """Each crashing shape answers 422 naming the element; the warm workers are the same after."""
    async with aiohttp.ClientSession() as session:
        admin = await login(session, daemon.url, "admin", daemon.admin_password())
        assert (await _speech(session, daemon, admin, "Warm up. Both workers."))[0] == 200
        workers = _worker_pids(daemon)
        assert workers
        bodies = []
        for text, element in CRASHING_MARKUP:
            async with session.post(daemon.url + "/speech", headers={"Authorization": f"Bearer {admin}"},
                                    json={"voice_id": "alba", "text": text}) as resp:
                assert resp.status == 422, text[:60]
                message = (await resp.json())["message"]
                assert element in message, message
                bodies.append(message)
        # Whether a file exists on the server no longer shows in the answer.
        assert bodies[0] == bodies[1]
        assert _worker_pids(daemon) == workers
        status, body = await _speech(session, daemon, admin, SENTENCE)
        assert status == 200 and _level(body)[0] > 500
    assert "Traceback" not in daemon.log()


def _rss_kib(pid: int) -> int:
    """Resident memory of a process in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


async def test_long_breaks_are_refused_before_any_audio_is_made(daemon: Daemon) -> None:
    """8000 s breaks, a text of breaks, and a text over max_audio_seconds: refused, memory flat."""
    async with aiohttp.ClientSession() as session:
        admin = await login(session, daemon.url, "admin", daemon.admin_password())
        assert (await _speech(session, daemon, admin, "Warm up."))[0] == 200
        rss_before = _rss_kib(daemon.process.pid)
        attacks = [
            ("<speak>" + '<break time="8000s"/>' * 10 + "hi</speak>", 422, "longer than 10 s"),
            ("<speak>" + '<break time="10s"/>x ' * 950 + "</speak>", 422, "breaks add up"),
            ("Words and more words. " * 200, 413, "limit of 120 seconds"),
        ]
        for text, status, needle in attacks:
            for audio_format in ("wav", "mp3"):
                async with session.post(
                        daemon.url + "/speech", headers={"Authorization": f"Bearer {admin}"},
                        json={"voice_id": "alba", "text": text, "stream": False,
                              "audio_format": audio_format}) as resp:
                    assert resp.status == status, await resp.text()
                    assert needle in (await resp.json())["message"]
        # A few breaks within the bounds are spoken as exact silence.
        status, body = await _speech(session, daemon, admin,
                                     '<speak>One. <break time="2s"/> Two.</speak>')
        assert status == 200
        assert _level(body)[1] > 2.5
        growth_mib = (_rss_kib(daemon.process.pid) - rss_before) / 1024
        assert growth_mib < 20, growth_mib


async def test_a_text_that_kills_its_worker_is_not_retried_in_a_loop(tmp_path: Path) -> None:
    """A chunk that killed a worker fails its request; the same text again is a 422 at once."""
    voices = tmp_path / "voiceconfig.json"
    voices.write_text(json.dumps([{
        "vid": "idl", "name": "Idl", "gender": "male", "lang": "en", "acc": "gb",
        "engine": "tangle", "dir": str(make_standin_voice(tmp_path / "idl"))}]))
    daemon = start_daemon(tmp_path, idlak_root=str(STANDIN_ROOT), voice_config=str(voices))
    try:
        await wait_listening(daemon)
        async with aiohttp.ClientSession() as session:
            admin = await login(session, daemon.url, "admin", daemon.admin_password())
            headers = {"Authorization": f"Bearer {admin}"}
            request = {"voice_id": "idl", "text": "Please CRASH now.", "stream": False}
            async with session.post(daemon.url + "/speech", headers=headers, json=request) as resp:
                assert resp.status == 500
            for _ in range(5):
                async with session.post(daemon.url + "/speech", headers=headers, json=request) as resp:
                    assert resp.status == 422
                    assert "not tried again" in (await resp.json())["message"]
            # Only the first attempt started (and lost) a worker.
            assert daemon.log().count("ready: engine tangle") == 1
            async with session.post(daemon.url + "/speech", headers=headers,
                                    json={**request, "text": "Something else."}) as resp:
                assert resp.status == 200
    finally:
        daemon.kill()
