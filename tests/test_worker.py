"""The worker process over real pipes: eSpeak NG, the pyIdlak stand-in, and a real WAV command."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from pathlib import Path
from typing import Iterable

import pytest
from tests.helpers.synth import (
    REPO,
    STANDIN_ROOT,
    WorkerClient,
    make_standin_voice,
    wav_command_argv,
    worker_env,
)

from idlakd.worker.protocol import (MAX_AUDIO_PAYLOAD, ProtocolError, encode_frame, encode_segments,
                                   read_frame_sync)
from idlakd.worker.main import worker_argv


def _peak(samples: Iterable[int]) -> int:
    """Largest absolute sample value."""
    return max((abs(v) for v in samples), default=0)


# ---------------------------------------------------------------- espeak


async def test_espeak_worker_streams_real_audio() -> None:
    """ready/start carry eSpeak's rate; audio is non-silent, framed <= 64 KiB, and grows with text."""
    worker = await WorkerClient.start("espeak", options={"voice": "en-gb", "variant": "f3"})
    try:
        assert worker.ready is not None and worker.ready.type == "ready"
        rate = worker.ready.header["sample_rate"]
        assert rate == 22050  # what espeak_Initialize reports for the bundled data
        assert worker.ready.header["engine"] == "espeak"

        short = await worker.synthesize("Hello.")
        long = await worker.synthesize("Hello. " + "This sentence is a good deal longer than the first one. " * 6)
        for utterance in (short, long):
            assert utterance.start.header["sample_rate"] == rate
            assert utterance.final.type == "end"
            assert utterance.final.header["samples"] * 2 == len(utterance.pcm)
            assert all(0 < len(f.payload) <= MAX_AUDIO_PAYLOAD and len(f.payload) % 2 == 0
                       for f in utterance.audio)
            assert _peak(utterance.samples) > 1000
        assert len(long.pcm) > 5 * len(short.pcm)
        # Streamed per eSpeak buffer, not one lump at the end.
        assert len(long.audio) > 10
        assert len(short.pcm) / 2 / rate > 0.3
    finally:
        assert await worker.close() == 0


async def test_espeak_worker_breaks_and_other_languages() -> None:
    """A break segment is exact silence of its length; markup in a text segment is only words."""
    worker = await WorkerClient.start("espeak", options={"voice": "en-us", "rate": 200, "pitch": 60})
    try:
        plain = await worker.synthesize([{"text": "one"}, {"text": "two"}])
        paused = await worker.synthesize([{"text": "one"}, {"break_ms": 2000}, {"text": "two"}])
        assert plain.final.type == paused.final.type == "end"
        rate = worker.ready.header["sample_rate"] if worker.ready else 0
        # eSpeak itself varies by a few samples from one run to the next.
        assert abs(len(paused.samples) - len(plain.samples) - 2 * rate) < rate // 100
        # Markup inside a text segment is never read as markup: no break, a longer utterance.
        tagged = await worker.synthesize('one <break time="2s"/> two')
        assert tagged.final.type == "end" and len(tagged.samples) < len(paused.samples)
    finally:
        await worker.close()
    for voice in ("fr-fr", "ru"):
        other = await WorkerClient.start("espeak", options={"voice": voice, "variant": "m1"})
        try:
            utterance = await other.synthesize("Bonjour" if voice == "fr-fr" else "Привет, мир")
            assert utterance.final.type == "end" and _peak(utterance.samples) > 1000
        finally:
            await other.close()


async def test_espeak_unknown_voice_is_fatal() -> None:
    """A voice eSpeak does not have: one fatal error frame, then exit code 3."""
    worker = await WorkerClient.start("espeak", options={"voice": "xx-nowhere"})
    assert worker.ready is not None and worker.ready.type == "error"
    assert worker.ready.header["fatal"] is True
    assert "xx-nowhere" in worker.ready.header["message"]
    assert await worker.read() is None
    assert await worker.close() == 3


# ---------------------------------------------------------------- tangle stand-in


async def test_tangle_standin_prints_do_not_corrupt_and_clip(tmp_path: Path) -> None:
    """Stand-in stdout prints land in stderr; frames stay clean; loud words clip to int16."""
    voice = make_standin_voice(tmp_path / "v", srate=16000)
    worker = await WorkerClient.start("tangle", voice, idlak_root=STANDIN_ROOT)
    try:
        assert worker.ready is not None and worker.ready.type == "ready"
        assert worker.ready.header["sample_rate"] == 16000
        quiet = await worker.synthesize("calm words")
        loud = await worker.synthesize("calm words loud!")
        assert quiet.final.type == loud.final.type == "end"
        assert 10000 < _peak(quiet.samples) < 32767  # stand-in amplitude 12000
        assert max(loud.samples) == 32767 and min(loud.samples) == -32768
        # 0.03 s per letter + 0.02 s gap per word at 16 kHz.
        assert quiet.final.header["samples"] == int(16000 * 0.03 * 4) + int(16000 * 0.03 * 5) + 2 * 320
        # XML-special characters are escaped for Idlak, not a parse error.
        escaped = await worker.synthesize("Tom & Jerry <3")
        assert escaped.final.type == "end"
    finally:
        assert await worker.close() == 0
    printed = "\n".join(worker.stderr_lines)
    assert "(print to stdout)" in printed and "(os.write to fd 1)" in printed


async def test_tangle_standin_delay_per_sentence(tmp_path: Path) -> None:
    """The stand-in's delay_per_sentence slows speak() per sentence (for pool timing tests)."""
    voice = make_standin_voice(tmp_path / "v", delay_per_sentence=0.2)
    worker = await WorkerClient.start("tangle", voice, idlak_root=STANDIN_ROOT)
    try:
        started = asyncio.get_running_loop().time()
        assert (await worker.synthesize("One. Two. Three.")).final.type == "end"
        assert asyncio.get_running_loop().time() - started >= 0.6
    finally:
        await worker.close()


async def test_tangle_raise_then_next_request_works(tmp_path: Path) -> None:
    """An engine exception becomes an error frame for that id; the worker keeps serving."""
    worker = await WorkerClient.start("tangle", make_standin_voice(tmp_path / "v"),
                                      idlak_root=STANDIN_ROOT)
    try:
        failed = await worker.synthesize("please RAISE now")
        assert failed.final.type == "error" and not failed.audio
        assert "RAISE requested" in failed.final.header["message"]
        assert failed.final.header["id"] == failed.start.header["id"]
        after = await worker.synthesize("still here")
        assert after.final.type == "end" and after.final.header["samples"] > 0
    finally:
        assert await worker.close() == 0


async def test_tangle_crash_gives_eof(tmp_path: Path) -> None:
    """CRASH kills the worker mid-request: the parent sees start, then a clean EOF."""
    worker = await WorkerClient.start("tangle", make_standin_voice(tmp_path / "v"),
                                      idlak_root=STANDIN_ROOT)
    await worker.send("CRASH please")
    start = await worker.read()
    assert start is not None and start.type == "start"
    assert await worker.read() is None
    assert await worker.close() == 9


async def test_tangle_hang_times_out_and_can_be_killed(tmp_path: Path) -> None:
    """HANG stalls the worker: reads time out; killing it leaves nothing behind."""
    worker = await WorkerClient.start("tangle", make_standin_voice(tmp_path / "v"),
                                      idlak_root=STANDIN_ROOT)
    await worker.send("HANG")
    assert (await worker.read()) is not None  # start
    with pytest.raises(TimeoutError):
        await worker.read(timeout=0.3)
    await worker.kill()
    assert worker.proc.returncode == -signal.SIGKILL


async def test_tangle_garbage_on_protocol_fd_is_a_protocol_error(tmp_path: Path) -> None:
    """The stand-in's garbage hack writes junk to the protocol fd; the parent raises ProtocolError."""
    worker = await WorkerClient.start("tangle", make_standin_voice(tmp_path / "v"),
                                      idlak_root=STANDIN_ROOT)
    try:
        await worker.send("GARBAGE")
        assert (await worker.read()) is not None  # start
        with pytest.raises(ProtocolError):
            await worker.read()
    finally:
        await worker.kill()


async def test_tangle_missing_voice_conf_is_fatal(tmp_path: Path) -> None:
    """pyIdlak failing to load the voice: fatal error frame and exit code 3."""
    (tmp_path / "empty").mkdir()
    worker = await WorkerClient.start("tangle", tmp_path / "empty", idlak_root=STANDIN_ROOT)
    assert worker.ready is not None and worker.ready.type == "error"
    assert worker.ready.header["fatal"] is True and worker.ready.header["id"] is None
    assert await worker.close() == 3


async def test_sigint_is_ignored(tmp_path: Path) -> None:
    """Ctrl-C in the daemon's terminal reaches the worker's group; the worker keeps serving."""
    worker = await WorkerClient.start("tangle", make_standin_voice(tmp_path / "v"),
                                      idlak_root=STANDIN_ROOT)
    try:
        worker.proc.send_signal(signal.SIGINT)
        await asyncio.sleep(0.1)
        assert (await worker.synthesize("hello")).final.type == "end"
    finally:
        assert await worker.close() == 0


async def test_parent_garbage_makes_worker_exit(tmp_path: Path) -> None:
    """A malformed frame from the parent is never EOF: the worker exits with code 2."""
    worker = await WorkerClient.start("tangle", make_standin_voice(tmp_path / "v"),
                                      idlak_root=STANDIN_ROOT)
    assert worker.proc.stdin is not None
    worker.proc.stdin.write(b"not json at all\n")
    assert await worker.close() == 2
    assert any("bad frame" in line for line in worker.stderr_lines)


async def test_unexpected_frame_type_gets_error(tmp_path: Path) -> None:
    """A frame type the worker does not know is answered with an error and skipped."""
    worker = await WorkerClient.start("tangle", make_standin_voice(tmp_path / "v"),
                                      idlak_root=STANDIN_ROOT)
    try:
        assert worker.proc.stdin is not None
        worker.proc.stdin.write(encode_frame("dance", id=41))
        reply = await worker.read()
        assert reply is not None and reply.type == "error" and reply.header["id"] == 41
        assert (await worker.synthesize("fine")).final.type == "end"
    finally:
        await worker.close()


def test_broken_stdout_exits_quietly(tmp_path: Path) -> None:
    """If the parent closes its end of the protocol pipe, the worker exits 0 without a traceback."""
    voice = make_standin_voice(tmp_path / "v")
    argv = worker_argv("tangle", str(voice), None, STANDIN_ROOT)
    with subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, env=worker_env(), cwd=str(REPO)) as proc:
        assert proc.stdout is not None and proc.stdin is not None
        ready = read_frame_sync(proc.stdout)  # type: ignore[arg-type]
        assert ready is not None and ready.type == "ready"
        proc.stdout.close()
        proc.stdin.write(encode_frame("synthesize", encode_segments([{"text": "a fairly long text " * 50}]),
                                        id=1))
        proc.stdin.close()
        assert proc.wait(timeout=20) == 0
        assert proc.stderr is not None
        assert b"Traceback" not in proc.stderr.read()


def test_bad_options_json_is_a_usage_error() -> None:
    """--options must be a JSON object (argparse exits 2 before touching the protocol)."""
    argv = [sys.executable, "-m", "idlakd.worker", "--engine", "espeak", "--options", "[1]"]
    result = subprocess.run(argv, capture_output=True, env=worker_env(), cwd=str(REPO), timeout=20)
    assert result.returncode == 2 and b"JSON object" in result.stderr


# ---------------------------------------------------------------- command


async def test_command_worker_reads_streamed_wav() -> None:
    """A real program writing a streaming WAV: rate probed at load, PCM passed through, stereo downmixed."""
    for channels in (1, 2):
        worker = await WorkerClient.start("command", options={"argv": wav_command_argv(16000, channels)})
        try:
            assert worker.ready is not None and worker.ready.header["sample_rate"] == 16000
            utterance = await worker.synthesize("abcd")
            assert utterance.final.type == "end"
            assert utterance.final.header["samples"] == 4 * 16000 // 50
            assert 7000 < _peak(utterance.samples) <= 8000
        finally:
            assert await worker.close() == 0


async def test_command_failure_reports_stderr_and_recovers() -> None:
    """A non-zero exit gives an error frame with the program's stderr tail; the next request works."""
    worker = await WorkerClient.start(
        "command", options={"argv": wav_command_argv(8000, streaming=False), "sample_rate": 8000})
    try:
        failed = await worker.synthesize("please FAIL")
        assert failed.final.type == "error"
        assert "exited with 4" in failed.final.header["message"]
        assert "asked to FAIL" in failed.final.header["message"]
        assert (await worker.synthesize("ok")).final.header["samples"] == 2 * 8000 // 50
    finally:
        await worker.close()


async def test_command_rate_mismatch_is_an_error() -> None:
    """A program whose WAV rate differs from the configured sample_rate fails the request."""
    worker = await WorkerClient.start(
        "command", options={"argv": wav_command_argv(16000), "sample_rate": 22050})
    try:
        assert worker.ready is not None and worker.ready.header["sample_rate"] == 22050
        failed = await worker.synthesize("hi")
        assert failed.final.type == "error" and "16000 Hz" in failed.final.header["message"]
    finally:
        await worker.close()
