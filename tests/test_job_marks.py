"""A job's timing marks and captions (/v1/jobs/{id}/marks, /captions), checked against its audio and text."""

from __future__ import annotations

import asyncio
import json
import re
import time
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from idlakd.config import Config
from idlakd.synth.transcode import ffmpeg_executable
from tests.helpers.app import bearer, make_config
from tests.helpers.audio import decoded_seconds

SENTENCES = [f"Sentence {n} of a job, with its words placed in time, then captioned."
             for n in range(1, 46)]
TEXT = " ".join(SENTENCES)  # about 3200 characters: four groups
CUE = re.compile(r"(\d+)\n(\d\d):(\d\d):(\d\d)\.(\d{3}) --> (\d\d):(\d\d):(\d\d)\.(\d{3})\n"
                 r"(.*?)\n(?:\n|$)", re.S)


@pytest.fixture
def config(tmp_path: Path) -> Config:
    """Jobs of up to 40000 characters."""
    return make_config(tmp_path, job_max_text_length="40000")


async def submit(client: TestClient[Any, Any], token: str, **fields: Any) -> str:
    """POST /v1/jobs; the new job's id."""
    resp = await client.post("/v1/jobs", json={"voice_id": "alba", "text": TEXT, **fields},
                             headers=bearer(token))
    assert resp.status == 202, await resp.text()
    return str((await resp.json())["id"])


async def wait_done(client: TestClient[Any, Any], token: str, job_id: str) -> dict[str, Any]:
    """Poll the job until it has ended; it must be done."""
    deadline = time.monotonic() + 90
    while True:
        job: dict[str, Any] = await (await client.get(f"/v1/jobs/{job_id}",
                                                      headers=bearer(token))).json()
        if job["status"] not in ("queued", "running"):
            assert job["status"] == "done", job
            return job
        assert time.monotonic() < deadline, job
        await asyncio.sleep(0.1)


def ms(parts: tuple[str, ...]) -> int:
    """Milliseconds of hh, mm, ss, ttt."""
    hours, minutes, seconds, millis = map(int, parts)
    return ((hours * 60 + minutes) * 60 + seconds) * 1000 + millis


async def test_marks_and_captions_fit_the_audio_and_the_text(
        client: TestClient[Any, Any], user_token: str, config: Config) -> None:
    # A faster speed: the marks must follow the audio as it is served, not as it was made.
    job_id = await submit(client, user_token, speed=1.25)
    job = await wait_done(client, user_token, job_id)
    audio = await (await client.get(f"/v1/jobs/{job_id}/audio", headers=bearer(user_token))).read()
    duration_ms = 1000 * await decoded_seconds(ffmpeg_executable(config), audio)
    assert abs(duration_ms - 1000 * job["progress"]["audio_seconds"]) < 50

    resp = await client.get(f"/v1/jobs/{job_id}/marks", headers=bearer(user_token))
    assert resp.status == 200 and resp.content_type == "application/x-ndjson"
    marks = [json.loads(line) for line in (await resp.text()).splitlines()]
    times = [m["time"] for m in marks]
    assert times == sorted(times) and 0 <= times[0] and times[-1] < duration_ms
    for mark in marks:
        assert set(mark) == {"time", "type", "start", "end", "value"}
        assert TEXT[mark["start"]:mark["end"]] == mark["value"], mark
    sentences = [m for m in marks if m["type"] == "sentence"]
    # Every sentence once, in order, across the groups; each later in the audio than the last.
    assert [m["value"] for m in sentences] == SENTENCES
    starts = [m["time"] for m in sentences]
    assert all(a < b for a, b in zip(starts, starts[1:]))
    # The last sentence starts near the end: times were moved by the groups before it.
    assert starts[-1] > duration_ms * (1 - 2 / len(SENTENCES))
    words = [m for m in marks if m["type"] == "word"]
    # The words eSpeak reports (it folds "a" into the next), in order, each once.
    said = [m["value"] for m in words]
    written = iter(TEXT.split())
    assert all(word in written for word in said) and len(said) > 0.9 * len(TEXT.split())

    resp = await client.get(f"/v1/jobs/{job_id}/captions", headers=bearer(user_token))
    assert resp.status == 200 and resp.content_type == "text/vtt" and resp.charset == "utf-8"
    vtt = await resp.text()
    assert vtt.startswith("WEBVTT\n\n")
    cues = CUE.findall(vtt)
    assert len(cues) >= len(SENTENCES)
    assert [int(cue[0]) for cue in cues] == list(range(1, len(cues) + 1))
    spans = [(ms(cue[1:5]), ms(cue[5:9])) for cue in cues]
    for (start, end), following in zip(spans, spans[1:] + [(duration_ms, 0)]):
        assert start < end <= following[0] + 1
    assert abs(spans[-1][1] - duration_ms) < 50
    assert " ".join(cue[9].replace("\n", " ") for cue in cues) == " ".join(said)
    # A cue never runs across two sentences.
    assert sum(cue[9].startswith("Sentence ") for cue in cues) == len(SENTENCES)


async def test_marks_wait_for_the_job_and_are_the_owners(
        client: TestClient[Any, Any], user_token: str, admin_token: str) -> None:
    running = await submit(client, user_token, text=TEXT * 3)
    for path in ("marks", "captions"):
        resp = await client.get(f"/v1/jobs/{running}/{path}", headers=bearer(user_token))
        assert resp.status == 409
        body = await resp.json()
        assert set(body) == {"error"}
        assert "its marks are ready only when it is done" in body["error"]["message"]
    theirs = await submit(client, admin_token, text=SENTENCES[0])
    await wait_done(client, admin_token, theirs)
    for path in ("marks", "captions"):
        resp = await client.get(f"/v1/jobs/{theirs}/{path}", headers=bearer(user_token))
        assert resp.status == 404
        assert "Job could not be found" in (await resp.json())["error"]["message"]
        assert (await client.get(f"/v1/jobs/{theirs}/{path}")).status == 401
