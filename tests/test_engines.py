"""Engines in-process: missing_files, eSpeak voice lookup, WAV stream parsing, float-to-PCM clipping."""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
from array import array
from pathlib import Path
from typing import Any, Generator, cast

import pytest
from tests.helpers.synth import REPO, STANDIN_ROOT, make_standin_voice, wav_command_argv, worker_env

from idlakd.worker.engines import EngineError, load_engine, missing_files
from idlakd.worker.engines.command import CommandError, read_wav_stream
from idlakd.worker.engines.espeak import data_path, resolve_voice
from idlakd.worker.engines.tangle import to_pcm

# ---------------------------------------------------------------- missing_files


@pytest.mark.parametrize("options", [
    {}, {"voice": "en-gb"}, {"voice": "en-us"}, {"voice": "fr-fr"}, {"voice": "de"},
    {"voice": "es"}, {"voice": "ro"}, {"voice": "ru"}, {"voice": "en-gb", "variant": "f3"},
    {"voice": "en-GB-x-rp", "variant": "m1", "rate": 160, "pitch": 40},
    {"voice": "English (America)"},
])
def test_missing_files_espeak_ok(options: dict[str, Any]) -> None:
    """Voices and variants the bundled eSpeak NG data has are accepted."""
    assert missing_files("espeak", "", options, None) is None


@pytest.mark.parametrize(("options", "needle"), [
    ({"voice": "xx-nowhere"}, "no voice 'xx-nowhere'"),
    ({"voice": 5}, "no voice 5"),
    ({"voice": "en", "variant": "f99"}, "no variant 'f99'"),
    ({"voice": "en", "rate": 5}, "'rate'"),
    ({"voice": "en", "pitch": "high"}, "'pitch'"),
])
def test_missing_files_espeak_bad(options: dict[str, Any], needle: str) -> None:
    """Unknown voices, variants and out-of-range settings are named in the reason."""
    reason = missing_files("espeak", "", options, None)
    assert reason is not None and needle in reason


def test_missing_files_generic_and_tangle(tmp_path: Path) -> None:
    """Unknown engine, missing directory, missing voice.conf, bad idlak_root; a good stand-in voice."""
    assert "unknown engine" in (missing_files("festival", "", {}, None) or "")
    assert "does not exist" in (missing_files("tangle", str(tmp_path / "nope"), {}, STANDIN_ROOT) or "")
    assert "needs a voice directory" in (missing_files("tangle", "", {}, STANDIN_ROOT) or "")
    (tmp_path / "empty").mkdir()
    assert "no voice.conf" in (missing_files("tangle", str(tmp_path / "empty"), {}, STANDIN_ROOT) or "")
    voice = str(make_standin_voice(tmp_path / "v"))
    assert "no pyIdlak" in (missing_files("tangle", voice, {}, tmp_path) or "")
    assert missing_files("tangle", voice, {}, STANDIN_ROOT) is None
    # A real checkout layout (<root>/src/pyIdlak) is accepted too.
    (tmp_path / "idlak" / "src" / "pyIdlak").mkdir(parents=True)
    assert missing_files("tangle", voice, {}, tmp_path / "idlak") is None


def test_missing_files_command(tmp_path: Path) -> None:
    """argv must be a list of strings naming a program that exists and runs."""
    assert "non-empty list" in (missing_files("command", "", {}, None) or "")
    assert "non-empty list" in (missing_files("command", "", {"argv": "say hi"}, None) or "")
    assert "not found on PATH" in (missing_files("command", "", {"argv": ["no-such-tts-xyz"]}, None) or "")
    script = tmp_path / "tts.sh"
    script.write_text("#!/bin/sh\n")
    reason = missing_files("command", str(tmp_path), {"argv": ["./tts.sh"]}, None)
    assert reason is not None and "not executable" in reason
    script.chmod(0o755)
    assert missing_files("command", str(tmp_path), {"argv": ["./tts.sh"]}, None) is None
    assert missing_files("command", "", {"argv": wav_command_argv()}, None) is None


def test_missing_files_loads_no_engine(tmp_path: Path) -> None:
    """In a fresh interpreter, missing_files neither imports pyIdlak nor loads libespeak-ng."""
    voice = str(make_standin_voice(tmp_path / "v"))
    script = (
        "import sys, json\n"
        "from pathlib import Path\n"
        "from idlakd.worker.engines import missing_files\n"
        f"print(missing_files('espeak', '', {{'voice': 'en-gb', 'variant': 'f3'}}, None))\n"
        f"print(missing_files('tangle', {voice!r}, {{}}, Path({str(STANDIN_ROOT)!r})))\n"
        "maps = open('/proc/self/maps').read()\n"
        "print(json.dumps(['pyIdlak' in sys.modules, 'libespeak-ng' in maps]))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            env=worker_env(), cwd=str(REPO), timeout=20, check=True)
    lines = result.stdout.splitlines()
    assert lines[:2] == ["None", "None"]
    assert json.loads(lines[2]) == [False, False]


# ---------------------------------------------------------------- eSpeak


def test_resolve_voice_prefers_best_language_match() -> None:
    """Language codes map to the voice file eSpeak ranks best; names and file names work too."""
    data = data_path()
    assert resolve_voice("en-gb", data) == "gmw/en"
    assert resolve_voice("en-us", data) == "gmw/en-US"
    assert resolve_voice("EN-US", data) == "gmw/en-US"
    assert resolve_voice("fr-fr", data) == "roa/fr"
    assert resolve_voice("Russian", data) == "zle/ru"
    assert resolve_voice("zz-nowhere", data) is None


def test_espeak_engine_in_process_streams_and_aborts() -> None:
    """Buffers arrive while eSpeak runs; closing the generator early aborts cleanly."""
    engine = load_engine("espeak", "", {"voice": "de"}, None)
    try:
        assert engine.sample_rate == 22050
        chunks = list(engine.synthesize("Guten Tag. " * 10))
        assert len(chunks) > 5 and all(len(c) % 2 == 0 for c in chunks)
        partial = cast(Generator[bytes, None, None], engine.synthesize("Eins zwei drei. " * 50))
        next(partial)
        partial.close()
        again = b"".join(engine.synthesize("Hallo"))
        assert max(array("h", again)) > 1000
    finally:
        engine.close()


def test_espeak_reset_undoes_prosody_and_an_aborted_text() -> None:
    """After set_prosody or a text stopped half-way, reset() gives the voice's own pace back."""
    engine = load_engine("espeak", "", {"voice": "en"}, None)

    def length() -> int:
        # eSpeak adds a little randomness to every text: compare durations, not bytes.
        return len(b"".join(engine.synthesize("Good morning, how are you today?")))

    try:
        plain = length()
        engine.reset()
        assert abs(length() - plain) < plain * 0.05
        engine.set_prosody(2.0, 0.0, 0.0)
        assert length() < plain * 0.75
        engine.reset()
        assert abs(length() - plain) < plain * 0.05
        engine.set_prosody(2.0, 0.0, 0.0)
        partial = cast(Generator[bytes, None, None], engine.synthesize("One two three. " * 50))
        next(partial)
        partial.close()
        engine.reset()
        assert abs(length() - plain) < plain * 0.05
    finally:
        engine.close()


def test_load_engine_errors(tmp_path: Path) -> None:
    """Unknown engines and unusable options raise EngineError."""
    with pytest.raises(EngineError):
        load_engine("festival", "", {}, None)
    with pytest.raises(EngineError):
        load_engine("command", "", {"argv": []}, None)
    with pytest.raises(EngineError):
        load_engine("tangle", str(tmp_path), {"sample_scale": "loud"}, STANDIN_ROOT)
    with pytest.raises(EngineError):
        load_engine("tangle", str(tmp_path), {}, tmp_path)  # no pyIdlak there


# ---------------------------------------------------------------- tangle arithmetic


def test_to_pcm_clips_rounds_and_chunks() -> None:
    """int16-scale floats are rounded and clipped; unit-scale floats are scaled; NaN is silence."""
    pcm = b"".join(to_pcm([0.4, 0.6, -1.6, 40000.0, -40000.0, float("nan"), float("inf")], 1.0))
    assert list(array("h", pcm)) == [0, 1, -2, 32767, -32768, 0, 32767]
    unit = b"".join(to_pcm(array("d", [0.5, -1.0, 1.5]), 32767.0))
    assert list(array("h", unit)) == [16384, -32767, 32767]
    chunks = list(to_pcm([0.0] * 70000, 1.0))
    assert [len(c) for c in chunks] == [65536, 65536, 8928]


def test_tangle_engine_in_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """srate comes from the voice; plain text is XML-escaped before Idlak sees it."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.delitem(sys.modules, "pyIdlak", raising=False)
    voice = make_standin_voice(tmp_path / "v", srate=None)  # real TangleVoice then lacks srate
    engine = load_engine("tangle", str(voice), {}, STANDIN_ROOT)
    try:
        assert engine.sample_rate == 48000
        pcm = b"".join(engine.synthesize("a&b"))
        # escape() turned "a&b" into one word "a&amp;b" of 5 letters.
        assert len(pcm) // 2 == int(48000 * 0.03 * 5) + int(48000 * 0.02)
    finally:
        sys.modules.pop("pyIdlak", None)


# ---------------------------------------------------------------- WAV parsing


def _wav(pcm: bytes, *, rate: int = 8000, channels: int = 1, bits: int = 16, tag: int = 1,
         data_size: int | None = None, extra_chunk: bytes = b"", extensible: bool = False) -> bytes:
    """Build a WAV file in memory."""
    if extensible:
        sub = struct.pack("<H", 1) + b"\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71"
        fmt = struct.pack("<HHIIHH", 0xFFFE, channels, rate, rate * channels * bits // 8,
                          channels * bits // 8, bits) + struct.pack("<HHI", 22, bits, 4) + sub
    else:
        fmt = struct.pack("<HHIIHH", tag, channels, rate, rate * channels * bits // 8,
                          channels * bits // 8, bits)
    size = len(pcm) if data_size is None else data_size
    body = (b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + extra_chunk
            + b"data" + struct.pack("<I", size) + pcm)
    return b"RIFF" + struct.pack("<I", len(body)) + body


def _read(data: bytes) -> tuple[int, bytes]:
    """Parse a WAV from bytes: (rate, mono PCM)."""
    rate, chunks = read_wav_stream(io.BufferedReader(io.BytesIO(data)))
    return rate, b"".join(chunks)


def test_wav_stream_variants() -> None:
    """Exact sizes, streaming sizes, odd extra chunks and WAVE_FORMAT_EXTENSIBLE all parse."""
    pcm = array("h", range(-500, 500, 3)).tobytes()
    assert _read(_wav(pcm)) == (8000, pcm)
    assert _read(_wav(pcm, rate=22050, data_size=0xFFFFFFFF)) == (22050, pcm)
    assert _read(_wav(pcm, extra_chunk=b"LIST" + struct.pack("<I", 3) + b"abc\x00")) == (8000, pcm)
    assert _read(_wav(pcm, extensible=True)) == (8000, pcm)
    # Announced more than written: stop at EOF; trailing bytes past the size are ignored.
    assert _read(_wav(pcm, data_size=len(pcm) + 1000)) == (8000, pcm)
    assert _read(_wav(pcm + b"junk", data_size=len(pcm))) == (8000, pcm)


def test_wav_stream_downmix() -> None:
    """Interleaved stereo is averaged to mono."""
    stereo = array("h", [100, 300, -100, -300, 32767, 32767]).tobytes()
    rate, mono = _read(_wav(stereo, channels=2))
    assert list(array("h", mono)) == [200, -200, 32767]


@pytest.mark.parametrize(("data", "needle"), [
    (b"", "no output"),
    (b"OggS" + b"\x00" * 40, "not a RIFF/WAVE"),
    (_wav(b"\x00" * 8, bits=8), "16-bit PCM"),
    (_wav(b"\x00" * 8, tag=3, bits=32), "16-bit PCM"),
    (b"RIFF\x00\x00\x00\x00WAVEdata\x04\x00\x00\x00abcd", "before any fmt"),
    (b"RIFF\x00\x00\x00\x00WAVEfmt ", "ended before its data"),
])
def test_wav_stream_rejects(data: bytes, needle: str) -> None:
    """Non-WAV, non-16-bit and truncated headers raise CommandError."""
    with pytest.raises(CommandError, match=needle):
        _read(data)


def test_command_engine_in_process_kills_on_early_close() -> None:
    """Closing the generator early kills the program instead of leaving it running."""
    engine = load_engine("command", "", {"argv": wav_command_argv(8000), "sample_rate": 8000}, None)
    chunks = cast(Generator[bytes, None, None], engine.synthesize("x" * 2000))
    first = next(chunks)
    assert first
    chunks.close()
    assert not [p for p in os.listdir("/proc") if p.isdigit() and _is_child(int(p))]


def _is_child(pid: int) -> bool:
    """Whether pid is a live (non-zombie) child of this process."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return False
    return int(fields[1]) == os.getpid() and fields[0] != "Z"
